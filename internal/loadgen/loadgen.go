// Package loadgen is the load generator of the benchmarks that compare a
// PBN server with a peer: it sends a fixed number of requests from several
// concurrent clients and reports the rate and the latency percentiles as
// benchmark metrics, a peer's under the "baseline-" prefix that
// internal/benchjson folds into its figure.
package loadgen

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Latencies collects the requests' latencies over one or more runs.
type Latencies struct {
	lat     []time.Duration
	elapsed time.Duration
}

// Run sends n requests, each a call of one of clients, all clients at once,
// and fails b if any request fails.
func (l *Latencies) Run(b testing.TB, n int, clients []func() error) {
	b.Helper()
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
	for _, do := range clients {
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

// Report reports the requests per second as unit, and the p50 and p99
// latencies in milliseconds, each metric's name starting with prefix.
func (l *Latencies) Report(b *testing.B, prefix, unit string) {
	slices.Sort(l.lat)
	pct := func(p float64) float64 {
		return float64(l.lat[int(p*float64(len(l.lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(l.lat))/l.elapsed.Seconds(), prefix+unit)
	b.ReportMetric(pct(0.50), prefix+"p50-ms")
	b.ReportMetric(pct(0.99), prefix+"p99-ms")
}
