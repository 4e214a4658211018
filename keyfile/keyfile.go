package keyfile

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/pbn-project/pbn/pbn/secret"
)

const (
	magic       = "\x89PBNKF\r\n"
	maxFileSize = 1 << 20
	dataKeySize = chacha20poly1305.KeySize
	nonceSize   = chacha20poly1305.NonceSizeX
	tagSize     = chacha20poly1305.Overhead
	wrappedSize = nonceSize + dataKeySize + tagSize
)

// KeyFile is a key file, parsed and possibly open. A KeyFile is not safe for
// concurrent use.
type KeyFile struct {
	header     Header
	protectors []protector

	// Set by Parse until the file is opened.
	aad, sealed []byte

	// Set once the file is open.
	dataKey secret.Bytes
	ring    *Keyring
}

// protector is one stored protector.
type protector struct {
	label   string
	salt    [saltSize]byte
	factors []storedFactor
	wrapped []byte // nonce and sealed data key
}

type storedFactor struct {
	typ    FactorType
	params []byte
}

// ProtectorInfo describes a protector without its secrets.
type ProtectorInfo struct {
	Label   string
	Factors []FactorType
	// Params are the factors' public parameters, in the order of Factors.
	Params [][]byte
}

// New returns an open key file with header h, keyring ring and a fresh data
// key, and no protector yet: add at least one with AddProtector before
// Marshal. A zero Generation becomes 1 and a zero Created the current time.
// The key file takes ring over: Close wipes it.
func New(h Header, ring *Keyring) (*KeyFile, error) {
	if h.Generation == 0 {
		h.Generation = 1
	}
	if h.Created.IsZero() {
		h.Created = time.Now()
	}
	h.Created = h.Created.UTC().Truncate(time.Second)
	if err := checkHeader(&h); err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	if ring == nil {
		return nil, errors.New("keyfile: no keyring")
	}
	if err := ring.check(); err != nil {
		return nil, err
	}
	return &KeyFile{header: h, dataKey: secret.Random(dataKeySize), ring: ring}, nil
}

// Parse parses a key file strictly, checking its checksum and every field,
// without opening it. It returns ErrDamaged for a file whose checksum does
// not match (a flipped bit, a file cut short) and a *FormatError for one
// that is well-formed but not a valid key file of a known version.
func Parse(b []byte) (*KeyFile, error) {
	if len(b) > maxFileSize {
		return nil, formatErr("file", fmt.Sprintf("%d bytes, more than the limit of %d", len(b), maxFileSize))
	}
	if len(b) < len(magic)+2 || string(b[:len(magic)]) != magic {
		return nil, formatErr("preamble", "not a PBN key file")
	}
	switch v := binary.BigEndian.Uint16(b[len(magic):]); v {
	case version1:
		f, err := parseV1(b)
		if err != nil {
			return nil, err
		}
		return &KeyFile{header: f.header, protectors: f.protectors, aad: f.aad, sealed: f.sealed}, nil
	default:
		return nil, formatErr("preamble", fmt.Sprintf("unsupported format version %d", v))
	}
}

// Header returns a copy of the key file's header.
func (f *KeyFile) Header() Header {
	h := f.header
	h.Server.PublicKey = bytes.Clone(h.Server.PublicKey)
	return h
}

// Protectors describes the key file's protectors, in their order.
func (f *KeyFile) Protectors() []ProtectorInfo {
	var ps []ProtectorInfo
	for _, p := range f.protectors {
		info := ProtectorInfo{Label: p.label}
		for _, sf := range p.factors {
			info.Factors = append(info.Factors, sf.typ)
			info.Params = append(info.Params, bytes.Clone(sf.params))
		}
		ps = append(ps, info)
	}
	return ps
}

// IsOpen reports whether the key file is open.
func (f *KeyFile) IsOpen() bool { return f.ring != nil }

// Keyring returns the open key file's keyring, or nil if it is not open.
// The key file keeps it: Close wipes it.
func (f *KeyFile) Keyring() *Keyring { return f.ring }

// Close wipes the data key and the keyring. The key file cannot be opened
// or written afterwards without opening it again.
func (f *KeyFile) Close() {
	f.dataKey.Wipe()
	f.ring.Wipe()
	f.dataKey, f.ring = nil, nil
}

