package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/pbn/secret"
)

// MaxSealedSize is the most bytes TPM.Seal seals: a TPM2B_SENSITIVE_DATA
// holds at most 128 bytes (Part 2, 11.1.14, MAX_SYM_DATA).
const MaxSealedSize = 128

// objectAuth returns the authValue the sealed object gets for the caller's
// authValue: the hex encoding of the first 16 bytes of its SHA-256 digest.
// The object's authValue has 128 bits of strength, fits a SHA-256 object
// (Part 1: no longer than the nameAlg's digest) and has no zero
// byte.
//
// TODO: drop the hex encoding once go-tpm's hmacKeyFromAuthValue (v0.9.8,
// tpm2/sessions.go) trims only trailing zeros: it cuts an authValue at its
// last zero byte wherever it is, so an authValue with a zero byte inside
// makes an HMAC the TPM refuses, and every unseal counts as a wrong password.
// Changing the encoding then needs a new parameter version.
func objectAuth(authValue secret.Bytes) secret.Bytes {
	d := sha256.Sum256(authValue)
	defer clear(d[:])
	a := make(secret.Bytes, hex.EncodedLen(sha256.Size/2))
	hex.Encode(a, d[:sha256.Size/2])
	return a
}

// aesBits is the key size of the sessions' parameter encryption.
const aesBits = 128

// nonceSize is the size of the caller's session nonces: the digest size of
// SHA-256, the sessions' hash.
const nonceSize = 32

// Sealed is a secret sealed by TPM.Seal. It holds nothing secret: the
// private blob is encrypted under the SRK and opens only in the TPM that
// made it.
type Sealed struct {
	// SRKName is the name of the SRK the object was created under.
	SRKName []byte
	// PCRs are the PCRs of the SHA-256 bank the secret is sealed to.
	PCRs PCRSelection
	// PCRDigest is SHA-256 over the values the PCRs held at sealing.
	PCRDigest []byte
	// Public is the sealed object's public area (a TPMT_PUBLIC).
	Public []byte
	// Private is the sealed object's private area, encrypted by the TPM
	// (the contents of a TPM2B_PRIVATE).
	Private []byte
}

// Seal seals data (at most MaxSealedSize bytes) to this TPM, the current
// values of the PCRs in sel and authValue. It refuses an empty selection or
// one the TPM has no SHA-256 bank for with an error wrapping
// ErrNoPCRBinding.
//
// Seal makes the SRK from its template, and makes it persistent at the
// standard handle (0x81000001) when that handle is free and the owner
// hierarchy has no authorization, so that later unseals read it instead of
// making it again.
func (t *TPM) Seal(ctx context.Context, sel PCRSelection, authValue, data secret.Bytes) (*Sealed, error) {
	sel = sel.normal()
	if err := sel.check(); err != nil {
		return nil, fmt.Errorf("tpm: seal: %w", err)
	}
	if len(data) == 0 || len(data) > MaxSealedSize {
		return nil, fmt.Errorf("tpm: seal: %d bytes to seal, want 1 to %d", len(data), MaxSealedSize)
	}
	tr := t.with(ctx)
	auth := objectAuth(authValue)
	defer auth.Wipe()

	vals, err := readPCRs(tr, sel)
	if err != nil {
		return nil, fmt.Errorf("tpm: seal: read PCRs: %w", err)
	}
	digest := pcrDigest(vals)
	k, err := t.primarySRK(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: seal: %w", err)
	}
	t.persistSRK(tr, k)

	template, err := sealedTemplate(sel, digest)
	if err != nil {
		return nil, fmt.Errorf("tpm: seal: %w", err)
	}
	// Part 3, 12.1: the sensitive area (authValue and data) is the
	// command's first parameter and goes encrypted by the salted session.
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{
			Handle: k.handle,
			Name:   k.name,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, nonceSize,
				k.salted(tpm2.AESEncryption(aesBits, tpm2.EncryptIn))...),
		},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: auth},
			Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
		}},
		InPublic: tpm2.New2B(template),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: seal: create the sealed object: %w", err)
	}
	pub := rsp.OutPublic.Bytes()
	if err := isSealedObject(pub, template); err != nil {
		return nil, fmt.Errorf("tpm: seal: the TPM returned another object than the one asked for: %w", err)
	}
	t.log.Debug("sealed", "pcrs", sel.String())
	return &Sealed{
		SRKName:   bytes.Clone(k.name.Buffer),
		PCRs:      sel,
		PCRDigest: digest,
		Public:    pub,
		Private:   rsp.OutPrivate.Buffer,
	}, nil
}

