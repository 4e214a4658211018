// Package keyserver is the enterprise key server's TLS API and its Go
// client: device enrollment, network unlock in PBN mode, the secure-moment
// claim, the deployed stage's sign-in, binding revocation, and the administrator's devices, recovery
// keys, audit trail and policies.
//
// Both sides authenticate with keys, not certificate authorities, because
// the pre-boot clock is not trusted: the client pins the server's key
// (keyfile.Server.PublicKey), and the server knows a device or an
// administrator by the key of its TLS client certificate. The wire format
// is versioned JSON, parsed strictly (wire_v1.go).
//
// # Endpoints
//
// Anyone: GET /healthz; GET /v1/exchange-key?curve=P-256 (the key new
// bindings use). A device (its key enrolled, the device active):
// POST /v1/unlock (PBN-mode network unlock), POST /v1/claim (the secure
// moment), POST /v1/revoke (one of its own bindings), POST /v1/signin (the
// deployed stage's sign-in). An administrator of any role (store.RoleEnroll
// included, the credential of the imaging image): POST /v1/enroll. An
// administrator of store.RoleAdmin: GET /v1/admin/devices, GET /v1/admin/devices/{id},
// POST /v1/admin/devices/{id}/state,
// POST /v1/admin/devices/{id}/owners/remove, POST /v1/admin/revoke,
// POST /v1/admin/recovery, GET /v1/admin/audit (JSON lines),
// GET and PUT /v1/admin/policy/{group}, GET and POST /v1/admin/admins
// (the administrators; a new one), POST /v1/admin/admins/remove. Every change, unlock, claim and recovery read is in the
// audit trail before the answer leaves, and so is every call an
// administrator's role refuses.
package keyserver

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// Defaults of Config's timeouts.
const (
	// DefaultReadHeaderTimeout bounds the TLS handshake and the request
	// line and headers: a slow client is cut off after it.
	DefaultReadHeaderTimeout = 5 * time.Second
	// DefaultReadTimeout bounds reading a whole request.
	DefaultReadTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds handling a request and writing the
	// answer; a claim waits for the directory within it.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultIdleTimeout closes a kept-alive connection left idle.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultLoginTimeout bounds the directory's check of a claim.
	DefaultLoginTimeout = 10 * time.Second
	// DefaultShutdownTimeout bounds waiting for requests in flight when
	// Serve's context ends.
	DefaultShutdownTimeout = 30 * time.Second
)

// maxHeaderBytes bounds a request's headers.
const maxHeaderBytes = 16 << 10

// Identity is an account that the directory accepted.
type Identity struct {
	// UPN and SID are the account's userPrincipalName and objectSid
	// (MS-ADTS 2.2.16, string form of MS-DTYP 2.4.2.1).
	UPN, SID string
	// Groups are the groups the account belongs to, nested ones included.
	Groups []Group
}

// Group is an Active Directory group.
type Group struct {
	SID, Name string
}

// Directory checks a user's credentials on the server's side of a claim;
// package pbn/ad satisfies it. Login returns an error for any account it
// does not accept; the server tells the device only that the sign-in was
// refused.
type Directory interface {
	Login(ctx context.Context, account string, password secret.Bytes) (*Identity, error)
}

// Config is what a Server needs.
type Config struct {
	// Store holds the server's data.
	Store *store.Store
	// Key is the server's TLS key (ECDSA P-256 keeps handshakes cheap).
	// Key files pin its public key.
	Key crypto.Signer
	// URL is the https:// address devices reach the server at; enrollment
	// hands it out for key files.
	URL string
	// Directory checks claims; nil refuses every claim as unavailable.
	Directory Directory
	// Exchange serves the Tang exchange of PBN-mode unlock; nil refuses
	// every unlock as unavailable.
	Exchange Exchanger
	// Log receives one line per refused or failed request and the
	// server's events; nil discards them.
	Log *slog.Logger
	// Registerer receives the server's Prometheus metrics; nil keeps them
	// in a registry of the server's own (see Server.Gatherer).
	Registerer prometheus.Registerer

	// Timeouts; zero means the default of the same name.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	LoginTimeout, ShutdownTimeout                             time.Duration

	// MaxConnections caps the connections open at once; zero means
	// DefaultMaxConnections. Clients beyond it wait to be accepted.
	MaxConnections int
}

// Server is the key server's TLS API.
type Server struct {
	cfg     Config
	cert    tls.Certificate
	pub     []byte
	log     *slog.Logger
	metrics *metrics
	mux     *http.ServeMux
	// inFlight counts the requests being handled.
	inFlight atomic.Int64
	// conns is the listener Serve takes connections from, for the
	// connection gauge.
	conns atomic.Pointer[limitListener]
}

// New makes a server from cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Key == nil || cfg.URL == "" {
		return nil, errors.New("keyserver: config needs a store, a key and a URL")
	}
	setDefault(&cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDefault(&cfg.ReadTimeout, DefaultReadTimeout)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.LoginTimeout, DefaultLoginTimeout)
	setDefault(&cfg.ShutdownTimeout, DefaultShutdownTimeout)
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}

	var err error
	if s.cert, err = selfSigned(cfg.Key, "pbnd"); err != nil {
		return nil, err
	}
	if s.pub, err = PublicKey(cfg.Key); err != nil {
		return nil, err
	}
	if s.metrics, err = newMetrics(cfg.Registerer, &s.inFlight, s.openConnections); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// PublicKey returns the DER SubjectPublicKeyInfo of the server's TLS key,
// the pin of key files.
func (s *Server) PublicKey() []byte { return s.pub }

// Gatherer returns the registry of the server's metrics, for a /metrics
// handler; nil when Config.Registerer was set.
func (s *Server) Gatherer() prometheus.Gatherer { return s.metrics.gatherer }

// Handler returns the API's HTTP handler. It expects requests that came
// over a connection of TLSConfig: it authenticates callers by their TLS
// client certificate.
func (s *Server) Handler() http.Handler { return s.mux }

// TLSConfig returns the TLS configuration of the API: TLS 1.3 only, the
// server's key, a client certificate requested but not checked against any
// authority (the handler checks its key), and no session resumption, so
// that every connection proves the client's key afresh.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{s.cert},
		ClientAuth:             tls.RequestClientCert,
		SessionTicketsDisabled: true,
	}
}

// openConnections returns how many connections Serve has open.
func (s *Server) openConnections() int {
	if l := s.conns.Load(); l != nil {
		return l.open()
	}
	return 0
}

// Serve serves the API over TLS on ln until ctx ends, then stops taking
// connections and waits up to the shutdown timeout for the requests in
// flight to finish. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.mux,
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	limited := newLimitListener(ln, s.cfg.MaxConnections)
	s.conns.Store(limited)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(limited, srv.TLSConfig)) }()

	select {
	case err := <-done:
		return fmt.Errorf("keyserver: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	if err != nil {
		return fmt.Errorf("keyserver: shutdown: %w", err)
	}
	return nil
}
