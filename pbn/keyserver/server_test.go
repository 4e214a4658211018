package keyserver

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// testServer is a key server on loopback with its own SQLite store.
type testServer struct {
	*Server
	store *store.Store
	url   string
	admin *Client
	stop  func() error
}

type serverOpt func(*Config)

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openStore(t testing.TB, dsn string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), dsn, secret.Random(store.MasterKeySize), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// startServer starts a key server on st (a fresh SQLite store when nil)
// with serverKey (a fresh key when nil).
func startServer(t testing.TB, st *store.Store, serverKey crypto.Signer, opts ...serverOpt) *testServer {
	t.Helper()
	if st == nil {
		st = openStore(t, filepath.Join(t.TempDir(), "pbnd.db"))
	}
	if serverKey == nil {
		serverKey = newKey(t)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{store: st, url: "https://" + ln.Addr().String()}
	cfg := Config{Store: st, Key: serverKey, URL: ts.url, Directory: testDirectory,
		Exchange: tangKeys(t)}
	for _, o := range opts {
		o(&cfg)
	}
	if ts.Server, err = New(cfg); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	ts.stop = func() error {
		once.Do(func() { cancel(); serveErr = <-done })
		return serveErr
	}
	t.Cleanup(func() { ts.stop() })

	adminKey := newKey(t)
	spki, _ := PublicKey(adminKey)
	if err := st.AddAdmin(context.Background(), "test-admin", spki); err != nil {
		t.Fatal(err)
	}
	ts.admin = ts.client(t, adminKey)
	return ts
}

// tangKeys makes a fresh Tang key directory, P-256 exchange key included.
func tangKeys(t testing.TB) *tang.Keys {
	t.Helper()
	dir := t.TempDir()
	if err := tang.GenerateKeys(dir); err != nil {
		t.Fatal(err)
	}
	ks, err := tang.LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// client returns a client of ts that proves itself with key.
func (ts *testServer) client(t testing.TB, key crypto.Signer) *Client {
	t.Helper()
	c, err := NewClient(ts.url, ts.PublicKey(), key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// testDevice is an enrolled device with its client.
type testDevice struct {
	id, binding keyfile.ID
	key         crypto.Signer
	c           *Client
	prov        *Provisioning
}

func (ts *testServer) enroll(t testing.TB, host, group string) *testDevice {
	t.Helper()
	d := &testDevice{id: keyfile.NewID(), binding: keyfile.NewID(), key: newKey(t)}
	spki, _ := PublicKey(d.key)
	var err error
	d.prov, err = ts.admin.Enroll(context.Background(), store.Device{ID: d.id, Hostname: host,
		Group: group, EK: []byte("ek"), SRK: []byte("srk"), Key: spki}, d.binding)
	if err != nil {
		t.Fatalf("Enroll(%s) = %v", host, err)
	}
	d.c = ts.client(t, d.key)
	return d
}

// events returns the kinds of the audit trail's events, in order.
func (ts *testServer) events(t testing.TB) []store.Event {
	t.Helper()
	var es []store.Event
	err := ts.admin.Audit(context.Background(), AuditQuery{}, func(e store.Event) error {
		es = append(es, e)
		return nil
	})
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return es
}

func kinds(es []store.Event) []string {
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Kind)
	}
	return ks
}

func TestEnroll(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	d := ts.enroll(t, "laptop-1", "laptops")

	if d.prov.Server.URL != ts.url || !bytes.Equal(d.prov.Server.PublicKey, ts.PublicKey()) {
		t.Errorf("Enroll: server %+v, want %s with the server's key", d.prov.Server, ts.url)
	}
	if d.prov.Policy.Group != "laptops" || !d.prov.Policy.Provisioning {
		t.Errorf("Enroll: policy %+v, want the default of laptops", d.prov.Policy)
	}
	list, err := ts.admin.Devices(ctx)
	if err != nil || len(list) != 1 || list[0].ID != d.id || list[0].State != store.DeviceActive {
		t.Errorf("Devices() = %+v, %v, want laptop-1, active", list, err)
	}

	// The same provisioning key file cannot be bound twice.
	spki, _ := PublicKey(newKey(t))
	_, err = ts.admin.Enroll(ctx, store.Device{ID: keyfile.NewID(), Hostname: "other",
		Group: "laptops", Key: spki}, d.binding)
	if err == nil {
		t.Errorf("Enroll(binding of laptop-1) = nil, want an error")
	}

	// A device may not enroll devices.
	if _, err := d.c.Enroll(ctx, store.Device{ID: keyfile.NewID(), Hostname: "x", Group: "g",
		Key: spki}, keyfile.NewID()); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Enroll by a device = %v, want ErrUnknownKey", err)
	}
	if got := kinds(ts.events(t)); len(got) != 1 || got[0] != "enroll" {
		t.Errorf("audit trail %v, want [enroll]", got)
	}
}

func TestPolicy(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	p := store.DefaultPolicy("kiosks")
	p.UsersPerDevice, p.OfflineLimit, p.Autoboot = 5, 2*time.Hour, false
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatalf("SetPolicy = %v", err)
	}
	got, err := ts.admin.Policy(ctx, "kiosks")
	if err != nil || got.UsersPerDevice != 5 || got.OfflineLimit != 2*time.Hour || got.Autoboot {
		t.Errorf("Policy = %+v, %v, want %+v", got, err, p)
	}
	p.PCRs = nil
	if err := ts.admin.SetPolicy(ctx, p); err == nil {
		t.Errorf("SetPolicy(no PCRs) = nil, want an error")
	}
	if got := kinds(ts.events(t)); len(got) != 1 || got[0] != "policy" {
		t.Errorf("audit trail %v, want [policy]", got)
	}
}

