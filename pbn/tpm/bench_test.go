package tpm

import (
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/pbn/secret"
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
// TPM value, the SRK persistent. Its peer, the baseline, unseals on a TPM
// without the persistent SRK, which makes the SRK each time; the two
// alternate in one loop, so that both see the same load. The TPM commands
// per unseal are the figure that matters on a discrete TPM, where each takes
// tens to hundreds of milliseconds; swtpm's times are only a floor.
func BenchmarkUnseal(b *testing.B) {
	persistent := newUnsealer(b, true)
	transient := newUnsealer(b, false)
	for b.Loop() {
		persistent.unseal(b)
		transient.unseal(b)
	}
	n := float64(b.N)
	b.ReportMetric(persistent.took.Seconds()*1e3/n, "ms/unseal")
	b.ReportMetric(transient.took.Seconds()*1e3/n, "baseline-ms/unseal")
	b.ReportMetric(float64(persistent.c.n)/n, "commands/unseal")
	b.ReportMetric(float64(transient.c.n)/n, "baseline-commands/unseal")
	b.ReportMetric(float64(persistent.c.retries)/n, "retries/unseal")
}

// An unsealer unseals one sealed secret again and again.
type unsealer struct {
	c    *counter
	s    *Sealed
	auth secret.Bytes
	took time.Duration
}

// newUnsealer seals a secret on a TPM of its own, and then, unless
// persistent, removes the persistent SRK that Seal made.
func newUnsealer(b *testing.B, persistent bool) *unsealer {
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
	return &unsealer{c: &counter{tr: tp.tr}, s: s, auth: auth}
}

func (u *unsealer) unseal(b *testing.B) {
	start := time.Now()
	tp := New(u.c, nil)
	if _, err := tp.Unseal(testContext(b), u.s, u.auth); err != nil {
		b.Fatalf("Unseal = %v", err)
	}
	tp.Close()
	u.took += time.Since(start)
}
