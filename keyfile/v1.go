package keyfile

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"math"
	"net/url"
	"time"
)

// Format version 1. See the package documentation for the layout.

const (
	version1 = 1

	checksumSize  = sha256.Size
	maxHeader     = 16 << 10
	maxProtector  = 16 << 10
	maxProtectors = 32
	maxFactors    = 4
	maxParams     = 8 << 10
	maxLabel      = 128
	maxUPN        = 256
	maxURL        = 2048
	maxPublicKey  = 2048
	saltSize      = 32
)

const (
	tagHdrID           = 1
	tagHdrKind         = 2
	tagHdrDevice       = 3
	tagHdrUPN          = 4
	tagHdrSID          = 5
	tagHdrGeneration   = 6
	tagHdrCreated      = 7
	tagHdrServerURL    = 8
	tagHdrServerKey    = 9
	tagHdrOfflineLimit = 10

	tagProtLabel   = 1
	tagProtSalt    = 2
	tagProtFactor  = 3
	tagProtWrapped = 4
)

var headerSpec = map[uint8]fieldSpec{
	tagHdrID:           {name: "key file ID", min: 16, max: 16, required: true},
	tagHdrKind:         {name: "kind", min: 1, max: 1, required: true},
	tagHdrDevice:       {name: "device ID", min: 16, max: 16, required: true},
	tagHdrUPN:          {name: "UPN", min: 1, max: maxUPN},
	tagHdrSID:          {name: "SID", min: 1, max: maxName},
	tagHdrGeneration:   {name: "generation", min: 8, max: 8, required: true},
	tagHdrCreated:      {name: "creation time", min: 8, max: 8, required: true},
	tagHdrServerURL:    {name: "server URL", min: 1, max: maxURL},
	tagHdrServerKey:    {name: "server public key", min: 1, max: maxPublicKey},
	tagHdrOfflineLimit: {name: "offline limit", min: 8, max: 8},
}

var protectorSpec = map[uint8]fieldSpec{
	tagProtLabel:   {name: "label", min: 1, max: maxLabel},
	tagProtSalt:    {name: "salt", min: saltSize, max: saltSize, required: true},
	tagProtFactor:  {name: "factor", min: 1, max: 1 + maxParams, repeat: maxFactors, required: true},
	tagProtWrapped: {name: "wrapped key", min: wrappedSize, max: wrappedSize, required: true},
}

// encodeHeader returns the header section's fields.
func encodeHeader(h *Header) []byte {
	var e encoder
	e.bytes(tagHdrID, h.ID[:])
	e.uint8(tagHdrKind, uint8(h.Kind))
	e.bytes(tagHdrDevice, h.DeviceID[:])
	e.string(tagHdrUPN, h.UPN)
	e.string(tagHdrSID, h.SID)
	e.uint64(tagHdrGeneration, h.Generation)
	e.uint64(tagHdrCreated, uint64(h.Created.Unix()))
	e.string(tagHdrServerURL, h.Server.URL)
	if len(h.Server.PublicKey) > 0 {
		e.bytes(tagHdrServerKey, h.Server.PublicKey)
	}
	if h.OfflineLimit > 0 {
		e.uint64(tagHdrOfflineLimit, uint64(h.OfflineLimit/time.Second))
	}
	return e.b
}

// checkHeader reports what is wrong with a header, for both writing and
// reading, so that no file is written that would not read back.
func checkHeader(h *Header) error {
	switch {
	case h.ID.IsZero():
		return fmt.Errorf("key file ID is zero")
	case h.Kind < KindProvisioning || h.Kind > KindAdministrator:
		return fmt.Errorf("unknown kind %d", h.Kind)
	case h.DeviceID.IsZero():
		return fmt.Errorf("device ID is zero")
	case h.Kind == KindProvisioning && (h.UPN != "" || h.SID != ""):
		return fmt.Errorf("a provisioning key file has no user")
	case len(h.UPN) > maxUPN:
		return fmt.Errorf("UPN longer than %d bytes", maxUPN)
	case h.SID != "" && !validSID(h.SID):
		return fmt.Errorf("SID %q is not a SID", h.SID)
	case h.Generation == 0:
		return fmt.Errorf("generation is zero")
	case h.Created.Unix() <= 0:
		return fmt.Errorf("creation time is not set")
	case len(h.Server.URL) > maxURL:
		return fmt.Errorf("server URL longer than %d bytes", maxURL)
	case len(h.Server.PublicKey) > maxPublicKey:
		return fmt.Errorf("server public key longer than %d bytes", maxPublicKey)
	case h.OfflineLimit < 0 || h.OfflineLimit > 0 && h.OfflineLimit < time.Second:
		return fmt.Errorf("offline limit %v is not a positive number of seconds", h.OfflineLimit)
	}
	if h.Server.URL != "" {
		u, err := url.Parse(h.Server.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("server URL %q is not an http or https URL", h.Server.URL)
		}
	}
	if len(h.Server.PublicKey) > 0 {
		if _, err := x509.ParsePKIXPublicKey(h.Server.PublicKey); err != nil {
			return fmt.Errorf("server public key is not a DER SubjectPublicKeyInfo")
		}
	}
	for _, s := range []string{h.UPN, h.Server.URL} {
		if _, err := text("header", "", []byte(s)); err != nil {
			return fmt.Errorf("UPN or URL holds a control character or is not UTF-8")
		}
	}
	return nil
}

