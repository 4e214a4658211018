package keyfile

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
)

// testHeader returns a valid user header.
func testHeader(t testing.TB) Header {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return Header{
		ID:           NewID(),
		Kind:         KindUser,
		DeviceID:     NewID(),
		UPN:          "alice@corp.example.test",
		SID:          "S-1-5-21-1004336348-1177238915-682003330-1105",
		Created:      time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC),
		Server:       Server{URL: "https://keys.corp.example.test", PublicKey: spki},
		OfflineLimit: 14 * 24 * time.Hour,
	}
}

func testRing() *Keyring {
	return &Keyring{
		FDE: secret.Bytes("fde-secret-0123456789abcdef0123456789abcdef"),
		Groups: []GroupKey{
			{SID: "S-1-5-21-1004336348-1177238915-682003330-1201", Name: "Finance", Key: secret.Random(32)},
			{SID: "S-1-5-21-1004336348-1177238915-682003330-1202", Key: secret.Random(32)},
		},
		Enterprise: secret.Random(32),
	}
}

// testPassword is a password factor at the floor parameters, so tests run
// fast; calibration has its own test.
func testPassword(pw string) Factor {
	return PasswordWith(secret.Bytes(pw), FloorArgon2)
}

// newTestFile makes a key file with a password protector and a recovery
// protector, and returns its encoding and the recovery key.
func newTestFile(t testing.TB) ([]byte, RecoveryKey) {
	t.Helper()
	ctx := context.Background()
	f, err := New(testHeader(t), testRing())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer f.Close()
	if _, err := f.AddProtector(ctx, "alice's password", testPassword("correct horse")); err != nil {
		t.Fatalf("AddProtector(password): %v", err)
	}
	rk := NewRecoveryKey()
	if _, err := f.AddProtector(ctx, "recovery", Recovery(rk)); err != nil {
		t.Fatalf("AddProtector(recovery): %v", err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b, rk
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	b, rk := newTestFile(t)
	want := testRing()

	for _, tc := range []struct {
		name   string
		factor Factor
	}{
		{"password", testPassword("correct horse")},
		{"recovery key", Recovery(rk)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if f.IsOpen() || f.Keyring() != nil {
				t.Fatalf("Parse returned an open key file")
			}
			if err := f.Open(ctx, tc.factor); err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer f.Close()
			got := f.Keyring()
			if !got.FDE.Equal(want.FDE) || len(got.Groups) != 2 || got.Groups[0].Name != "Finance" ||
				got.Groups[1].SID != want.Groups[1].SID || len(got.Enterprise) != 32 {
				t.Errorf("Open: keyring = %+v, want the one written", got)
			}
			h := f.Header()
			wh := testHeader(t)
			if h.UPN != wh.UPN || h.SID != wh.SID || h.Kind != KindUser || h.Generation != 1 ||
				!h.Created.Equal(wh.Created) || h.OfflineLimit != wh.OfflineLimit || h.Server.URL != wh.Server.URL {
				t.Errorf("Header() = %+v, want %+v", h, wh)
			}
		})
	}
}

func TestMarshalReopened(t *testing.T) {
	ctx := context.Background()
	b, _ := newTestFile(t)
	f, _ := Parse(b)
	if err := f.Open(ctx, testPassword("correct horse")); err != nil {
		t.Fatal(err)
	}
	b2, err := f.Marshal()
	if err != nil {
		t.Fatalf("Marshal after Open: %v", err)
	}
	if bytes.Equal(b, b2) {
		t.Errorf("Marshal after Open returned the same bytes: the keyring nonce was reused")
	}
	g, err := Parse(b2)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Open(ctx, testPassword("correct horse")); err != nil {
		t.Errorf("Open of the re-marshalled file: %v", err)
	}
}

func TestWrongSecrets(t *testing.T) {
	ctx := context.Background()
	b, _ := newTestFile(t)
	for _, tc := range []struct {
		name    string
		factors []Factor
		want    error
	}{
		{"wrong password", []Factor{testPassword("Correct horse")}, ErrWrongPassword},
		{"empty password", []Factor{Password(nil)}, ErrWrongPassword},
		{"wrong recovery key", []Factor{Recovery(NewRecoveryKey())}, ErrWrongRecoveryKey},
		{"nothing given", nil, ErrNoProtector},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			err = f.Open(ctx, tc.factors...)
			if !errors.Is(err, tc.want) {
				t.Errorf("Open = %v, want %v", err, tc.want)
			}
			if f.IsOpen() || f.Keyring() != nil {
				t.Errorf("a failed Open left the key file open")
			}
		})
	}
}

