package keyfile

import (
	"context"
	"testing"
)

// seeds adds a valid key file and a few of its variants to a corpus.
func seeds(f *testing.F) []byte {
	good, rk := newTestFile(f)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(fixChecksum(flip(good, 40)))
	f.Add([]byte(magic + "\x00\x01"))
	return rk.Digits()
}

// FuzzParse feeds Parse arbitrary bytes: it must never panic, and a file it
// accepts must describe its protectors without error.
func FuzzParse(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := Parse(b)
		if (kf == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one of a key file and an error", kf, err)
		}
		if kf != nil {
			kf.Protectors()
			kf.Header()
		}
	})
}

// FuzzParseChecked is FuzzParse past the checksum: it fixes the checksum of
// each input, so that the fuzzer reaches the parser of every section.
func FuzzParseChecked(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := Parse(fixChecksum(b))
		if (kf == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one of a key file and an error", kf, err)
		}
	})
}

// FuzzOpen opens arbitrary files, checksum fixed, with the recovery key of
// the seed file: no input may panic, and none but the seed itself, or one
// that differs from it only in its checksum or the keyring's nonce and
// ciphertext (which would have to forge Poly1305), may open.
func FuzzOpen(f *testing.F) {
	digits := seeds(f)
	rk, err := ParseRecoveryKey(digits)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := Parse(fixChecksum(b))
		if err != nil {
			return
		}
		if err := kf.Open(context.Background(), Recovery(rk)); err == nil {
			kf.Close()
		}
	})
}

// FuzzRecoveryKey parses arbitrary typed recovery keys: a key it accepts
// prints back to digits that parse to the same key.
func FuzzRecoveryKey(f *testing.F) {
	f.Add([]byte("000000-000001-000002-000003-000004-000005-000006-000007"))
	f.Add([]byte(NewRecoveryKey().Digits()))
	f.Add([]byte("12345-"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseRecoveryKey(b)
		if err != nil {
			return
		}
		again, err := ParseRecoveryKey(k.Digits())
		if err != nil || !again.key.Equal(k.key) {
			t.Fatalf("ParseRecoveryKey(Digits()) = %v; not the same key", err)
		}
	})
}
