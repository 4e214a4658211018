package keyfile

import (
	"context"
	"fmt"

	"github.com/pbn-project/pbn/pbn/secret"
)

// FactorType names a kind of factor. The values are part of the key file
// format and never change meaning.
type FactorType uint8

// The factor types of format version 1.
const (
	// FactorPassword derives its secret from a password with Argon2id.
	FactorPassword FactorType = 1
	// FactorRecovery derives its secret from a 48-digit recovery key.
	FactorRecovery FactorType = 2
	// FactorTPM has a TPM unseal its secret (package pbn/tpm).
	FactorTPM FactorType = 3
	// FactorNetwork recovers its secret with the help of a key server, in
	// the McCallum-Relyea exchange of Tang (package pbn/tang).
	FactorNetwork FactorType = 4
)

func (t FactorType) String() string {
	switch t {
	case FactorPassword:
		return "password"
	case FactorRecovery:
		return "recovery key"
	case FactorTPM:
		return "TPM"
	case FactorNetwork:
		return "network"
	}
	return fmt.Sprintf("factor type %d", uint8(t))
}

func (t FactorType) known() bool {
	return t >= FactorPassword && t <= FactorNetwork
}

// A Factor is one thing that a protector needs to open its key file:
// something the user knows, a TPM, a key server. A protector holds one or
// more factors; the key that wraps the data key is derived from all of their
// secrets together, so a protector with a TPM factor and a password factor
// opens only with both.
//
// Packages outside keyfile implement Factor for the TPM and the network;
// keyfile implements the password and the recovery key ([Password],
// [Recovery]). A Factor value carries what it needs to work (a password, an
// open TPM, a server's address); the key file carries only public
// parameters.
type Factor interface {
	// Type returns the factor's type, as stored in the key file.
	Type() FactorType

	// Enroll makes a new secret for a protector of the key file whose header
	// is h, and returns it with the public parameters from which Recover
	// makes it again. The parameters are stored in the key file in the
	// clear: they must not reveal the secret.
	Enroll(ctx context.Context, h *Header) (params []byte, s secret.Bytes, err error)

	// Recover makes again the secret that Enroll returned with params. A
	// factor that can tell a wrong credential (a TPM can) says so with a
	// typed error; one that cannot (a password) returns a secret that simply
	// fails to open the protector, and Open reports ErrWrongPassword.
	Recover(ctx context.Context, h *Header, params []byte) (secret.Bytes, error)
}