// A protector with two factors opens only with both.
func TestTwoFactorProtector(t *testing.T) {
	ctx := context.Background()
	f, err := New(testHeader(t), testRing())
	if err != nil {
		t.Fatal(err)
	}
	rk := NewRecoveryKey()
	if _, err := f.AddProtector(ctx, "both", testPassword("pw"), Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		factors []Factor
		want    error
	}{
		{"password alone", []Factor{testPassword("pw")}, ErrNoProtector},
		{"recovery key alone", []Factor{Recovery(rk)}, ErrNoProtector},
		{"wrong password with the recovery key", []Factor{testPassword("px"), Recovery(rk)}, ErrWrongPassword},
		{"both", []Factor{Recovery(rk), testPassword("pw")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := Parse(b)
			if err := g.Open(ctx, tc.factors...); !errors.Is(err, tc.want) {
				t.Errorf("Open = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestProtectorEdits(t *testing.T) {
	ctx := context.Background()
	b, rk := newTestFile(t)
	f, _ := Parse(b)
	if _, err := f.AddProtector(ctx, "x", testPassword("a")); err == nil {
		t.Errorf("AddProtector on a closed key file succeeded")
	}
	if err := f.Open(ctx, Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	if err := f.RemoveProtector(0); err != nil {
		t.Fatalf("RemoveProtector(0): %v", err)
	}
	if err := f.RemoveProtector(0); err == nil {
		t.Errorf("RemoveProtector removed the last protector")
	}
	if _, err := f.AddProtector(ctx, "new", testPassword("new password")); err != nil {
		t.Fatal(err)
	}
	b2, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	g, _ := Parse(b2)
	if got := g.Protectors(); len(got) != 2 || got[0].Label != "recovery" || got[1].Factors[0] != FactorPassword {
		t.Errorf("Protectors() = %+v, want recovery then password", got)
	}
	if err := g.Open(ctx, testPassword("correct horse")); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("Open with the removed password = %v, want ErrWrongPassword", err)
	}
	if err := g.Open(ctx, testPassword("new password")); err != nil {
		t.Errorf("Open with the new password: %v", err)
	}
}

func TestNewRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Header, *Keyring)
		want string
	}{
		{"provisioning with a user", func(h *Header, r *Keyring) { h.Kind = KindProvisioning }, "no user"},
		{"bad SID", func(h *Header, r *Keyring) { h.SID = "S-1-x" }, "not a SID"},
		{"no FDE secret", func(h *Header, r *Keyring) { r.FDE = nil }, "FDE secret"},
		{"bad server key", func(h *Header, r *Keyring) { h.Server.PublicKey = []byte{1, 2, 3} }, "SubjectPublicKeyInfo"},
		{"bad server URL", func(h *Header, r *Keyring) { h.Server.URL = "ftp://x" }, "not an http"},
		{"zero device", func(h *Header, r *Keyring) { h.DeviceID = ID{} }, "device ID"},
		{"bad group SID", func(h *Header, r *Keyring) { r.Groups[0].SID = "Finance" }, "not a SID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, r := testHeader(t), testRing()
			tc.edit(&h, r)
			if _, err := New(h, r); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error about %q", err, tc.want)
			}
		})
	}
}

// fixChecksum recomputes a file's checksum after an edit, so that a test
// reaches the checks behind it.
func fixChecksum(b []byte) []byte {
	b = bytes.Clone(b)
	if len(b) >= checksumSize {
		sum := sha256.Sum256(b[:len(b)-checksumSize])
		copy(b[len(b)-checksumSize:], sum[:])
	}
	return b
}

