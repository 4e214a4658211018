package tpm

import (
	"errors"
	"fmt"
)

// The versions of a TPM factor's parameters in a key file. Each version's
// encoding lives in a file of its own and stays readable for good.
const paramsV1 = 1

// params are the public parameters of a TPM factor, as a key file stores
// them.
type params struct {
	sealed Sealed
	// salt makes the authValue of this factor's own from the password.
	salt [saltSize]byte
}

// errParams is wrapped by every error that parseParams returns.
var errParams = errors.New("invalid TPM factor parameters")

// parseParams decodes a factor's parameters strictly: every field checked,
// nothing left over, the sealed object's public area the one Seal makes for
// the recorded PCR binding.
func parseParams(b []byte) (*params, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", errParams)
	}
	switch b[0] {
	case paramsV1:
		return parseParamsV1(b[1:])
	}
	return nil, fmt.Errorf("%w: unknown version %d", errParams, b[0])
}

// ParseParams returns the sealed object that the parameters of a key file's
// TPM factor describe, for an administrator's tools to look at and to
// Check against a TPM.
func ParseParams(b []byte) (*Sealed, error) {
	p, err := parseParams(b)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	return &p.sealed, nil
}
