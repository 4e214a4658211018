package tang

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/loadgen"
	"github.com/pbn-project/pbn/internal/tangdtest"
)

// Load of the exchange benchmark: concurrent clients, and exchanges per
// server per benchmark iteration.
const (
	benchClients  = 8
	benchPerRound = 300
)

// BenchmarkTangExchangeP521 is one load generator driving Tang-protocol
// exchanges (POST /rec) on P-521, each on a fresh TCP connection, against
// the PBN handler and, in the same run, against Debian's tangd run as
// Debian runs it, one process per connection (socat's fork standing in
// for systemd's socket activation). Both serve the same key directory,
// made by tangd-keygen. It reports exchanges a second and the p50 and p99
// latency of each; tangd's are the baseline.
func BenchmarkTangExchangeP521(b *testing.B) {
	dir, pin := tangdKeys(b)
	tangdURL := tangdtest.Start(b, dir)
	h, srv := serve(b, mustLoad(b, dir))
	// The load comes from one address, where a fleet's comes from many.
	h.SetClientLimit(0, 0)

	pbn, tangd := newLoad(b, srv.URL, pin), newLoad(b, tangdURL, pin)
	for range b.N {
		pbn.run(b, benchPerRound)
		tangd.run(b, benchPerRound)
	}
	pbn.Report(b, "", "exchanges/s")
	tangd.Report(b, "baseline-", "exchanges/s")
}

// A load is the fresh-connection exchanges sent to one server and their
// latencies.
type load struct {
	addr    string
	request []byte
	// reply is the server's answer to request, checked once: every
	// exchange must get it again.
	reply []byte
	loadgen.Latencies
}

// newLoad prepares one /rec request to the server's P-521 exchange key
// and checks the server's answer to it, before any timing: a fleet's
// clients compute their requests and recover their keys on their own
// CPUs, so every exchange sends the request again and the load generator
// does no arithmetic of its own. The server still does all of its work
// each time: parsing, the point check and the scalar multiplication.
func newLoad(b *testing.B, base string, pin []byte) *load {
	b.Helper()
	keys, err := (&Client{}).Advertisement(testContext(b), base, pin)
	if err != nil {
		b.Fatal(err)
	}
	i := slices.IndexFunc(keys, func(k ExchangeKey) bool { return k.Curve == p521.name })
	if i < 0 {
		b.Fatalf("%s advertises no P-521 exchange key", base)
	}
	e, err := p521.ecdh.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	body := publicJWK(p521, e.PublicKey().Bytes(), algExchange).marshal()
	u, err := url.Parse(base)
	if err != nil {
		b.Fatal(err)
	}
	req := fmt.Sprintf("POST /rec/%s HTTP/1.1\r\nHost: %s\r\n"+
		"Content-Type: application/jwk+json\r\nContent-Length: %d\r\n"+
		"Connection: close\r\n\r\n%s", keys[i].ID, u.Host, len(body), body)
	l := &load{addr: u.Host, request: []byte(req)}
	if err := l.exchange(); err != nil {
		b.Fatal(err)
	}
	// The answer to e·G is d·(e·G) = e·S, S the advertised key.
	y, err := parsePointJWK(l.reply, p521)
	if err != nil {
		b.Fatal(err)
	}
	want, err := p521.mul(keys[i].Point, e.Bytes())
	if err != nil {
		b.Fatal(err)
	}
	if !bytes.Equal(y, want) {
		b.Fatalf("%s answered a wrong point", base)
	}
	return l
}

// run sends n exchanges from benchClients concurrent clients.
func (l *load) run(b *testing.B, n int) {
	b.Helper()
	clients := make([]func() error, benchClients)
	for i := range clients {
		clients[i] = l.exchange
	}
	l.Run(b, n, clients)
}

// exchange does one exchange on a fresh connection. The first answer
// becomes l.reply; the later ones must equal it.
func (l *load) exchange() error {
	start := time.Now()
	c, err := net.DialTimeout("tcp", l.addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(start.Add(30 * time.Second))
	if _, err := c.Write(l.request); err != nil {
		return err
	}
	// tangd reads requests until the client closes, so the reply ends at
	// its Content-Length, not at the end of the connection.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	reply, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if l.reply == nil && resp.StatusCode == http.StatusOK {
		l.reply = reply
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(reply, l.reply) {
		return fmt.Errorf("reply %s %.40q, want 200 with the checked JWK", resp.Status, reply)
	}
	return nil
}

// BenchmarkExchange measures the exchange primitive alone, Keys.Exchange:
// one scalar multiplication and the point check, without HTTP. PBN mode
// uses P-256, so the key server's benchmark can compare against it.
func BenchmarkExchange(b *testing.B) {
	_, ks := newKeyDir(b)
	for _, crv := range []*curve{p256, p521} {
		b.Run(crv.name, func(b *testing.B) {
			key, _ := ks.ExchangeKey(crv.name)
			e, err := crv.ecdh.GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			x := e.PublicKey().Bytes()
			for b.Loop() {
				if _, err := ks.Exchange(key.ID, x); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "exchanges/s")
		})
	}
}