// Open opens the key file with the first protector whose factors are all
// among factors, and decrypts its keyring. It returns ErrNoProtector if no
// protector can be tried with the factors given; ErrWrongPassword or
// ErrWrongRecoveryKey if a tried protector with a password or recovery key
// factor did not open (several failures are joined); a factor's own error
// (a TPM's, a key server's) as the factor returned it; and ErrTampered if a
// protector opened but the file does not authenticate.
func (f *KeyFile) Open(ctx context.Context, factors ...Factor) error {
	if f.IsOpen() {
		return nil
	}
	given := map[FactorType]Factor{}
	for _, fc := range factors {
		given[fc.Type()] = fc
	}
	var errs []error
	for i := range f.protectors {
		p := &f.protectors[i]
		if !p.satisfiedBy(given) {
			continue
		}
		key, err := p.unwrap(ctx, f.header, given)
		if err != nil {
			errs = append(errs, fmt.Errorf("protector %d (%s): %w", i, p.describe(), err))
			continue
		}
		ring, err := openKeyring(key, f.aad, f.sealed)
		if err != nil {
			key.Wipe()
			return err
		}
		f.dataKey, f.ring = key, ring
		f.aad, f.sealed = nil, nil
		return nil
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w (the key file needs one of: %s)", ErrNoProtector, f.needs())
	}
	return errors.Join(errs...)
}

// needs lists what the protectors need, for an error message.
func (f *KeyFile) needs() string {
	var alts []string
	for _, p := range f.protectors {
		alts = append(alts, p.describe())
	}
	return strings.Join(alts, "; ")
}

// AddProtector adds a protector that opens the key file with all of
// factors together, enrolling each, and returns its index. The key file
// must be open.
func (f *KeyFile) AddProtector(ctx context.Context, label string, factors ...Factor) (int, error) {
	if !f.IsOpen() {
		return 0, errors.New("keyfile: add protector: the key file is not open")
	}
	if len(factors) == 0 || len(factors) > maxFactors {
		return 0, fmt.Errorf("keyfile: add protector: %d factors, want 1 to %d", len(factors), maxFactors)
	}
	if len(f.protectors) >= maxProtectors {
		return 0, fmt.Errorf("keyfile: add protector: the key file has the most protectors allowed (%d)", maxProtectors)
	}
	if len(label) > maxLabel {
		return 0, fmt.Errorf("keyfile: add protector: label longer than %d bytes", maxLabel)
	}
	if _, err := text("protector", "label", []byte(label)); err != nil {
		return 0, fmt.Errorf("keyfile: add protector: %w", err)
	}

	p := protector{label: label}
	copy(p.salt[:], secret.Random(saltSize))
	var secrets []secret.Bytes
	defer func() { secret.WipeAll(secrets...) }()
	seen := map[FactorType]bool{}
	for _, fc := range factors {
		t := fc.Type()
		if !t.known() || seen[t] {
			return 0, fmt.Errorf("keyfile: add protector: %s given twice or unknown", t)
		}
		seen[t] = true
		h := f.Header()
		params, s, err := fc.Enroll(ctx, &h)
		if err != nil {
			return 0, fmt.Errorf("keyfile: add protector: enroll %s: %w", t, err)
		}
		secrets = append(secrets, s)
		if len(params) > maxParams {
			return 0, fmt.Errorf("keyfile: add protector: %s parameters longer than %d bytes", t, maxParams)
		}
		p.factors = append(p.factors, storedFactor{t, params})
	}
	if err := p.wrap(f.header.ID, secrets, f.dataKey); err != nil {
		return 0, err
	}
	f.protectors = append(f.protectors, p)
	return len(f.protectors) - 1, nil
}

// RemoveProtector removes the protector at index i. The key file must be
// open, and its last protector stays.
func (f *KeyFile) RemoveProtector(i int) error {
	switch {
	case !f.IsOpen():
		return errors.New("keyfile: remove protector: the key file is not open")
	case i < 0 || i >= len(f.protectors):
		return fmt.Errorf("keyfile: remove protector: no protector %d", i)
	case len(f.protectors) == 1:
		return errors.New("keyfile: remove protector: it is the last protector")
	}
	f.protectors = append(f.protectors[:i], f.protectors[i+1:]...)
	return nil
}

