package tang

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// advProtected is the protected header of every advertisement signature,
// as tangd writes it: ES512 over a JWK set (RFC 7515 section 4.1.10 "cty").
var advProtected = b64.EncodeToString([]byte(`{"alg":"ES512","cty":"jwk-set+json"}`))

// Bounds on what a client accepts in an advertisement, so that a hostile
// server cannot make it do unbounded work.
const (
	maxAdvertisement = 64 << 10
	maxAdvKeys       = 32
	maxAdvSignatures = 8
)

// jwsSignature is one signature of a JWS in the JSON serialization
// (RFC 7515 section 7.2.1). Unprotected headers are not accepted.
type jwsSignature struct {
	Protected string `json:"protected"`
	Signature string `json:"signature"`
}

// jwsFlattened is the flattened JSON serialization (RFC 7515 section
// 7.2.2) that jose writes for a single signature.
type jwsFlattened struct {
	Payload   string `json:"payload"`
	Protected string `json:"protected"`
	Signature string `json:"signature"`
}

// jwsGeneral is the general JSON serialization (RFC 7515 section 7.2.1).
type jwsGeneral struct {
	Payload    string         `json:"payload"`
	Signatures []jwsSignature `json:"signatures"`
}

// jwkSet is a JWK set (RFC 7517 section 5).
type jwkSet struct {
	Keys []json.RawMessage `json:"keys"`
}

// signAdvertisement returns a JWS over payload signed by each key in
// signers, in the flattened serialization for one signer and the general
// one for more, as jose does.
func signAdvertisement(payload []byte, signers []*ecdsa.PrivateKey) ([]byte, error) {
	p := b64.EncodeToString(payload)
	var sigs []jwsSignature
	for _, k := range signers {
		s, err := signES512(k, advProtected+"."+p)
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, jwsSignature{Protected: advProtected, Signature: s})
	}
	if len(sigs) == 1 {
		return json.Marshal(jwsFlattened{Payload: p, Protected: sigs[0].Protected,
			Signature: sigs[0].Signature})
	}
	return json.Marshal(jwsGeneral{Payload: p, Signatures: sigs})
}

