module github.com/pbn-project/pbn

go 1.26.8

require (
	filippo.io/nistec v0.0.4
	golang.org/x/crypto v0.59.0
	golang.org/x/term v0.48.0
)

require (
	github.com/go-asn1-ber/asn1-ber v1.5.8
	github.com/go-ldap/ldap/v3 v3.4.15
	golang.org/x/sys v0.50.0
)

require (
	github.com/Azure/go-ntlmssp v0.1.1 // indirect
	github.com/google/go-tpm v0.9.8
	github.com/google/uuid v1.6.0 // indirect
)
