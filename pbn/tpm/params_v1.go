package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Version 1 of a TPM factor's parameters, after the version byte:
//
//	SRK name      uint16 length (34), then TPM_ALG_SHA256 and a SHA-256 digest
//	PCRs          3 bytes: the SHA-256 bank's bit map of PCRs 0 to 23, not empty
//	PCR digest    32 bytes: SHA-256 over the PCR values at sealing
//	salt          32 bytes: for the authValue derivation
//	public area   uint16 length, then a TPMT_PUBLIC
//	private area  uint16 length, then the contents of a TPM2B_PRIVATE
//
// All integers are big-endian, as in the TPM's own encoding.
const (
	srkNameSize = 2 + sha256.Size
	saltSize    = 32
	// maxBlob bounds the public and private areas: a sealed object's are
	// under 200 bytes; a TPM2B_PRIVATE is at most 1 KiB on any TPM.
	maxBlob = 1024
)

func (p *params) encodeV1() []byte {
	b := []byte{paramsV1}
	b = appendBlob(b, p.sealed.SRKName)
	m := p.sealed.PCRs.mask()
	b = append(b, m[:]...)
	b = append(b, p.sealed.PCRDigest...)
	b = append(b, p.salt[:]...)
	b = appendBlob(b, p.sealed.Public)
	return appendBlob(b, p.sealed.Private)
}

func appendBlob(b, blob []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(blob)))
	return append(b, blob...)
}

// reader takes fields off the front of an encoding.
type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: %s cut short", errParams, field)
		return nil
	}
	v := bytes.Clone(r.b[:n])
	r.b = r.b[n:]
	return v
}

func (r *reader) blob(max int, field string) []byte {
	n := r.bytes(2, field)
	if r.err != nil {
		return nil
	}
	size := int(binary.BigEndian.Uint16(n))
	if size == 0 || size > max {
		r.err = fmt.Errorf("%w: %s of %d bytes (want 1 to %d)", errParams, field, size, max)
		return nil
	}
	return r.bytes(size, field)
}

func parseParamsV1(b []byte) (*params, error) {
	r := &reader{b: b}
	var p params
	p.sealed.SRKName = r.blob(srkNameSize, "SRK name")
	mask := r.bytes(NumPCRs/8, "PCR selection")
	p.sealed.PCRDigest = r.bytes(sha256.Size, "PCR digest")
	copy(p.salt[:], r.bytes(saltSize, "salt"))
	p.sealed.Public = r.blob(maxBlob, "public area")
	p.sealed.Private = r.blob(maxBlob, "private area")
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the end", errParams, len(r.b))
	}

	if len(p.sealed.SRKName) != srkNameSize ||
		binary.BigEndian.Uint16(p.sealed.SRKName) != uint16(tpm2.TPMAlgSHA256) {
		return nil, fmt.Errorf("%w: the SRK name is not a SHA-256 name", errParams)
	}
	p.sealed.PCRs = selectionFromMask([NumPCRs / 8]byte(mask))
	if err := p.sealed.PCRs.check(); err != nil {
		return nil, fmt.Errorf("%w: %w", errParams, err)
	}
	if err := checkSealedPublic(&p.sealed); err != nil {
		return nil, err
	}
	return &p, nil
}

// checkSealedPublic checks that the public area is, byte for byte, the one
// Seal makes for the recorded PCR binding, so that a key file cannot carry
// an object with a weaker policy or other attributes.
func checkSealedPublic(s *Sealed) error {
	want, err := sealedTemplate(s.PCRs, s.PCRDigest)
	if err != nil {
		return fmt.Errorf("%w: %w", errParams, err)
	}
	if err := isSealedObject(s.Public, want); err != nil {
		return fmt.Errorf("%w: the public area is not a sealed object of this PCR binding: %w", errParams, err)
	}
	return nil
}
