package tang

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	_ "crypto/sha1" // thumbprints with SHA-1, which tang and clevis accept
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/pbn-project/pbn/pbn/secret"
)

// The JWK "alg" values of Tang's keys: ES512 signs advertisements
// (RFC 7518 section 3.4), ECMR marks a McCallum-Relyea exchange key.
const (
	algSign     = "ES512"
	algExchange = "ECMR"
)

// The JWK "key_ops" values (RFC 7517 section 4.3) that Tang uses.
const (
	opSign      = "sign"
	opVerify    = "verify"
	opDeriveKey = "deriveKey"
)

// b64 is base64url without padding (RFC 7515 section 2), refusing
// non-canonical trailing bits.
var b64 = base64.RawURLEncoding.Strict()

// A jwk is an elliptic-curve JSON Web Key (RFC 7517; members of RFC 7518
// section 6.2). d is set only for a private key.
type jwk struct {
	alg    string
	keyOps []string
	crv    *curve
	x, y   []byte
	d      secret.Bytes
}

// jwkJSON is a JWK's wire form. Only these members are accepted.
type jwkJSON struct {
	Alg    string   `json:"alg,omitempty"`
	Crv    string   `json:"crv"`
	D      string   `json:"d,omitempty"`
	KeyOps []string `json:"key_ops,omitempty"`
	Kty    string   `json:"kty"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
}

// decodeStrict decodes one JSON value from b into v, refusing unknown
// members, members given twice (which encoding/json would take the last
// of) and anything after the value but white space.
func decodeStrict(b []byte, v any) error {
	if err := noDuplicates(json.NewDecoder(bytes.NewReader(b))); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// parseJWK parses an EC JWK strictly: kty EC, a supported curve,
// coordinates (and d) of exactly the curve's length (RFC 7518 sections
// 6.2.1.2-6.2.1.3, 6.2.2.1), and a point on the curve.
func parseJWK(b []byte) (*jwk, error) {
	var w jwkJSON
	if err := decodeStrict(b, &w); err != nil {
		return nil, fmt.Errorf("parse JWK: %w", err)
	}
	return w.key()
}

// noDuplicates reads one JSON value from dec and fails if an object in it
// has a member twice.
func noDuplicates(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('['):
		for dec.More() {
			if err := noDuplicates(dec); err != nil {
				return err
			}
		}
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			name, err := dec.Token()
			if err != nil {
				return err
			}
			s, _ := name.(string)
			if seen[s] {
				return fmt.Errorf("member %q given twice", s)
			}
			seen[s] = true
			if err := noDuplicates(dec); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

func (w *jwkJSON) key() (*jwk, error) {
	if w.Kty != "EC" {
		return nil, fmt.Errorf("parse JWK: kty %q, want EC", w.Kty)
	}
	crv, err := curveNamed(w.Crv)
	if err != nil {
		return nil, fmt.Errorf("parse JWK: %w", err)
	}
	k := &jwk{alg: w.Alg, keyOps: w.KeyOps, crv: crv}
	if k.x, err = decodeField(w.X, crv.size); err != nil {
		return nil, fmt.Errorf("parse JWK: x: %w", err)
	}
	if k.y, err = decodeField(w.Y, crv.size); err != nil {
		return nil, fmt.Errorf("parse JWK: y: %w", err)
	}
	if _, err := ecdsa.ParseUncompressedPublicKey(crv.elliptic, k.point()); err != nil {
		return nil, fmt.Errorf("parse JWK: %w", ErrInvalidPoint)
	}
	if w.D == "" {
		return k, nil
	}
	d, err := decodeField(w.D, crv.size)
	if err != nil {
		return nil, errors.New("parse JWK: d is not a scalar of the curve's length")
	}
	k.d = secret.Bytes(d)
	if err := k.checkPrivate(); err != nil {
		k.d.Wipe()
		return nil, err
	}
	return k, nil
}

// checkPrivate checks that d is a valid scalar whose public key is (x, y).
func (k *jwk) checkPrivate() error {
	priv, err := k.crv.ecdh.NewPrivateKey(k.d)
	if err != nil {
		return errors.New("parse JWK: d is not a valid private key")
	}
	if !bytes.Equal(priv.PublicKey().Bytes(), k.point()) {
		return errors.New("parse JWK: d does not match x and y")
	}
	return nil
}

func decodeField(s string, size int) ([]byte, error) {
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64url")
	}
	if len(b) != size {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), size)
	}
	return b, nil
}

// point returns the key's public point, uncompressed.
func (k *jwk) point() []byte {
	return slices.Concat([]byte{4}, k.x, k.y)
}

// publicJWK returns the public JWK of point p on crv.
func publicJWK(crv *curve, p []byte, alg string, ops ...string) *jwk {
	return &jwk{alg: alg, keyOps: ops, crv: crv, x: p[1 : 1+crv.size], y: p[1+crv.size:]}
}

// has reports whether the key's key_ops list op.
func (k *jwk) has(op string) bool { return slices.Contains(k.keyOps, op) }

// public returns the key without d, with key_ops ops.
func (k *jwk) public(ops ...string) *jwk {
	return &jwk{alg: k.alg, keyOps: ops, crv: k.crv, x: k.x, y: k.y}
}

// marshal returns the JWK's JSON, members in lexical order as tangd
// writes them.
func (k *jwk) marshal() []byte {
	w := jwkJSON{
		Alg: k.alg, Crv: k.crv.name, KeyOps: k.keyOps, Kty: "EC",
		X: b64.EncodeToString(k.x), Y: b64.EncodeToString(k.y),
	}
	if k.d != nil {
		w.D = b64.EncodeToString(k.d)
	}
	b, err := json.Marshal(w)
	if err != nil {
		panic(err) // strings and string slices always marshal
	}
	return b
}

// thumbprintHashes are the hashes a key ID may be made with, by their JOSE
// names; S256 is the default of tangd-keygen and clevis.
var thumbprintHashes = []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256,
	crypto.SHA384, crypto.SHA512}

// thumbprint returns the RFC 7638 thumbprint of the key made with h: the
// hash of the required members crv, kty, x, y in lexical order, no white
// space (RFC 7638 section 3.2).
func (k *jwk) thumbprint(h crypto.Hash) string {
	in := fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`,
		k.crv.name, b64.EncodeToString(k.x), b64.EncodeToString(k.y))
	d := h.New()
	d.Write([]byte(in))
	return b64.EncodeToString(d.Sum(nil))
}

// kid returns the key's ID: its SHA-256 thumbprint.
func (k *jwk) kid() string { return k.thumbprint(crypto.SHA256) }

// ecdsaPublic returns the key as an ECDSA public key.
func (k *jwk) ecdsaPublic() *ecdsa.PublicKey {
	pub, err := ecdsa.ParseUncompressedPublicKey(k.crv.elliptic, k.point())
	if err != nil {
		panic(err) // parseJWK and publicJWK only make points on the curve
	}
	return pub
}
