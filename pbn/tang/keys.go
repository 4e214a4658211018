package tang

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pbn-project/pbn/pbn/secret"
)

// ErrNoKeys is returned by LoadKeys when the directory has no advertised
// signing key or no advertised exchange key; GenerateKeys makes them.
var ErrNoKeys = errors.New("tang: no advertised keys")

// ErrUnknownKey is returned by Keys.Exchange and Client.Exchange when no
// exchange key has the given ID: a wrong kid, or a key that was retired.
var ErrUnknownKey = errors.New("tang: unknown key")

// maxKeyFile bounds a key file's size; a P-521 private JWK is about 350
// bytes.
const maxKeyFile = 8 << 10

// The curves of exchange keys, by their JWK names (RFC 7518 section
// 6.2.1.1).
const (
	CurveP256 = "P-256"
	CurveP521 = "P-521"
)

// ExchangeKey is a server's public exchange key.
type ExchangeKey struct {
	// ID is the key's SHA-256 JWK thumbprint (RFC 7638), the kid of
	// POST /rec/{kid}.
	ID string
	// Curve is CurveP256 or CurveP521.
	Curve string
	// Point is the public key, an uncompressed SEC 1 point.
	Point []byte
}

// JWK returns the key as Tang advertises it: a public EC JWK with
// "alg": "ECMR" and "key_ops": ["deriveKey"].
func (k ExchangeKey) JWK() []byte {
	crv, err := curveNamed(k.Curve)
	if err != nil || len(k.Point) != 1+2*crv.size {
		panic("tang: ExchangeKey.JWK of an invalid key")
	}
	return publicJWK(crv, k.Point, algExchange, opDeriveKey).marshal()
}

// ParseExchangeKey parses a public exchange key JWK strictly (see
// package doc) and computes its ID.
func ParseExchangeKey(b []byte) (ExchangeKey, error) {
	k, err := parseJWK(b)
	if err != nil {
		return ExchangeKey{}, err
	}
	if k.d != nil {
		k.d.Wipe()
		return ExchangeKey{}, errors.New("parse exchange key: a private key")
	}
	if k.alg != algExchange || !k.has(opDeriveKey) {
		return ExchangeKey{}, errors.New("parse exchange key: not an ECMR deriveKey key")
	}
	return exchangeKey(k), nil
}

func exchangeKey(k *jwk) ExchangeKey {
	return ExchangeKey{ID: k.kid(), Curve: k.crv.name, Point: k.point()}
}

// A serverKey is one private key of a key directory.
type serverKey struct {
	jwk        *jwk
	advertised bool
	signer     *ecdsa.PrivateKey // ES512 keys only
}

// Keys is the set of keys of one key directory, loaded by LoadKeys, with
// its signed advertisements made once. A Keys value does not change; after
// a rotation, load the directory again and hand the new value to
// Handler.SetKeys. It is safe for concurrent use.
type Keys struct {
	byID  map[string]*serverKey // every thumbprint of every key
	adv   []byte                // signed by every advertised signing key
	advBy map[*serverKey][]byte // signed also by that signing key
	pin   []byte
	exc   []ExchangeKey // advertised, P-521 first
}

// LoadKeys loads the keys of dir: every NAME.jwk file, advertised, and
// every .NAME.jwk file, rotated out but still answering exchanges. Other
// files are ignored, as tangd does. It returns ErrNoKeys when there is no
// advertised signing key or exchange key, and an error naming the file
// when a key file does not parse.
func LoadKeys(dir string) (*Keys, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load tang keys: %w", err)
	}
	var keys []*serverKey
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".jwk") {
			continue
		}
		k, err := loadKey(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		k.advertised = !strings.HasPrefix(e.Name(), ".")
		keys = append(keys, k)
	}
	return newKeys(keys)
}