func TestParseBadInput(t *testing.T) {
	good, _ := newTestFile(t)
	hdrLen := int(good[10])<<24 | int(good[11])<<16 | int(good[12])<<8 | int(good[13])
	protOff := 14 + hdrLen + 1 // the first protector's length field

	for _, tc := range []struct {
		name string
		b    []byte
		want error
		text string
	}{
		{"empty", nil, ErrFormat, "not a PBN key file"},
		{"not a key file", []byte("hello, world, this is text"), ErrFormat, "not a PBN key file"},
		{"unknown version", fixChecksum(append(append([]byte(magic), 0, 2), good[10:]...)), ErrFormat, "unsupported format version 2"},
		{"truncated", good[:len(good)-40], ErrDamaged, "truncated"},
		{"truncated header", good[:20], ErrDamaged, "truncated"},
		{"flipped bit", flip(good, 100), ErrDamaged, "checksum"},
		{"trailing bytes", fixChecksum(append(bytes.Clone(good), make([]byte, 8)...)), ErrFormat, "after the keyring"},
		{"oversized header", fixChecksum(setUint32(good, 10, maxHeader+1)), ErrFormat, "more than the limit"},
		{"oversized file", make([]byte, maxFileSize+1), ErrFormat, "more than the limit"},
		{"unknown protector", fixChecksum(unknownFactor(t, good, protOff)), ErrFormat, "unknown factor type 9"},
		{"no protectors", fixChecksum(setByte(good, protOff-1, 0)), ErrFormat, "0 protectors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(tc.b)
			if f != nil || !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Parse = %v, %v; want nil and %v mentioning %q", f, err, tc.want, tc.text)
			}
		})
	}
}

// Every truncation of a file is refused, and says it is truncated or
// damaged: never a panic, never a partial result.
func TestParseEveryTruncation(t *testing.T) {
	good, _ := newTestFile(t)
	for n := range len(good) {
		if f, err := Parse(good[:n]); f != nil || err == nil {
			t.Fatalf("Parse(first %d bytes) = %v, %v; want an error", n, f, err)
		}
	}
}

// A change anywhere in the file, even with the checksum made to match, never
// opens: the keyring's AEAD covers every byte before it, and each wrapped
// data key its protector. This does not prove the AEAD itself sound; it
// proves no byte is left out of what it covers.
func TestEveryChangeDetected(t *testing.T) {
	ctx := context.Background()
	good, rk := newTestFile(t)
	for i := len(magic) + 2; i < len(good)-checksumSize; i++ {
		b := fixChecksum(flip(good, i))
		f, err := Parse(b)
		if err != nil {
			continue // refused by the parser: fine
		}
		if err := f.Open(ctx, Recovery(rk)); err == nil {
			t.Fatalf("a file with byte %d changed opened", i)
		}
	}
}

func TestFactorTypeString(t *testing.T) {
	for typ, want := range map[FactorType]string{FactorPassword: "password", FactorTPM: "TPM", 9: "factor type 9"} {
		if got := typ.String(); got != want {
			t.Errorf("FactorType(%d).String() = %q, want %q", typ, got, want)
		}
	}
}

// Nothing the package prints holds a secret.
func TestSecretsNotPrinted(t *testing.T) {
	ctx := context.Background()
	b, rk := newTestFile(t)
	f, _ := Parse(b)
	if err := f.Open(ctx, Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	ring := f.Keyring()
	out := fmt.Sprintf("%v %+v %#v %v %v", f, ring, ring.Groups, rk, f.Header())
	digits := rk.Digits()
	for _, s := range [][]byte{ring.FDE, ring.Enterprise, ring.Groups[0].Key, digits, f.dataKey} {
		if bytes.Contains([]byte(out), s) || strings.Contains(out, fmt.Sprintf("%x", []byte(s))) {
			t.Errorf("formatted key file leaks a secret: %s", out)
		}
	}
	f.Close()
	if f.Keyring() != nil || f.dataKey != nil {
		t.Errorf("Close left the keyring or data key")
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x04
	return b
}

func setByte(b []byte, i int, v byte) []byte {
	b = bytes.Clone(b)
	b[i] = v
	return b
}

func setUint32(b []byte, i int, v uint32) []byte {
	b = bytes.Clone(b)
	b[i], b[i+1], b[i+2], b[i+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return b
}

// unknownFactor turns the first factor of the protector whose length field
// is at off into factor type 9.
func unknownFactor(t *testing.T, b []byte, off int) []byte {
	t.Helper()
	p := b[off+4:]
	for len(p) >= 3 {
		n := int(p[1])<<8 | int(p[2])
		if p[0] == tagProtFactor {
			i := len(b) - len(p) + 3
			return setByte(b, i, 9)
		}
		p = p[3+n:]
	}
	t.Fatal("no factor field found")
	return nil
}