// sealedTemplate is the public area of a sealed data object (Part 2, 12.2.4:
// a keyed-hash object without a scheme) that only the
// policy PolicyPCR(sel, digest) then PolicyAuthValue authorizes.
func sealedTemplate(sel PCRSelection, digest []byte) (tpm2.TPMTPublic, error) {
	policy, err := sealPolicy(sel, digest)
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:        true,
			FixedParent:     true,
			UserWithAuth:    false, // the policy is the only way in
			AdminWithPolicy: true,
			NoDA:            false, // dictionary-attack protection stays on
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{}),
	}, nil
}

// isSealedObject checks that pub, an encoded TPMT_PUBLIC, is the object
// template asks for, byte for byte, but for the unique field that the TPM
// fills in.
func isSealedObject(pub []byte, template tpm2.TPMTPublic) error {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub)
	if err != nil {
		return err
	}
	if p.Type != tpm2.TPMAlgKeyedHash {
		return errors.New("not a keyed-hash object")
	}
	u, err := p.Unique.KeyedHash()
	if err != nil {
		return err
	}
	template.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, u)
	if !bytes.Equal(tpm2.Marshal(&template), pub) {
		return errors.New("another public area")
	}
	return nil
}

// sealPolicy computes the policy digest of PolicyPCR then PolicyAuthValue
// (Part 3, 23.7 and 23.17), as the TPM computes it in a policy session.
func sealPolicy(sel PCRSelection, digest []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	steps := []tpm2.PolicyCommand{
		tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: digest}, Pcrs: sel.tpml()},
		tpm2.PolicyAuthValue{},
	}
	for _, s := range steps {
		if err := s.Update(calc); err != nil {
			return nil, fmt.Errorf("compute the policy: %w", err)
		}
	}
	return calc.Hash().Digest, nil
}

// Unseal returns the secret that Seal sealed in s, given the same authValue.
// It returns ErrSRKMismatch when the TPM's SRK is not the one s was sealed
// under, ErrPCRMismatch when the PCRs changed, *WrongPasswordError when the
// TPM refuses authValue and *LockoutError when the TPM is locked after too
// many wrong ones.
//
// With the SRK persistent, an unseal takes seven commands: ReadPublic,
// Load, StartAuthSession, PolicyPCR, PolicyAuthValue, Unseal (whose
// session, salted with the SRK, both authorizes and encrypts the secret on
// its way out) and FlushContext; without it, CreatePrimary and a
// FlushContext at Close come on top. The first authorization of an object
// under dictionary-attack protection after the TPM starts may be answered
// with TPM_RC_RETRY while the TPM records in NV that it is in use; the
// command is then sent again.
func (t *TPM) Unseal(ctx context.Context, s *Sealed, authValue secret.Bytes) (secret.Bytes, error) {
	tr := t.with(ctx)
	auth := objectAuth(authValue)
	defer auth.Wipe()
	k, err := t.srkNamed(tr, s.SRKName)
	if err != nil {
		return nil, fmt.Errorf("tpm: unseal: %w", err)
	}
	obj, err := load(tr, k, s)
	if err != nil {
		return nil, fmt.Errorf("tpm: unseal: %w", err)
	}
	defer func() {
		if err := flush(tr, obj.Handle); err != nil {
			t.log.Warn("could not unload the sealed object", "err", err)
		}
	}()

	var policyErr error
	policy := func(tr transport.TPM, h tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		policyErr = runPolicy(tr, h, s)
		if policyErr != nil {
			return errors.Join(policyErr, flush(tr, h))
		}
		return nil
	}
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{
		Handle: obj.Handle,
		Name:   obj.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, nonceSize, policy,
			k.salted(tpm2.AESEncryption(aesBits, tpm2.EncryptOut), tpm2.Auth(auth))...),
	}}.Execute(tr)
	if err != nil {
		if policyErr != nil {
			err = policyErr
		}
		return nil, fmt.Errorf("tpm: unseal: %w", unsealError(tr, err))
	}
	t.log.Debug("unsealed", "pcrs", s.PCRs.String())
	return secret.Bytes(rsp.OutData.Buffer), nil
}

