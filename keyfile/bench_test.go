package keyfile

import (
	"context"
	"testing"

	"github.com/pbn-project/pbn/pbn/secret"
)

// benchOpen opens a key file whose only protector has factor, with factor.
func benchOpen(b *testing.B, factor Factor) {
	ctx := context.Background()
	f, err := New(testHeader(b), testRing())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.AddProtector(ctx, "bench", factor); err != nil {
		b.Fatal(err)
	}
	enc, err := f.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		g, err := Parse(enc)
		if err != nil {
			b.Fatal(err)
		}
		if err := g.Open(ctx, factor); err != nil {
			b.Fatal(err)
		}
		g.Close()
	}
}

// BenchmarkOpenPassword opens with a password at the parameters that
// calibration chooses on this machine; the parameters are reported beside
// the time.
func BenchmarkOpenPassword(b *testing.B) {
	p := Calibrate(DefaultArgon2Target)
	benchOpen(b, PasswordWith(secret.Bytes("correct horse battery staple"), p))
	b.ReportMetric(float64(p.Time), "argon2-passes")
	b.ReportMetric(float64(p.Memory>>10), "argon2-MiB")
}

// BenchmarkOpenPasswordFloor opens with a password at the floor parameters:
// what a slow device pays at least.
func BenchmarkOpenPasswordFloor(b *testing.B) {
	benchOpen(b, PasswordWith(secret.Bytes("correct horse battery staple"), FloorArgon2))
}

// BenchmarkOpenRecovery opens with a recovery key.
func BenchmarkOpenRecovery(b *testing.B) {
	benchOpen(b, Recovery(NewRecoveryKey()))
}

// BenchmarkParse parses a key file with two protectors.
func BenchmarkParse(b *testing.B) {
	enc, _ := newTestFile(b)
	for b.Loop() {
		if _, err := Parse(enc); err != nil {
			b.Fatal(err)
		}
	}
}
