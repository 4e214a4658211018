module github.com/pbn-project/pbn

go 1.26.8

require filippo.io/nistec v0.0.4

require golang.org/x/sys v0.36.0 // indirect
