module github.com/pbn-project/pbn

go 1.26.8