// Marshal returns the key file's encoding, with its keyring sealed afresh
// under the data key. The key file must be open and have a protector.
func (f *KeyFile) Marshal() ([]byte, error) {
	if !f.IsOpen() {
		return nil, errors.New("keyfile: marshal: the key file is not open")
	}
	if len(f.protectors) == 0 {
		return nil, errors.New("keyfile: marshal: the key file has no protector")
	}
	plain := f.ring.encode()
	defer plain.Wipe()
	aead, err := chacha20poly1305.NewX(f.dataKey)
	if err != nil {
		return nil, err
	}
	sealedSize := nonceSize + len(plain) + tagSize
	b := encodeV1(&f.header, f.protectors, sealedSize, func(aad []byte) []byte {
		nonce := secret.Random(nonceSize)
		return aead.Seal(nonce, nonce, plain, aad)
	})
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("keyfile: marshal: %d bytes, more than the limit of %d", len(b), maxFileSize)
	}
	return b, nil
}

// satisfiedBy reports whether every factor of p is given.
func (p *protector) satisfiedBy(given map[FactorType]Factor) bool {
	for _, sf := range p.factors {
		if given[sf.typ] == nil {
			return false
		}
	}
	return true
}

// describe names p's factors, for people: "password", "TPM + password".
func (p *protector) describe() string {
	var names []string
	for _, sf := range p.factors {
		names = append(names, sf.typ.String())
	}
	return strings.Join(names, " + ")
}

// wrapKey derives the key that wraps the data key from the factors'
// secrets, in the protector's order.
func (p *protector) wrapKey(id ID, secrets []secret.Bytes) (secret.Bytes, error) {
	var ikm secret.Bytes
	defer func() { ikm.Wipe() }()
	for i, s := range secrets {
		ikm = append(ikm, byte(p.factors[i].typ))
		ikm = binary.BigEndian.AppendUint16(ikm, uint16(len(s)))
		ikm = append(ikm, s...)
	}
	info := "PBN key file v1 protector " + id.String()
	k, err := hkdf.Key(sha256.New, ikm, p.salt[:], info, dataKeySize)
	return secret.Bytes(k), err
}

// aad is what the wrapping of p's data key authenticates: the key file's
// ID and every field of p but the wrapped key.
func (p *protector) aad(id ID) []byte {
	return append(id[:], p.encodeUnwrapped()...)
}

func (p *protector) wrap(id ID, secrets []secret.Bytes, dataKey secret.Bytes) error {
	k, err := p.wrapKey(id, secrets)
	if err != nil {
		return err
	}
	defer k.Wipe()
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		return err
	}
	nonce := secret.Random(nonceSize)
	p.wrapped = aead.Seal(nonce, nonce, dataKey, p.aad(id))
	return nil
}

// unwrap recovers every factor's secret and with them the data key.
func (p *protector) unwrap(ctx context.Context, h Header, given map[FactorType]Factor) (secret.Bytes, error) {
	var secrets []secret.Bytes
	defer func() { secret.WipeAll(secrets...) }()
	for _, sf := range p.factors {
		hc := h
		s, err := given[sf.typ].Recover(ctx, &hc, sf.params)
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, s)
	}
	k, err := p.wrapKey(h.ID, secrets)
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		return nil, err
	}
	key, err := aead.Open(nil, p.wrapped[:nonceSize], p.wrapped[nonceSize:], p.aad(h.ID))
	if err != nil {
		return nil, p.wrongSecret()
	}
	return key, nil
}

// wrongSecret is the error for a protector whose factors' secrets did not
// unwrap the data key: the password or recovery key was wrong, or, for
// factors that check their own credentials, the protector was changed.
func (p *protector) wrongSecret() error {
	for _, sf := range p.factors {
		switch sf.typ {
		case FactorPassword:
			return ErrWrongPassword
		case FactorRecovery:
			return ErrWrongRecoveryKey
		}
	}
	return ErrTampered
}

// openKeyring decrypts and authenticates a sealed keyring.
func openKeyring(dataKey secret.Bytes, aad, sealed []byte) (*Keyring, error) {
	aead, err := chacha20poly1305.NewX(dataKey)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], aad)
	if err != nil {
		return nil, ErrTampered
	}
	defer secret.Bytes(plain).Wipe()
	ring, err := decodeKeyring(plain)
	if err != nil {
		return nil, err
	}
	return ring, nil
}
