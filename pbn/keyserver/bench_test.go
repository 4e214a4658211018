package keyserver

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/tangdtest"
	"github.com/pbn-project/pbn/pbn/tang"
)

// Load of the unlock benchmark: concurrent clients, and requests per
// server per benchmark iteration.
const (
	benchClients  = 8
	benchPerRound = 400
)

// BenchmarkPBNUnlock drives PBN-mode unlocks (POST /v1/unlock on P-256)
// against the key server with its SQLite store, each on a fresh TLS 1.3
// connection (X25519, as Transport makes them) with the device's client
// certificate, from one load generator in the same process. Every unlock
// is authenticated, checked against the device, binding and policy,
// recorded in the audit trail, and answered with one scalar
// multiplication. In the same run the same load generator drives Tang
// exchanges (POST /rec on P-521, Tang's default, each on a fresh TCP
// connection) against Debian's tangd run one process per connection: the
// baseline of DESIGN.md's budget, reported as baseline-unlocks/s. Both
// report p50 and p99 latency, connection set-up included. Clients send the
// same blinded point every time, so the load generator does no exchange
// arithmetic of its own (it still does its half of every TLS handshake).
func BenchmarkPBNUnlock(b *testing.B) {
	pbn := pbnLoad(b)
	tangd := tangdLoad(b)
	for range b.N {
		pbn.run(b, benchPerRound)
		tangd.run(b, benchPerRound)
	}
	pbn.report(b, "")
	tangd.report(b, "baseline-")
}

// A load is a kind of request sent to one server, one function a client,
// and the latencies measured.
type load struct {
	clients []func() error
	lat     []time.Duration
	elapsed time.Duration
}

func pbnLoad(b *testing.B) *load {
	ts := startServer(b, nil, nil)
	d := ts.enroll(b, "laptop-1", "laptops")
	e, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	x := e.PublicKey().Bytes()
	l := &load{}
	for range benchClients {
		c, err := newClient(ts.url, ts.PublicKey(), d.key, unlockCurves)
		if err != nil {
			b.Fatal(err)
		}
		c.hc.Transport.(*http.Transport).DisableKeepAlives = true
		l.clients = append(l.clients, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := c.Unlock(ctx, d.binding, d.prov.ExchangeKey.ID, x)
			return err
		})
	}
	return l
}

func tangdLoad(b *testing.B) *load {
	dir := tangdtest.Keys(b)
	url := tangdtest.Start(b, dir)
	ks, err := tang.LoadKeys(dir)
	if err != nil {
		b.Fatal(err)
	}
	key, ok := ks.ExchangeKey("P-521")
	if !ok {
		b.Fatal("tangd-keygen made no P-521 exchange key")
	}
	e, err := ecdh.P521().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	body := tang.ExchangeKey{Curve: "P-521", Point: e.PublicKey().Bytes()}.JWK()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	l := &load{}
	for range benchClients {
		l.clients = append(l.clients, func() error {
			resp, err := hc.Post(url+"/rec/"+key.ID, "application/jwk+json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("tangd answered %s", resp.Status)
			}
			return nil
		})
	}
	return l
}

// run sends n requests from the clients at once.
func (l *load) run(b *testing.B, n int) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for _, do := range l.clients {
		wg.Go(func() {
			for range next {
				t := time.Now()
				err := do()
				mu.Lock()
				l.lat = append(l.lat, time.Since(t))
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	l.elapsed += time.Since(start)
	if len(errs) > 0 {
		b.Fatalf("%d of %d requests failed, the first: %v", len(errs), n, errs[0])
	}
}

func (l *load) report(b *testing.B, prefix string) {
	slices.Sort(l.lat)
	pct := func(p float64) float64 {
		return float64(l.lat[int(p*float64(len(l.lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(l.lat))/l.elapsed.Seconds(), prefix+"unlocks/s")
	b.ReportMetric(pct(0.50), prefix+"p50-ms")
	b.ReportMetric(pct(0.99), prefix+"p99-ms")
}
