package keyserver

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// Load of the unlock benchmark: concurrent clients, and unlocks per
// benchmark iteration.
const (
	benchClients  = 8
	benchPerRound = 400
)

// BenchmarkPBNUnlock drives PBN-mode unlocks (POST /v1/unlock on P-256)
// against the key server with its SQLite store, each on a fresh TLS 1.3
// connection (X25519, as Transport makes them) with the device's client
// certificate, from one load generator
// in the same process. Every unlock is authenticated, checked against the
// device, binding and policy, recorded in the audit trail, and answered
// with one scalar multiplication. It reports unlocks a second and the p50
// and p99 latency, connection set-up included. The client sends the same
// blinded point every time, so the load generator does no exchange
// arithmetic of its own (it still does its half of every handshake).
func BenchmarkPBNUnlock(b *testing.B) {
	ts := startServer(b, nil, nil)
	d := ts.enroll(b, "laptop-1", "laptops")
	e, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	x := e.PublicKey().Bytes()

	clients := make([]*Client, benchClients)
	for i := range clients {
		c, err := newClient(ts.url, ts.PublicKey(), d.key, unlockCurves)
		if err != nil {
			b.Fatal(err)
		}
		c.hc.Transport.(*http.Transport).DisableKeepAlives = true
		clients[i] = c
	}
	var lat []time.Duration
	var elapsed time.Duration
	for range b.N {
		l, el := unlockRound(b, clients, d, x)
		lat, elapsed = append(lat, l...), elapsed+el
	}

	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "unlocks/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// unlockRound runs benchPerRound unlocks from the clients at once and
// returns their latencies and the time they took together.
func unlockRound(b *testing.B, clients []*Client, d *testDevice, x []byte) ([]time.Duration, time.Duration) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		lat  []time.Duration
		errs []error
	)
	next := make(chan struct{}, benchPerRound)
	for range benchPerRound {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for _, c := range clients {
		wg.Go(func() {
			for range next {
				t := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.Unlock(ctx, d.binding, d.prov.ExchangeKey.ID, x)
				cancel()
				mu.Lock()
				lat = append(lat, time.Since(t))
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(errs) > 0 {
		b.Fatalf("%d of %d unlocks failed, the first: %v", len(errs), benchPerRound, errs[0])
	}
	return lat, elapsed
}
