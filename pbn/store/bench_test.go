package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
)

// BenchmarkAppend appends audit events from 64 goroutines at once, as
// the key server does under a fleet's unlocks, to an SQLite file.
func BenchmarkAppend(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "pbnd.db"),
		secret.Random(MasterKeySize), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	e := Event{Kind: "unlock", Device: "00112233445566778899aabbccddeeff", Actor: "device",
		Remote: "10.99.0.10:4242", Detail: map[string]string{"binding": "ffeeddccbbaa99887766554433221100"}}
	b.SetParallelism(32)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Append(context.Background(), e); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
}
