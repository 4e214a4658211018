module github.com/pbn-project/pbn

go 1.26.8

require (
	golang.org/x/crypto v0.59.0
	golang.org/x/term v0.48.0
)

require golang.org/x/sys v0.50.0

require github.com/google/go-tpm v0.9.8
