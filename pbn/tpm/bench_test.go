package tpm

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/pbn-project/pbn/internal/swtpm"
)

// BenchmarkSeal seals a secret to DefaultPCRs with a fresh TPM value each
// time, so that every seal makes the SRK as enrolment does.
func BenchmarkSeal(b *testing.B) {
	tp := openSim(b, swtpm.Start(b))
	_, auth, data := seal(b, tp, DefaultPCRs)
	c := &counter{tr: tp.tr}
	b.ResetTimer()
	for b.Loop() {
		fresh := New(c, nil)
		if _, err := fresh.Seal(testContext(b), DefaultPCRs, auth, data); err != nil {
			b.Fatalf("Seal = %v", err)
		}
		fresh.Close()
	}
	b.ReportMetric(float64(c.n)/float64(b.N), "commands/seal")
}

// BenchmarkUnseal unseals as the pre-boot agent does once a boot: a fresh
// TPM value, the SRK persistent. The TPM commands per unseal are the figure
// that matters on a discrete TPM, where each takes tens to hundreds of
// milliseconds; swtpm's times are only a floor.
func BenchmarkUnseal(b *testing.B) {
	benchUnseal(b, true)
}

// BenchmarkUnsealTransientSRK unseals on a TPM without the persistent SRK,
// which costs a CreatePrimary more each time.
func BenchmarkUnsealTransientSRK(b *testing.B) {
	benchUnseal(b, false)
}

func benchUnseal(b *testing.B, persistent bool) {
	tp := openSim(b, swtpm.Start(b))
	s, auth, _ := seal(b, tp, DefaultPCRs)
	if !persistent {
		_, err := tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     tpm2.NamedHandle{Handle: srkHandle, Name: tp.persistent.name},
			PersistentHandle: srkHandle,
		}.Execute(tp.tr)
		if err != nil {
			b.Fatalf("EvictControl = %v", err)
		}
	}
	c := &counter{tr: tp.tr}
	b.ResetTimer()
	for b.Loop() {
		fresh := New(c, nil)
		if _, err := fresh.Unseal(testContext(b), s, auth); err != nil {
			b.Fatalf("Unseal = %v", err)
		}
		fresh.Close()
	}
	b.ReportMetric(float64(c.n)/float64(b.N), "commands/unseal")
	b.ReportMetric(float64(c.retries)/float64(b.N), "retries/unseal")
}
