module github.com/pbn-project/pbn

go 1.26.8

require github.com/google/go-tpm v0.9.8

require golang.org/x/sys v0.8.0 // indirect
