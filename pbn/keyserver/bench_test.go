package keyserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/loadgen"
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
// connection (ECDHE on P-256, as Transport makes them) with the device's client
// certificate, from one load generator in the same process. Every unlock
// is authenticated, checked against the device, binding and policy,
// recorded in the audit trail, and answered with one scalar
// multiplication. In the same run the same load generator drives Tang
// exchanges (POST /rec on P-521, Tang's default, each on a fresh TCP
// connection) against Debian's tangd run one process per connection: the
// baseline of DESIGN.md's budget, reported as baseline-unlocks/s. Both
// report p50 and p99 latency, connection set-up included. Clients send the
// same blinded point every time, and every answer must be the one checked
// before the timing, so the load generator does no exchange arithmetic of
// its own, as a fleet's clients do theirs on their own CPUs (it still does
// its half of every TLS handshake).
//
// A third load in the same run does the TLS handshake of an unlock and
// nothing else, reported as tls-only-handshakes/s: the ceiling of any
// unlock on a fresh mutually authenticated TLS connection with this
// machine's CPUs, which no work on the unlock's own path can pass.
func BenchmarkPBNUnlock(b *testing.B) {
	pbn, handshakes := pbnLoad(b)
	tangd := tangdLoad(b)
	for range b.N {
		pbn.Run(b, benchPerRound, pbn.clients)
		handshakes.Run(b, benchPerRound, handshakes.clients)
		tangd.Run(b, benchPerRound, tangd.clients)
	}
	pbn.Report(b, "", "unlocks/s")
	handshakes.Report(b, "tls-only-", "handshakes/s")
	tangd.Report(b, "baseline-", "unlocks/s")
}

// A load is a kind of request sent to one server, one function a client,
// and the latencies measured.
type load struct {
	clients []func() error
	loadgen.Latencies
}

// pbnLoad prepares the unlocks of the load generator. The client's own
// path (Client.Unlock) runs once and its answer is checked; the load then
// sends that request's bytes again on a fresh TLS connection each time,
// with the TLS configuration Client makes (the pinned server key, the
// device's certificate, P-256 ECDHE), so that the load generator spends
// its CPU on its half of the handshake, not on net/http's client. The
// second load does the same handshakes and sends nothing.
func pbnLoad(b *testing.B) (unlocks, handshakes *load) {
	ts := startServer(b, nil, nil)
	d := ts.enroll(b, "laptop-1", "laptops")
	e, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	x := e.PublicKey().Bytes()
	c, err := newClient(ts.url, ts.PublicKey(), d.key, unlockCurves, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	y, err := c.Unlock(ctx, d.binding, d.prov.ExchangeKey.ID, x)
	if err != nil {
		b.Fatal(err)
	}
	checkAnswer(b, e, d.prov.ExchangeKey.Point, y)

	body, err := json.Marshal(&unlockV1{v1: v1{wireV1}, Binding: hexID(d.binding),
		KID: d.prov.ExchangeKey.ID, X: x})
	if err != nil {
		b.Fatal(err)
	}
	host := c.base.Host
	req := []byte(fmt.Sprintf("POST /v1/unlock HTTP/1.1\r\nHost: %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n"+
		"Connection: close\r\n\r\n%s", host, len(body), body))
	cfg := c.hc.Transport.(*http.Transport).TLSClientConfig
	unlock := func() ([]byte, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", host, cfg)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := conn.Write(req); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return nil, err
		}
		reply, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("the server answered %s: %.80q", resp.Status, reply)
		}
		return reply, err
	}
	want, err := unlock()
	if err != nil {
		b.Fatal(err)
	}
	var ans unlockedV1
	if err := decodeV1(want, &ans); err != nil || !bytes.Equal(ans.Y, y) {
		b.Fatalf("the server answered %.80q, not the checked point (%v)", want, err)
	}
	handshake := func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", host, cfg)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	unlocks, handshakes = &load{}, &load{}
	for range benchClients {
		unlocks.clients = append(unlocks.clients, func() error {
			reply, err := unlock()
			if err == nil && !bytes.Equal(reply, want) {
				err = fmt.Errorf("the server answered %.80q, not the checked answer", reply)
			}
			return err
		})
		handshakes.clients = append(handshakes.clients, handshake)
	}
	return unlocks, handshakes
}

// checkAnswer checks that y, the server's answer to the point e·G, is
// d·(e·G) = e·S, S the server's exchange key, by its x coordinate.
func checkAnswer(b *testing.B, e *ecdh.PrivateKey, s, y []byte) {
	b.Helper()
	pub, err := e.Curve().NewPublicKey(s)
	if err != nil {
		b.Fatal(err)
	}
	x, err := e.ECDH(pub)
	if err != nil {
		b.Fatal(err)
	}
	if len(y) != 1+2*len(x) || !bytes.Equal(y[1:1+len(x)], x) {
		b.Fatal("the server answered a wrong point")
	}
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
	var want []byte
	exchange := func() ([]byte, error) {
		resp, err := hc.Post(url+"/rec/"+key.ID, "application/jwk+json", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		reply, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("tangd answered %s", resp.Status)
		}
		return reply, err
	}
	l := &load{}
	for range benchClients {
		l.clients = append(l.clients, func() error {
			reply, err := exchange()
			if err == nil && !bytes.Equal(reply, want) {
				err = fmt.Errorf("tangd answered %.40q, not the checked answer", reply)
			}
			return err
		})
	}
	want, err = exchange()
	if err != nil {
		b.Fatal(err)
	}
	checkAnswer(b, e, key.Point, tangdPoint(b, want))
	return l
}

// tangdPoint returns the point of tangd's answer, a P-521 JWK.
func tangdPoint(b *testing.B, reply []byte) []byte {
	b.Helper()
	var jwk struct{ X, Y string }
	if err := json.Unmarshal(reply, &jwk); err != nil {
		b.Fatalf("tangd's answer %.40q: %v", reply, err)
	}
	x, errX := base64.RawURLEncoding.DecodeString(jwk.X)
	y, errY := base64.RawURLEncoding.DecodeString(jwk.Y)
	if errX != nil || errY != nil {
		b.Fatalf("tangd's answer %.40q: coordinates not base64url", reply)
	}
	return slices.Concat([]byte{4}, x, y)
}
