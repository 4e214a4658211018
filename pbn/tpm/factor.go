package tpm

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// secretSize is the size of the secret a Factor seals, and authValueSize
// that of the authValue it derives.
const secretSize, authValueSize = 32, 32

// authValueInfo separates the authValue derivation from every other use of
// the password.
const authValueInfo = "PBN TPM factor authValue, version 1"

// Factor is a key file factor (keyfile.FactorTPM) whose secret is a random
// value sealed by this TPM to a PCR selection and an authValue derived from
// the user's password. A key file's protector combines it with the Argon2id
// password factor, so the data key needs both what the TPM releases and what
// the password derives: neither the TPM alone (without the password) nor
// the password alone (without this TPM in this boot state) opens it.
//
// Recover returns the errors of TPM.Unseal (ErrSRKMismatch, ErrPCRMismatch,
// *WrongPasswordError, *LockoutError) and an error for parameters that do
// not parse.
type Factor struct {
	tpm      *TPM
	pcrs     PCRSelection
	password secret.Bytes
}

// NewFactor returns the TPM factor for t, sealing to the PCRs pcrs (nil
// means DefaultPCRs) with the user's password. The factor uses password until
// the caller wipes it; Recover uses the PCR selection recorded at Enroll.
func NewFactor(t *TPM, pcrs PCRSelection, password secret.Bytes) *Factor {
	if pcrs == nil {
		pcrs = DefaultPCRs
	}
	return &Factor{tpm: t, pcrs: pcrs, password: password}
}

// Type returns keyfile.FactorTPM.
func (*Factor) Type() keyfile.FactorType { return keyfile.FactorTPM }

// Enroll seals a fresh random secret and returns it with the parameters
// that Recover unseals it from.
func (f *Factor) Enroll(ctx context.Context, _ *keyfile.Header) ([]byte, secret.Bytes, error) {
	var p params
	copy(p.salt[:], secret.Random(saltSize))
	auth, err := f.authValue(p.salt[:])
	if err != nil {
		return nil, nil, err
	}
	defer auth.Wipe()
	data := secret.Random(secretSize)
	s, err := f.tpm.Seal(ctx, f.pcrs, auth, data)
	if err != nil {
		data.Wipe()
		return nil, nil, err
	}
	p.sealed = *s
	return p.encodeV1(), data, nil
}

// Recover unseals the secret that Enroll sealed into b.
func (f *Factor) Recover(ctx context.Context, _ *keyfile.Header, b []byte) (secret.Bytes, error) {
	p, err := parseParams(b)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	auth, err := f.authValue(p.salt[:])
	if err != nil {
		return nil, err
	}
	defer auth.Wipe()
	return f.tpm.Unseal(ctx, &p.sealed, auth)
}

// authValue derives the sealed object's authValue from the password with
// HKDF-SHA256 (RFC 5869). A fast derivation suffices: the authValue never
// leaves the TPM's sessions as anything but an HMAC key, the TPM's
// dictionary-attack protection limits guesses, and the key file's Argon2id
// factor stands against offline guessing.
func (f *Factor) authValue(salt []byte) (secret.Bytes, error) {
	k, err := hkdf.Key(sha256.New, f.password, salt, authValueInfo, authValueSize)
	if err != nil {
		return nil, fmt.Errorf("tpm: derive the authValue: %w", err)
	}
	return secret.Bytes(k), nil
}
