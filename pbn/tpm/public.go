package tpm

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// EKPublic returns the public key of the TPM's endorsement key as a DER
// SubjectPublicKeyInfo, the form the key server records at enrolment. The
// EK is the primary key that the TCG's default ECC NIST P-256 template (TCG
// EK Credential Profile 2.0, template L-2; tpm2.ECCEKTemplate) makes in the
// endorsement hierarchy (Part 3, 24.1 TPM2_CreatePrimary), so the same TPM
// always gives the same key; it is flushed again at once. The endorsement
// hierarchy's authorization must be empty, as it is unless set on purpose.
func (t *TPM) EKPublic(ctx context.Context) ([]byte, error) {
	tr := t.with(ctx)
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.ECCEKTemplate),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: make the EK: %w", err)
	}
	spki, err := spkiOf(rsp.OutPublic)
	if err := errors.Join(err, flush(tr, rsp.ObjectHandle)); err != nil {
		return nil, fmt.Errorf("tpm: the EK: %w", err)
	}
	return spki, nil
}

// SRKPublic returns the public key of the TPM's SRK as a DER
// SubjectPublicKeyInfo, the form the key server records at enrolment. It is
// the key SRKName names.
func (t *TPM) SRKPublic(ctx context.Context) ([]byte, error) {
	k, err := t.primarySRK(t.with(ctx))
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	spki, err := spkiOf(tpm2.New2B(k.public))
	if err != nil {
		return nil, fmt.Errorf("tpm: the SRK: %w", err)
	}
	return spki, nil
}

// spkiOf encodes an ECC public area as a DER SubjectPublicKeyInfo.
func spkiOf(b tpm2.TPM2BPublic) ([]byte, error) {
	p, err := b.Contents()
	if err != nil {
		return nil, err
	}
	pub, err := tpm2.Pub(*p)
	if err != nil {
		return nil, err
	}
	return x509.MarshalPKIXPublicKey(pub)
}
