// Package kstest starts a real key server (package pbn/keyserver) on
// loopback for tests: SQLite in a temporary directory, fresh Tang keys,
// a first administrator, and the directory the test gives.
package kstest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// Server is a key server running until the test ends or Stop is called.
type Server struct {
	// URL is the TLS API's address and Pin the server's key, as key files
	// pin it (DER SubjectPublicKeyInfo).
	URL string
	Pin []byte
	// Store is the server's database.
	Store *store.Store
	// Admin is the first administrator's client.
	Admin *keyserver.Client

	stop func()
}

// Start starts a key server that checks users against dir (nil: claims
// and sign-ins are refused).
func Start(t testing.TB, dir keyserver.Directory) *Server {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "pbnd.db"), secret.Random(store.MasterKeySize), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tangDir := t.TempDir()
	if err := tang.GenerateKeys(tangDir); err != nil {
		t.Fatal(err)
	}
	keys, err := tang.LoadKeys(tangDir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{URL: "https://" + ln.Addr().String(), Store: st}
	srv, err := keyserver.New(keyserver.Config{Store: st, Key: NewKey(t), URL: s.URL, Directory: dir, Exchange: keys})
	if err != nil {
		t.Fatal(err)
	}
	s.Pin = srv.PublicKey()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	var once sync.Once
	s.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(s.stop)

	adminKey := NewKey(t)
	spki, err := keyserver.PublicKey(adminKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddAdmin(ctx, "test-admin", spki); err != nil {
		t.Fatal(err)
	}
	s.Admin = s.Client(t, adminKey)
	return s
}

// Stop stops the server, as a server that went down.
func (s *Server) Stop() { s.stop() }

// Client returns a client of the server that authenticates with key,
// closing its idle connections when the test ends.
func (s *Server) Client(t testing.TB, key crypto.Signer) *keyserver.Client {
	t.Helper()
	c, err := keyserver.NewClient(s.URL, s.Pin, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// NewKey returns a new ECDSA P-256 key: a device's or an administrator's,
// as a TPM's device key would be.
func NewKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