func decodeHeader(b []byte) (Header, error) {
	const section = "header"
	var h Header
	fields, err := decodeFields(section, b, headerSpec)
	if err != nil {
		return h, err
	}
	for _, f := range fields {
		switch f.tag {
		case tagHdrID:
			copy(h.ID[:], f.value)
		case tagHdrKind:
			h.Kind = Kind(f.value[0])
		case tagHdrDevice:
			copy(h.DeviceID[:], f.value)
		case tagHdrUPN:
			h.UPN = string(f.value)
		case tagHdrSID:
			h.SID = string(f.value)
		case tagHdrGeneration:
			h.Generation = binary.BigEndian.Uint64(f.value)
		case tagHdrCreated:
			s := binary.BigEndian.Uint64(f.value)
			if s > math.MaxInt64/2 {
				return h, formatErr(section, "creation time out of range")
			}
			h.Created = time.Unix(int64(s), 0).UTC()
		case tagHdrServerURL:
			h.Server.URL = string(f.value)
		case tagHdrServerKey:
			h.Server.PublicKey = bytes.Clone(f.value)
		case tagHdrOfflineLimit:
			s := binary.BigEndian.Uint64(f.value)
			if s == 0 || s > uint64(math.MaxInt64/int64(time.Second)) {
				return h, formatErr(section, "offline limit out of range")
			}
			h.OfflineLimit = time.Duration(s) * time.Second
		}
	}
	if err := checkHeader(&h); err != nil {
		return h, formatErr(section, err.Error())
	}
	return h, nil
}

// encodeProtector returns a protector's fields without its wrapped key:
// these are what the wrapping authenticates. The wrapped key follows as the
// last field.
func (p *protector) encodeUnwrapped() []byte {
	var e encoder
	e.string(tagProtLabel, p.label)
	e.bytes(tagProtSalt, p.salt[:])
	for _, f := range p.factors {
		e.bytes(tagProtFactor, append([]byte{byte(f.typ)}, f.params...))
	}
	return e.b
}

func (p *protector) encode() []byte {
	e := encoder{b: p.encodeUnwrapped()}
	e.bytes(tagProtWrapped, p.wrapped)
	return e.b
}

func decodeProtector(section string, b []byte) (protector, error) {
	var p protector
	fields, err := decodeFields(section, b, protectorSpec)
	if err != nil {
		return p, err
	}
	seen := map[FactorType]bool{}
	for _, f := range fields {
		switch f.tag {
		case tagProtLabel:
			if p.label, err = text(section, "label", f.value); err != nil {
				return p, err
			}
		case tagProtSalt:
			copy(p.salt[:], f.value)
		case tagProtFactor:
			t := FactorType(f.value[0])
			if !t.known() {
				return p, formatErr(section, fmt.Sprintf("unknown factor type %d", t))
			}
			if seen[t] {
				return p, formatErr(section, fmt.Sprintf("two %s factors", t))
			}
			seen[t] = true
			params := bytes.Clone(f.value[1:])
			if err := checkParams(t, params); err != nil {
				return p, formatErr(section, fmt.Sprintf("%s factor: %v", t, err))
			}
			p.factors = append(p.factors, storedFactor{t, params})
		case tagProtWrapped:
			p.wrapped = bytes.Clone(f.value)
		}
	}
	return p, nil
}

// checkParams checks the parameters of the factors that this package
// implements. The TPM and network factors check theirs when they recover.
func checkParams(t FactorType, params []byte) error {
	switch t {
	case FactorPassword:
		_, err := parseArgon2Params(params)
		return err
	case FactorRecovery:
		_, err := parseRecoveryParams(params)
		return err
	}
	return nil
}