// TestServerNotPinned checks that a client refuses a server whose key is
// not the pinned one. It does not prove anything about a server that
// holds the pinned key but misbehaves.
func TestServerNotPinned(t *testing.T) {
	ts := startServer(t, nil, nil)
	other, _ := PublicKey(newKey(t))
	c, err := NewClient(ts.url, other, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Healthy(t.Context()); !errors.Is(err, ErrServerNotPinned) {
		t.Errorf("Healthy with a wrong pin = %v, want ErrServerNotPinned", err)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	ts := startServer(t, nil, nil)
	if err := ts.admin.Healthy(t.Context()); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	mfs, err := ts.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, mf := range mfs {
		if mf.GetName() == "pbnd_requests_total" {
			for _, m := range mf.GetMetric() {
				seen = seen || m.GetCounter().GetValue() >= 1
			}
		}
	}
	if !seen {
		t.Errorf("pbnd_requests_total not counted after a request")
	}
}

// TestMaxConnections holds the only connection slot with a client that
// never starts its TLS handshake, and checks that another client is not
// served until that connection is gone.
func TestMaxConnections(t *testing.T) {
	ts := startServer(t, nil, nil, func(c *Config) {
		c.MaxConnections = 1
		c.ReadHeaderTimeout = time.Minute // the stalled client keeps its slot
	})
	stalled, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if !waitFor(5*time.Second, func() bool { return ts.openConnections() == 1 }) {
		t.Fatalf("open connections = %d, want 1 for the stalled client", ts.openConnections())
	}

	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if err := ts.admin.Healthy(ctx); err == nil {
		t.Fatal("Healthy answered while the only slot was held")
	}
	stalled.Close()
	ts.admin.CloseIdleConnections()
	if err := ts.admin.Healthy(t.Context()); err != nil {
		t.Fatalf("Healthy after the stalled client left = %v", err)
	}
	mfs, err := ts.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "pbnd_connections_open" {
			if got := mf.GetMetric()[0].GetGauge().GetValue(); got != 1 {
				t.Errorf("pbnd_connections_open = %v, want 1 (the admin's kept-alive connection)", got)
			}
			return
		}
	}
	t.Error("no pbnd_connections_open metric")
}

// waitFor polls cond every 10 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