func loadKey(path string) (*serverKey, error) {
	b, err := readLimited(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load tang key: %w", err)
	}
	defer secret.Bytes(b).Wipe()
	k, err := parseJWK(b)
	if err != nil {
		return nil, fmt.Errorf("load tang key %s: %w", path, err)
	}
	if k.d == nil {
		return nil, fmt.Errorf("load tang key %s: not a private key", path)
	}
	if err := checkUse(k, true); err != nil {
		return nil, fmt.Errorf("load tang key %s: %w", path, err)
	}
	sk := &serverKey{jwk: k}
	if k.alg == algSign {
		if sk.signer, err = ecdsa.ParseRawPrivateKey(elliptic.P521(), k.d); err != nil {
			return nil, fmt.Errorf("load tang key %s: %w", path, err)
		}
	}
	return sk, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// newKeys indexes keys and signs the advertisements.
func newKeys(keys []*serverKey) (*Keys, error) {
	ks := &Keys{byID: map[string]*serverKey{}, advBy: map[*serverKey][]byte{}}
	var payload jwkSet
	var signers []*ecdsa.PrivateKey
	// Exchange keys first and P-521 before P-256: clevis binds to the first
	// exchange key of an advertisement, and P-521 is Tang's default.
	slices.SortStableFunc(keys, func(a, b *serverKey) int {
		return cmp.Or(cmp.Compare(a.jwk.alg, b.jwk.alg), cmp.Compare(b.jwk.crv.size, a.jwk.crv.size))
	})
	for _, k := range keys {
		for _, h := range thumbprintHashes {
			ks.byID[k.jwk.thumbprint(h)] = k
		}
		if !k.advertised {
			continue
		}
		if k.signer != nil {
			signers = append(signers, k.signer)
			payload.Keys = append(payload.Keys, k.jwk.public(opVerify).marshal())
		} else {
			ks.exc = append(ks.exc, exchangeKey(k.jwk))
			payload.Keys = append(payload.Keys, k.jwk.public(opDeriveKey).marshal())
		}
	}
	if len(signers) == 0 || len(ks.exc) == 0 {
		return nil, ErrNoKeys
	}
	return ks, ks.sign(keys, payload, signers)
}

// sign makes the advertisement and, for every signing key, the
// advertisement that key signs too.
func (ks *Keys) sign(keys []*serverKey, payload jwkSet, signers []*ecdsa.PrivateKey) error {
	p, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("tang advertisement: %w", err)
	}
	if ks.adv, err = signAdvertisement(p, signers); err != nil {
		return err
	}
	if ks.pin, err = x509.MarshalPKIXPublicKey(&signers[0].PublicKey); err != nil {
		return fmt.Errorf("tang advertisement: %w", err)
	}
	for _, k := range keys {
		switch {
		case k.signer == nil:
		case k.advertised:
			ks.advBy[k] = ks.adv
		default:
			if ks.advBy[k], err = signAdvertisement(p, append(slices.Clip(signers), k.signer)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Advertisement returns the signed advertisement of GET /adv. The caller
// must not modify it.
func (ks *Keys) Advertisement() []byte { return ks.adv }

// AdvertisementFor returns the advertisement of GET /adv/{kid}: signed
// also by the signing key whose thumbprint is kid, advertised or rotated
// out. It returns ErrUnknownKey when there is no such signing key.
func (ks *Keys) AdvertisementFor(kid string) ([]byte, error) {
	adv, ok := ks.advBy[ks.byID[kid]]
	if !ok {
		return nil, ErrUnknownKey
	}
	return adv, nil
}

// Pin returns the DER SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7) of
// the first advertised signing key: what a key file pins in
// keyfile.Server.PublicKey.
func (ks *Keys) Pin() []byte { return ks.pin }

// ExchangeKey returns the advertised exchange key on the named curve
// (CurveP256 for PBN mode, CurveP521 for Tang's default), and whether
// there is one.
func (ks *Keys) ExchangeKey(curve string) (ExchangeKey, bool) {
	i := slices.IndexFunc(ks.exc, func(k ExchangeKey) bool { return k.Curve == curve })
	if i < 0 {
		return ExchangeKey{}, false
	}
	return ks.exc[i], true
}

// Exchange is the server's half of the McCallum-Relyea exchange: it
// returns s·x, where s is the exchange key whose thumbprint is kid
// (advertised or rotated out) and x an uncompressed SEC 1 point. It costs
// one scalar multiplication. It returns ErrUnknownKey for an unknown kid
// or one that names a signing key, and ErrInvalidPoint when x is not on
// the key's curve.
func (ks *Keys) Exchange(kid string, x []byte) ([]byte, error) {
	k := ks.exchanger(kid)
	if k == nil {
		return nil, ErrUnknownKey
	}
	return k.crv.mul(x, k.d)
}

// exchanger returns the exchange key whose thumbprint is kid, or nil.
func (ks *Keys) exchanger(kid string) *jwk {
	k := ks.byID[kid]
	if k == nil || k.jwk.alg != algExchange {
		return nil
	}
	return k.jwk
}

// GenerateKeys writes a new set of advertised keys to dir, making dir if
// it does not exist: an ES512 signing key on P-521 and an ECMR exchange
// key on P-521, as tangd-keygen does, and an ECMR exchange key on P-256
// for PBN mode. Key files are written whole or not at all.
func GenerateKeys(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("generate tang keys: %w", err)
	}
	sig, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate tang keys: %w", err)
	}
	d, err := sig.Bytes()
	if err != nil {
		return fmt.Errorf("generate tang keys: %w", err)
	}
	pub, err := sig.PublicKey.Bytes()
	if err != nil {
		return fmt.Errorf("generate tang keys: %w", err)
	}
	keys := []*jwk{privateJWK(p521, pub, d, algSign, opSign, opVerify)}
	for _, crv := range []*curve{p521, p256} {
		e, err := crv.ecdh.GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("generate tang keys: %w", err)
		}
		keys = append(keys, privateJWK(crv, e.PublicKey().Bytes(), e.Bytes(),
			algExchange, opDeriveKey))
	}
	for _, k := range keys {
		err := writeKey(dir, k)
		k.d.Wipe()
		if err != nil {
			return err
		}
	}
	return syncDir(dir)
}

func privateJWK(crv *curve, pub, d []byte, alg string, ops ...string) *jwk {
	k := publicJWK(crv, pub, alg, ops...)
	k.d = secret.Bytes(d)
	return k
}

// writeKey writes k to dir/KID.jwk through a temporary file, so that a
// crash leaves either no file or the whole key.
func writeKey(dir string, k *jwk) error {
	f, err := os.CreateTemp(dir, ".new-*.tmp")
	if err != nil {
		return fmt.Errorf("write tang key: %w", err)
	}
	defer os.Remove(f.Name())
	b := k.marshal()
	defer secret.Bytes(b).Wipe()
	_, err = f.Write(append(b, '\n'))
	err = errors.Join(err, f.Chmod(0o400), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, k.kid()+".jwk"))
	}
	if err != nil {
		return fmt.Errorf("write tang key: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// RotateKeys generates a new set of keys in dir (GenerateKeys) and then
// stops advertising the keys that were advertised before, renaming
// NAME.jwk to .NAME.jwk as tangd-rotate-keys does: they still answer
// exchanges, so existing bindings keep working until RetireKeys. New keys
// come first, so a crash in between leaves both sets advertised, never
// none.
func RotateKeys(dir string) error {
	old, err := filepath.Glob(filepath.Join(dir, "[^.]*.jwk"))
	if err != nil {
		return fmt.Errorf("rotate tang keys: %w", err)
	}
	if err := GenerateKeys(dir); err != nil {
		return err
	}
	for _, p := range old {
		if err := os.Rename(p, filepath.Join(dir, "."+filepath.Base(p))); err != nil {
			return fmt.Errorf("rotate tang keys: %w", err)
		}
	}
	return syncDir(dir)
}

// RetireKeys removes the rotated-out keys of dir (.NAME.jwk) and returns
// their IDs. Bindings to them no longer recover: call it once every device
// has been bound again to the current keys.
func RetireKeys(dir string) ([]string, error) {
	hidden, err := filepath.Glob(filepath.Join(dir, ".*.jwk"))
	if err != nil {
		return nil, fmt.Errorf("retire tang keys: %w", err)
	}
	var ids []string
	for _, p := range hidden {
		if err := os.Remove(p); err != nil {
			return ids, fmt.Errorf("retire tang keys: %w", err)
		}
		ids = append(ids, strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "."), ".jwk"))
	}
	return ids, syncDir(dir)
}
