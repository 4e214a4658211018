package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// deviceKeyLabel makes the device key's template PBN's own: the TPM derives
// a primary key from the hierarchy's seed and the template (Part 1, "Primary Objects"),
// so another label, or another program's template, gives another key.
const deviceKeyLabel = "PBN device key, version 1"

// deviceKeyTemplate is the public area of the device key: an unrestricted
// ECC NIST P-256 signing key with no authValue, bound to this TPM.
func deviceKeyTemplate() tpm2.TPMTPublic {
	x := sha256.Sum256([]byte(deviceKeyLabel))
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true, // its authValue is empty: nothing to guess
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull}, // chosen per signature
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x[:]},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// A deviceKey is the device key, kept out of the TPM between signatures
// as a saved context (Part 3, 28.2 TPM2_ContextSave): a loaded key would
// take one of the few transient object slots that swtpm and a TPM without
// a resource manager (/dev/tpm0) have, and the unseal of a key file needs
// all of them. The saved context is valid until the TPM resets.
type deviceKey struct {
	t     *TPM
	saved tpm2.TPMSContext
	name  tpm2.TPM2BName
	pub   *ecdsa.PublicKey
}

// DeviceKey returns the device's signing key: an ECC NIST P-256 key that the
// TPM makes again, identical, from its owner seed and a fixed PBN template at
// every call (Part 3, 24.1 TPM2_CreatePrimary), so that nothing is stored in
// the TPM's NV memory. Its private part never leaves the TPM; it changes only
// when the TPM is cleared. The key signs with ECDSA (the digest of SHA-256
// or SHA-384, ASN.1 DER signatures as crypto/ecdsa makes them) until t is
// closed; the key server authenticates the device by it. The key is loaded
// only while it signs.
func (t *TPM) DeviceKey(ctx context.Context) (crypto.Signer, error) {
	if t.device != nil {
		return t.device, nil
	}
	tr := t.with(ctx)
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(deviceKeyTemplate()),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: make the device key: %w", err)
	}
	pub, err := devicePublic(rsp.OutPublic)
	var saved *tpm2.ContextSaveResponse
	if err == nil {
		saved, err = tpm2.ContextSave{SaveHandle: rsp.ObjectHandle}.Execute(tr)
	}
	if err := errors.Join(err, flush(tr, rsp.ObjectHandle)); err != nil {
		return nil, fmt.Errorf("tpm: make the device key: %w", err)
	}
	t.device = &deviceKey{t: t, saved: saved.Context, name: rsp.Name, pub: pub}
	return t.device, nil
}

func devicePublic(b tpm2.TPM2BPublic) (*ecdsa.PublicKey, error) {
	p, err := b.Contents()
	if err != nil {
		return nil, err
	}
	params, err := p.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	point, err := p.Unique.ECC()
	if err != nil {
		return nil, err
	}
	if params.CurveID != tpm2.TPMECCNistP256 {
		return nil, errors.New("the TPM made a key on another curve")
	}
	return tpm2.ECDSAPub(params, point)
}

// Public returns the device key's public key, an *ecdsa.PublicKey.
func (k *deviceKey) Public() crypto.PublicKey { return k.pub }

// Sign signs digest with TPM2_Sign (Part 3, 20.2) and ECDSA, with the hash
// that opts names (SHA-256 or SHA-384). rand is not used: the TPM draws its
// own nonce.
func (k *deviceKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, ok := map[crypto.Hash]tpm2.TPMIAlgHash{
		crypto.SHA256: tpm2.TPMAlgSHA256,
		crypto.SHA384: tpm2.TPMAlgSHA384,
	}[opts.HashFunc()]
	if !ok {
		return nil, fmt.Errorf("tpm: device key: cannot sign with hash %v (want SHA-256 or SHA-384)",
			opts.HashFunc())
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("tpm: device key: a %d-byte digest for %v", len(digest), opts.HashFunc())
	}
	// crypto.Signer has no context; the three commands are short, each
	// bounded on sockets by the command timeout.
	tr := k.t.with(context.Background())
	loaded, err := tpm2.ContextLoad{Context: k.saved}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: device key: load: %w", err)
	}
	h := loaded.LoadedHandle
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.NamedHandle{Handle: h, Name: k.name},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(tr)
	err = errors.Join(err, flush(tr, h))
	if err != nil {
		return nil, fmt.Errorf("tpm: device key: sign: %w", err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpm: device key: sign: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}
