package tpm

import "github.com/google/go-tpm/tpm2"

type deviceKey struct{ handle tpm2.TPMHandle }
