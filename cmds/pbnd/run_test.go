package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// pbnd is a running pbnd.
type pbnd struct {
	tlsAddr, tangAddr, metricsAddr string
	stop                           func() error
}

var listening = regexp.MustCompile(`msg="(TLS API|Tang|metrics) listening" addr=(\S+)`)

// start runs pbnd with args on loopback ports and waits until it listens.
func start(t *testing.T, args ...string) *pbnd {
	t.Helper()
	args = append(args, "--listen", "127.0.0.1:0", "--tang-listen", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, nil, io.Discard, pw)
		pw.Close()
		done <- err
	}()
	p := &pbnd{}
	var stopped bool
	p.stop = func() error { stopped = true; cancel(); return <-done }
	t.Cleanup(func() {
		if !stopped {
			p.stop()
		}
	})

	sc := bufio.NewScanner(pr)
	for (p.tlsAddr == "" || p.tangAddr == "" || p.metricsAddr == "") && sc.Scan() {
		m := listening.FindStringSubmatch(sc.Text())
		switch {
		case m == nil:
		case m[1] == "TLS API":
			p.tlsAddr = m[2]
		case m[1] == "Tang":
			p.tangAddr = m[2]
		default:
			p.metricsAddr = m[2]
		}
	}
	if p.metricsAddr == "" {
		t.Fatalf("pbnd did not start: %v", <-done)
	}
	go io.Copy(io.Discard, pr)
	return p
}

// TestRun starts pbnd on an empty data directory, uses its administrator
// file, its Tang listener and its metrics, stops it, and starts it again
// on the same directory with the same keys.
func TestRun(t *testing.T) {
	data := t.TempDir()
	p := start(t, "--data", data, "--url", "https://127.0.0.1:1")
	admin, err := keyserver.ReadAdminFile(filepath.Join(data, "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	c := adminClient(t, admin, p)
	if err := c.Healthy(t.Context()); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	id := keyfile.NewID()
	k, _ := keyserver.NewKey()
	spki, _ := keyserver.PublicKey(k)
	prov, err := c.Enroll(t.Context(), store.Device{ID: id, Hostname: "laptop-1", Group: "laptops",
		Key: spki}, keyfile.NewID())
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	if prov.ExchangeKey.Curve != keyserver.PBNCurve || !bytes.Equal(prov.Server.PublicKey, admin.ServerKey) {
		t.Errorf("Enroll = %+v, want a P-256 exchange key and the pinned server key", prov)
	}

	for _, u := range []string{"http://" + p.tangAddr + "/adv", "http://" + p.metricsAddr + "/metrics"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", u, resp.StatusCode)
		}
	}
	if err := p.stop(); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}

	p = start(t, "--data", data, "--url", "https://127.0.0.1:1")
	c = adminClient(t, admin, p)
	ds, err := c.Devices(t.Context())
	if err != nil || len(ds) != 1 || ds[0].ID != id {
		t.Errorf("Devices after a restart = %+v, %v, want laptop-1", ds, err)
	}
}

// adminClient is the administrator's client of p: the administrator file
// names the --url, which the test does not listen on.
func adminClient(t *testing.T, a *keyserver.AdminFile, p *pbnd) *keyserver.Client {
	t.Helper()
	c, err := keyserver.NewClient("https://"+p.tlsAddr, a.ServerKey, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestUsage(t *testing.T) {
	tests := [][]string{
		{},
		{"--data"},
		{"--data", t.TempDir(), "extra"},
		{"--data", t.TempDir(), "--log-level", "loud"},
		{"--unknown"},
	}
	for _, args := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := run(ctx, args, nil, io.Discard, io.Discard)
		cancel()
		if got := exitCode(err); got != exitUsage {
			t.Errorf("run(%q) = %v, exit code %d, want %d", args, err, got, exitUsage)
		}
	}
}

func TestADFlags(t *testing.T) {
	err := run(t.Context(), []string{"--data", t.TempDir(), "--listen", "127.0.0.1:0",
		"--ad-domain", "corp.example.test"}, nil, io.Discard, io.Discard)
	if err == nil || exitCode(err) != exitError || !strings.Contains(err.Error(), "--ad-ca") {
		t.Errorf("run(--ad-domain without --ad-ca) = %v, want an error naming --ad-ca", err)
	}
}
