package signin

import (
	"testing"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// BenchmarkSignIn measures alice's online sign-in (the directory, the key
// server, the TPM's unseal and the password's Argon2id at the floor
// parameters, with the real DC, key server and swtpm on loopback) and,
// beside it run for run, her offline sign-in as the baseline: the key file
// alone, which is what the online checks overlap with. The offline
// sign-ins run a minute apart on the device's clock, each after the last
// and after the contact the online ones record, so that the floor they
// record never refuses the next.
func BenchmarkSignIn(b *testing.B) {
	e := newEnv(b)
	p := store.DefaultPolicy("bench")
	p.OfflineLimit = 365 * 24 * time.Hour
	d := e.newDevice(b, p)
	ctx := testContext(b)
	var online, offline time.Duration
	day := time.Now()
	for b.Loop() {
		start := time.Now()
		res, err := d.SignIn(ctx, alice, secret.Bytes(password))
		if err != nil {
			b.Fatalf("SignIn(online) = %v", err)
		}
		online += time.Since(start)
		res.KeyFile.Close()

		day = day.Add(time.Minute)
		start = time.Now()
		res, err = at(d.offline, day).SignIn(ctx, alice, secret.Bytes(password))
		if err != nil {
			b.Fatalf("SignIn(offline) = %v", err)
		}
		offline += time.Since(start)
		res.KeyFile.Close()
	}
	n := float64(b.N)
	b.ReportMetric(online.Seconds()*1e3/n, "ms/signin")
	b.ReportMetric(offline.Seconds()*1e3/n, "baseline-ms/signin")
}