// signES512 signs input with ECDSA P-521 and SHA-512 and returns the
// signature as R || S, each 66 bytes (RFC 7518 section 3.4).
func signES512(k *ecdsa.PrivateKey, input string) (string, error) {
	h := sha512.Sum512([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		return "", fmt.Errorf("sign advertisement: %w", err)
	}
	sig := make([]byte, 2*p521.size)
	r.FillBytes(sig[:p521.size])
	s.FillBytes(sig[p521.size:])
	return b64.EncodeToString(sig), nil
}

// verifyES512 reports whether sig is a valid ES512 signature of input.
func verifyES512(pub *ecdsa.PublicKey, input string, sig []byte) bool {
	if len(sig) != 2*p521.size {
		return false
	}
	h := sha512.Sum512([]byte(input))
	r := new(big.Int).SetBytes(sig[:p521.size])
	s := new(big.Int).SetBytes(sig[p521.size:])
	return ecdsa.Verify(pub, h[:], r, s)
}

// A signature is one decoded signature of a JWS, with its protected
// header still encoded (it is part of the signing input).
type signature struct {
	protected string
	sig       []byte
}

// parseJWS parses a JWS in either JSON serialization, strictly, and
// returns its payload (still encoded) and signatures, each with a
// protected header that names ES512.
func parseJWS(b []byte) (string, []signature, error) {
	var g jwsGeneral
	if err := decodeStrict(b, &g); err != nil {
		var f jwsFlattened
		if err := decodeStrict(b, &f); err != nil {
			return "", nil, fmt.Errorf("parse JWS: %w", err)
		}
		g = jwsGeneral{Payload: f.Payload,
			Signatures: []jwsSignature{{Protected: f.Protected, Signature: f.Signature}}}
	}
	if len(g.Signatures) == 0 || len(g.Signatures) > maxAdvSignatures {
		return "", nil, fmt.Errorf("parse JWS: %d signatures, want 1 to %d",
			len(g.Signatures), maxAdvSignatures)
	}
	sigs := make([]signature, 0, len(g.Signatures))
	for _, s := range g.Signatures {
		if err := checkProtected(s.Protected); err != nil {
			return "", nil, err
		}
		sig, err := b64.DecodeString(s.Signature)
		if err != nil {
			return "", nil, errors.New("parse JWS: signature is not base64url")
		}
		sigs = append(sigs, signature{protected: s.Protected, sig: sig})
	}
	return g.Payload, sigs, nil
}

// errNoSignature is wrapped in ErrUntrusted when the pinned key did not
// sign an advertisement.
var errNoSignature = errors.New("no valid signature by the pinned key")

// verifyAdvertisement checks a JWS advertisement and returns its keys:
// every advertised verify key must have signed it (as clevis requires),
// and so must pin, whether or not it is advertised.
func verifyAdvertisement(b []byte, pin *ecdsa.PublicKey) ([]*jwk, error) {
	if len(b) > maxAdvertisement {
		return nil, errors.New("advertisement too large")
	}
	payload, sigs, err := parseJWS(b)
	if err != nil {
		return nil, err
	}
	keys, err := parseKeySet(payload)
	if err != nil {
		return nil, err
	}
	if !signedBy(payload, sigs, pin) {
		return nil, errNoSignature
	}
	for _, k := range keys {
		if k.has(opVerify) && !signedBy(payload, sigs, k.ecdsaPublic()) {
			return nil, fmt.Errorf("advertised signing key %s did not sign", k.kid())
		}
	}
	return keys, nil
}

// signedBy reports whether one of sigs is pub's signature of payload.
func signedBy(payload string, sigs []signature, pub *ecdsa.PublicKey) bool {
	for _, s := range sigs {
		if verifyES512(pub, s.protected+"."+payload, s.sig) {
			return true
		}
	}
	return false
}

// protectedHeader is the only protected header an advertisement may have.
type protectedHeader struct {
	Alg string `json:"alg"`
	Cty string `json:"cty,omitempty"`
}

func checkProtected(s string) error {
	b, err := b64.DecodeString(s)
	if err != nil {
		return errors.New("parse JWS: protected header is not base64url")
	}
	var h protectedHeader
	if err := decodeStrict(b, &h); err != nil {
		return fmt.Errorf("parse JWS: protected header: %w", err)
	}
	if h.Alg != algSign {
		return fmt.Errorf("parse JWS: alg %q, want %s", h.Alg, algSign)
	}
	return nil
}

// parseKeySet parses an advertisement's payload: a JWK set of public keys,
// each a signing key (ES512 on P-521, verify) or an exchange key (ECMR,
// deriveKey).
func parseKeySet(payload string) ([]*jwk, error) {
	b, err := b64.DecodeString(payload)
	if err != nil {
		return nil, errors.New("parse advertisement: payload is not base64url")
	}
	var set jwkSet
	if err := decodeStrict(b, &set); err != nil {
		return nil, fmt.Errorf("parse advertisement: %w", err)
	}
	if len(set.Keys) == 0 || len(set.Keys) > maxAdvKeys {
		return nil, fmt.Errorf("parse advertisement: %d keys, want 1 to %d",
			len(set.Keys), maxAdvKeys)
	}
	keys := make([]*jwk, 0, len(set.Keys))
	for _, raw := range set.Keys {
		k, err := parseJWK(raw)
		if err != nil {
			return nil, fmt.Errorf("parse advertisement: %w", err)
		}
		if k.d != nil {
			k.d.Wipe()
			return nil, errors.New("parse advertisement: a private key is advertised")
		}
		if err := checkUse(k, false); err != nil {
			return nil, fmt.Errorf("parse advertisement: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// checkUse checks that k is one of Tang's two kinds of key, with the
// key_ops of a private key (sign, verify) or a public one (verify).
func checkUse(k *jwk, private bool) error {
	switch k.alg {
	case algSign:
		if k.crv != p521 {
			return fmt.Errorf("ES512 key on %s, want P-521", k.crv.name)
		}
		if !k.has(opVerify) || private && !k.has(opSign) {
			return errors.New("ES512 key without its key_ops")
		}
	case algExchange:
		if !k.has(opDeriveKey) {
			return errors.New("ECMR key without deriveKey")
		}
	default:
		return fmt.Errorf("key alg %q, want ES512 or ECMR", k.alg)
	}
	return nil
}