// encodeV1 lays out a whole file: the preamble, the header, the protectors,
// the keyring (sealed by seal, which gets the bytes before it as associated
// data and returns nonce and ciphertext of sealedSize bytes) and the
// checksum.
func encodeV1(h *Header, ps []protector, sealedSize int, seal func(aad []byte) []byte) []byte {
	b := append([]byte(magic), 0, version1)
	hdr := encodeHeader(h)
	b = binary.BigEndian.AppendUint32(b, uint32(len(hdr)))
	b = append(b, hdr...)
	b = append(b, byte(len(ps)))
	for i := range ps {
		pb := ps[i].encode()
		b = binary.BigEndian.AppendUint32(b, uint32(len(pb)))
		b = append(b, pb...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(sealedSize))
	b = append(b, seal(b)...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// v1 is a parsed file before it is opened.
type v1 struct {
	header     Header
	protectors []protector
	aad        []byte // everything before the sealed keyring
	sealed     []byte // nonce and ciphertext of the keyring
}

// parseV1 parses the body of a version 1 file; b is the whole file.
func parseV1(b []byte) (*v1, error) {
	body := b[len(magic)+2:]
	if len(b) < len(magic)+2+checksumSize {
		return nil, fmt.Errorf("%w: the file is truncated", ErrDamaged)
	}
	sum := sha256.Sum256(b[:len(b)-checksumSize])
	if !bytes.Equal(sum[:], b[len(b)-checksumSize:]) {
		if need := sectionsLength(body); need > len(body) {
			return nil, fmt.Errorf("%w: the file is truncated (%d bytes, at least %d expected)",
				ErrDamaged, len(b), len(b)-len(body)+need)
		}
		return nil, ErrDamaged
	}
	body = body[:len(body)-checksumSize]
	return parseV1Sections(b[:len(b)-checksumSize], body)
}

// parseV1Sections parses the sections of a file whose checksum matched;
// all is the file without its checksum, body the part after the preamble.
func parseV1Sections(all, body []byte) (*v1, error) {
	r := sectionReader{b: body}
	hdr, err := r.section("header", maxHeader)
	if err != nil {
		return nil, err
	}
	f := new(v1)
	if f.header, err = decodeHeader(hdr); err != nil {
		return nil, err
	}
	n, err := r.byte("protectors")
	if err != nil {
		return nil, err
	}
	if n == 0 || n > maxProtectors {
		return nil, formatErr("protectors", fmt.Sprintf("%d protectors, want 1 to %d", n, maxProtectors))
	}
	for i := range int(n) {
		name := fmt.Sprintf("protector %d", i)
		pb, err := r.section(name, maxProtector)
		if err != nil {
			return nil, err
		}
		p, err := decodeProtector(name, pb)
		if err != nil {
			return nil, err
		}
		f.protectors = append(f.protectors, p)
	}
	aadLen := len(all) - len(r.b) + 4
	sealed, err := r.section("keyring", maxFileSize)
	if err != nil {
		return nil, err
	}
	if len(sealed) < nonceSize+tagSize+1 {
		return nil, formatErr("keyring", "too short to hold a keyring")
	}
	if len(r.b) != 0 {
		return nil, formatErr("file", fmt.Sprintf("%d bytes after the keyring", len(r.b)))
	}
	f.aad = all[:aadLen]
	f.sealed = sealed
	return f, nil
}

// sectionsLength walks the section lengths of a body without checking
// them, to tell a truncated file from a damaged one. It returns the length
// the body should have, or 0 where the lengths do not walk.
func sectionsLength(body []byte) int {
	off := 0
	next := func() bool {
		if off+4 > len(body) {
			off += 4
			return false
		}
		off += 4 + int(binary.BigEndian.Uint32(body[off:]))
		return off <= len(body)
	}
	if !next() {
		return off
	}
	if off >= len(body) {
		return off + 1
	}
	n := int(body[off])
	off++
	for range n {
		if !next() {
			return off
		}
	}
	next()
	return off + checksumSize
}

// sectionReader reads length-prefixed sections.
type sectionReader struct {
	b []byte
}

func (r *sectionReader) section(name string, max int) ([]byte, error) {
	if len(r.b) < 4 {
		return nil, formatErr(name, "truncated")
	}
	n := binary.BigEndian.Uint32(r.b)
	if n > uint32(max) {
		return nil, formatErr(name, fmt.Sprintf("%d bytes, more than the limit of %d", n, max))
	}
	if uint32(len(r.b)-4) < n {
		return nil, formatErr(name, "truncated")
	}
	s := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return s, nil
}

func (r *sectionReader) byte(name string) (byte, error) {
	if len(r.b) < 1 {
		return 0, formatErr(name, "truncated")
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, nil
}