// load loads the sealed object under k (Part 3, 12.2 TPM2_Load). It checks
// the name the TPM gives against the public area first: a wrong name would
// make the authorization HMAC fail and count as a wrong password.
func load(tr transport.TPM, k *srk, s *Sealed) (tpm2.NamedHandle, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.Public)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("decode the sealed object: %w", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("decode the sealed object: %w", err)
	}
	rsp, err := tpm2.Load{
		ParentHandle: k.named(),
		InPrivate:    tpm2.TPM2BPrivate{Buffer: s.Private},
		InPublic:     tpm2.New2B(*pub),
	}.Execute(tr)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("load the sealed object: %w", err)
	}
	if !bytes.Equal(rsp.Name.Buffer, name.Buffer) {
		return tpm2.NamedHandle{}, errors.Join(
			errors.New("load the sealed object: the TPM gave it another name"),
			flush(tr, rsp.ObjectHandle))
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: *name}, nil
}

// runPolicy satisfies the sealed object's policy in the session h. PolicyPCR
// gets the digest recorded at sealing, so that changed PCRs fail there
// (TPM_RC_VALUE, Part 3, 23.7), before any authorization is tried and
// counted against the dictionary-attack protection.
func runPolicy(tr transport.TPM, h tpm2.TPMISHPolicy, s *Sealed) error {
	_, err := tpm2.PolicyPCR{
		PolicySession: h,
		PcrDigest:     tpm2.TPM2BDigest{Buffer: s.PCRDigest},
		Pcrs:          s.PCRs.tpml(),
	}.Execute(tr)
	if errors.Is(err, tpm2.TPMRCValue) {
		return ErrPCRMismatch
	}
	if err != nil {
		return fmt.Errorf("PolicyPCR: %w", err)
	}
	if _, err := (tpm2.PolicyAuthValue{PolicySession: h}).Execute(tr); err != nil {
		return fmt.Errorf("PolicyAuthValue: %w", err)
	}
	return nil
}

// TODO: the TPM's error responses are not authenticated: go-tpm checks the
// session HMAC of successful responses only. An active interposer can fake
// a refusal (a lockout, a PCR mismatch) and so deny a boot, never make the
// TPM release the secret.

// unsealError maps the TPM's answer to a failed unseal to this package's
// errors.
func unsealError(tr transport.TPM, err error) error {
	switch {
	case errors.Is(err, ErrPCRMismatch), errors.Is(err, tpm2.TPMRCPolicyFail):
		return ErrPCRMismatch
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		return wrongPassword(tr)
	case errors.Is(err, tpm2.TPMRCLockout):
		return lockout(tr)
	}
	return err
}

// Check tells whether s can be unsealed by t in its present state: nil, or
// ErrSRKMismatch when the SRK is another, or ErrPCRMismatch when the PCRs
// hold other values than at sealing. It tries no authorization, so it
// costs no dictionary-attack try.
func (t *TPM) Check(ctx context.Context, s *Sealed) error {
	tr := t.with(ctx)
	if _, err := t.srkNamed(tr, s.SRKName); err != nil {
		return fmt.Errorf("tpm: check: %w", err)
	}
	vals, err := readPCRs(tr, s.PCRs)
	if err != nil {
		return fmt.Errorf("tpm: check: read PCRs: %w", err)
	}
	if !bytes.Equal(pcrDigest(vals), s.PCRDigest) {
		return fmt.Errorf("tpm: check: %w", ErrPCRMismatch)
	}
	return nil
}
