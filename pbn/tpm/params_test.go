package tpm

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/pbn-project/pbn/pbn/secret"
)

// testParams returns well-formed parameters without a TPM: the public
// area is the one Seal asks for, the private area random bytes.
func testParams(t testing.TB, edit func(*tpm2.TPMTPublic)) *params {
	t.Helper()
	digest := sha256.Sum256([]byte("PCR values"))
	pub, err := sealedTemplate(DefaultPCRs, digest[:])
	if err != nil {
		t.Fatalf("sealedTemplate = %v", err)
	}
	unique := sha256.Sum256([]byte("unique"))
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique[:]})
	if edit != nil {
		edit(&pub)
	}
	name := append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)
	p := &params{sealed: Sealed{
		SRKName:   name,
		PCRs:      DefaultPCRs,
		PCRDigest: digest[:],
		Public:    tpm2.Marshal(&pub),
		Private:   secret.Random(120),
	}}
	copy(p.salt[:], secret.Random(saltSize))
	return p
}

func TestParamsRoundTrip(t *testing.T) {
	p := testParams(t, nil)
	b := p.encodeV1()
	got, err := parseParams(b)
	if err != nil {
		t.Fatalf("parseParams(encodeV1()) = %v", err)
	}
	if !bytes.Equal(got.encodeV1(), b) {
		t.Errorf("parseParams(encodeV1()) encodes to other bytes")
	}
	if got.sealed.PCRs.String() != DefaultPCRs.String() {
		t.Errorf("PCRs = %v, want %v", got.sealed.PCRs, DefaultPCRs)
	}
}

func TestParamsStrict(t *testing.T) {
	good := testParams(t, nil).encodeV1()
	// Offsets in version 1: version, name (2+34), PCRs (3), digest, salt.
	const pcrAt = 1 + 2 + srkNameSize
	withPublic := func(edit func(*tpm2.TPMTPublic)) []byte { return testParams(t, edit).encodeV1() }
	set := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown version", set(0, 2)},
		{"version 0", set(0, 0)},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"cut short", good[:len(good)-1]},
		{"SRK name of another algorithm", set(4, 0x0c)},
		{"SRK name too long", set(2, srkNameSize+1)},
		{"no PCRs", append(append(bytes.Clone(good[:pcrAt]), 0, 0, 0), good[pcrAt+3:]...)},
		{"another PCR than the policy's", set(pcrAt, good[pcrAt]|0x02)},
		{"another digest than the policy's", set(pcrAt+3, good[pcrAt+3]^1)},
		{"userWithAuth", withPublic(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true })},
		{"noDA", withPublic(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.NoDA = true })},
		{"no policy", withPublic(func(p *tpm2.TPMTPublic) { p.AuthPolicy = tpm2.TPM2BDigest{} })},
		{"SHA-1 name", withPublic(func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 })},
	} {
		if _, err := parseParams(tc.b); !errors.Is(err, errParams) {
			t.Errorf("parseParams(%s) = %v, want errParams", tc.name, err)
		}
	}
	for n := range len(good) {
		if _, err := parseParams(good[:n]); err == nil {
			t.Errorf("parseParams(first %d bytes) = nil error", n)
		}
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add(testParams(f, nil).encodeV1())
	f.Add([]byte{paramsV1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseParams(b)
		if err != nil {
			return
		}
		if !bytes.Equal(p.encodeV1(), b) {
			t.Errorf("parseParams accepted %x, which encodes to %x", b, p.encodeV1())
		}
		if err := p.sealed.PCRs.check(); err != nil {
			t.Errorf("parseParams accepted a PCR selection that check refuses: %v", err)
		}
	})
}
