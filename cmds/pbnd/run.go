package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// config is pbnd's command line.
type config struct {
	data, listen, tangListen, metricsListen string
	url, db, masterKey, tlsKey, logLevel    string
	shutdown                                time.Duration
	maxConns, tangBurst                     int
	tangRate                                float64
	ad                                      adFlags
}

// adFlags say which Active Directory domain checks claims.
type adFlags struct {
	domain, dcs, ca, owners, admins string
	lookup, lookupPassword          string
	ldaps                           bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	var c config
	fs := flag.NewFlagSet("pbnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.data, "data", "", "data `directory`: keys, the administrator file, the SQLite database (required)")
	fs.StringVar(&c.listen, "listen", ":8443", "`address` of the TLS API")
	fs.StringVar(&c.tangListen, "tang-listen", "", "`address` of Tang's protocol over plain HTTP; empty: off")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "`address` of /metrics and /healthz over plain HTTP; empty: off")
	fs.StringVar(&c.url, "url", "", "the TLS API's `URL` as devices reach it (default https://HOSTNAME:PORT of --listen)")
	fs.StringVar(&c.db, "db", "", "database: postgres://... for PostgreSQL, or an SQLite `file` (default DIR/pbnd.db)")
	fs.StringVar(&c.masterKey, "master-key", "", "`file` of the master key that seals escrowed secrets (default DIR/master.key, made if missing)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "`file` of the TLS API's key (default DIR/tls.key, made if missing)")
	fs.StringVar(&c.logLevel, "log-level", "info", "`level` of the log: debug, info, warn or error")
	fs.StringVar(&c.ad.domain, "ad-domain", "", "Active Directory `domain` (DNS name) that checks claims; empty: claims are refused")
	fs.StringVar(&c.ad.dcs, "ad-dc", "", "comma-separated domain controller `URLs` (ldaps:// or ldap:// with StartTLS); empty: DNS SRV lookup")
	fs.StringVar(&c.ad.ca, "ad-ca", "", "PEM `file` of the CA that issued the domain controllers' certificates (required with --ad-domain)")
	fs.BoolVar(&c.ad.ldaps, "ad-ldaps", false, "reach domain controllers found in DNS by LDAPS on port 636")
	fs.StringVar(&c.ad.owners, "ad-owner-groups", "", "comma-separated `groups` (SIDs or names) whose members may own devices; empty: any account")
	fs.StringVar(&c.ad.admins, "ad-admin-groups", "", "comma-separated `groups` of administrators, also allowed to claim")
	fs.StringVar(&c.ad.lookup, "ad-lookup-account", "", "`account` that looks up the owners administrators "+
		"assign before imaging (any account that may read users); empty: owners cannot be assigned")
	fs.StringVar(&c.ad.lookupPassword, "ad-lookup-password-file", "", "`file` of --ad-lookup-account's "+
		"password, all its bytes but a final newline")
	fs.DurationVar(&c.shutdown, "shutdown-timeout", keyserver.DefaultShutdownTimeout, "how long to wait for requests in flight when stopping")
	fs.Float64Var(&c.tangRate, "tang-client-rate", tang.DefaultClientRate, "Tang exchanges per second one client address may make after its burst; 0: no limit")
	fs.IntVar(&c.tangBurst, "tang-client-burst", tang.DefaultClientBurst, "Tang exchanges one client address may make at once")
	fs.IntVar(&c.maxConns, "max-connections", keyserver.DefaultMaxConnections, "most TLS API `connections` open at once; clients beyond it wait")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: pbnd --data DIR [flags]\n\n"+
			"exit codes: 0 stopped cleanly, 1 failed to start or serve, 2 bad flags\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	if c.data == "" || fs.NArg() > 0 {
		fs.Usage()
		return nil, errUsage
	}
	return &c, nil
}

// run starts the server and serves until ctx ends.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		fmt.Fprintf(stderr, "pbnd: --log-level: %v\n", err)
		return errUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	secret.DisableCoreDumps()
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return err
	}

	st, err := openStore(ctx, c, log)
	if err != nil {
		return err
	}
	defer st.Close()
	keys, err := loadTang(filepath.Join(c.data, "tang"))
	if err != nil {
		return err
	}
	return serve(ctx, c, st, keys, log, stdout)
}

func (c *config) path(flagValue, name string) string {
	if flagValue != "" {
		return flagValue
	}
	return filepath.Join(c.data, name)
}

func openStore(ctx context.Context, c *config, log *slog.Logger) (*store.Store, error) {
	mk, err := store.LoadMasterKey(c.path(c.masterKey, "master.key"), c.masterKey == "")
	if err != nil {
		return nil, err
	}
	defer mk.Wipe()
	return store.Open(ctx, c.path(c.db, "pbnd.db"), mk, store.Options{Log: log})
}

// loadTang loads the Tang keys of dir, making a first set when there is
// none.
func loadTang(dir string) (*tang.Keys, error) {
	ks, err := tang.LoadKeys(dir)
	if errors.Is(err, tang.ErrNoKeys) || errors.Is(err, os.ErrNotExist) {
		if err := tang.GenerateKeys(dir); err != nil {
			return nil, err
		}
		ks, err = tang.LoadKeys(dir)
	}
	return ks, err
}

// exchange is the Tang keys of the TLS API's unlocks, swapped on SIGHUP.
type exchange struct{ keys atomic.Pointer[tang.Keys] }

func (e *exchange) ExchangeKey(curve string) (tang.ExchangeKey, bool) {
	return e.keys.Load().ExchangeKey(curve)
}

func (e *exchange) Exchange(kid string, x []byte) ([]byte, error) {
	return e.keys.Load().Exchange(kid, x)
}

func serve(ctx context.Context, c *config, st *store.Store, keys *tang.Keys, log *slog.Logger, stdout io.Writer) error {
	tlsKey, err := keyserver.LoadOrCreateKey(c.path(c.tlsKey, "tls.key"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	url, err := apiURL(c.url, ln.Addr())
	if err != nil {
		return err
	}
	dir, err := c.ad.directory(log)
	if err != nil {
		return err
	}
	ex := &exchange{}
	ex.keys.Store(keys)
	srv, err := keyserver.New(keyserver.Config{Store: st, Key: tlsKey, URL: url, Exchange: ex,
		Directory: dir, Log: log, ShutdownTimeout: c.shutdown, MaxConnections: c.maxConns})
	if err != nil {
		return err
	}
	admin := filepath.Join(c.data, "admin.json")
	if err := firstAdmin(ctx, st, admin, url, srv.PublicKey()); err != nil {
		return err
	}
	pin := base64.StdEncoding.EncodeToString(srv.PublicKey())
	log.Info("TLS API listening", "addr", ln.Addr().String(), "url", url, "pin", pin, "admin", admin)
	fmt.Fprintf(stdout, "pbnd: serving %s, pin %s\n", url, pin)

	tangHandler := tang.NewHandler(keys, log)
	tangHandler.SetClientLimit(c.tangRate, c.tangBurst)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() { errs <- srv.Serve(ctx, ln) })
	if c.tangListen != "" {
		if err := plain(ctx, &wg, errs, c.tangListen, "Tang", tangHandler, c.shutdown, log); err != nil {
			return err
		}
	}
	if c.metricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(srv.Gatherer(), promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
			if err := st.Ping(r.Context()); err != nil {
				http.Error(w, "database does not answer", http.StatusServiceUnavailable)
			}
		})
		if err := plain(ctx, &wg, errs, c.metricsListen, "metrics", mux, c.shutdown, log); err != nil {
			return err
		}
	}
	wg.Go(func() { reloadOnHangup(ctx, filepath.Join(c.data, "tang"), ex, tangHandler, log) })

	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	log.Info("stopped")
	return errors.Join(all...)
}

// plain serves h over plain HTTP on addr until ctx ends.
func plain(ctx context.Context, wg *sync.WaitGroup, errs chan<- error, addr, name string,
	h http.Handler, shutdown time.Duration, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s listener: %w", name, err)
	}
	srv := tang.NewServer(h, log)
	log.Info(name+" listening", "addr", ln.Addr().String())
	wg.Go(func() {
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ln) }()
		select {
		case err := <-done:
			errs <- fmt.Errorf("%s: %w", name, err)
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdown)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			errs <- fmt.Errorf("%s: shutdown: %w", name, err)
		}
		<-done
	})
	return nil
}

// reloadOnHangup loads the Tang keys again at every SIGHUP, after
// tangd-rotate-keys or tang.RotateKeys.
func reloadOnHangup(ctx context.Context, dir string, ex *exchange, h *tang.Handler, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		ks, err := tang.LoadKeys(dir)
		if err != nil {
			log.Error("reloading the Tang keys; keeping the old ones", "err", err)
			continue
		}
		ex.keys.Store(ks)
		h.SetKeys(ks)
		log.Info("Tang keys reloaded")
	}
}

// apiURL is the URL devices reach the TLS API at: flagValue, or the host
// name and the listener's port.
func apiURL(flagValue string, addr net.Addr) (string, error) {
	if flagValue != "" {
		if !strings.HasPrefix(flagValue, "https://") {
			return "", fmt.Errorf("--url %q: want https://", flagValue)
		}
		return flagValue, nil
	}
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("--url not given and no host name: %w", err)
		}
		host = h
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// firstAdmin makes the first administrator's key and file on first start,
// and on every start authorises the file's key in the database (which may
// be a new, shared PostgreSQL one) with every right (store.RoleAdmin).
// Administrators beyond the first get a file each from pbnctl admin add,
// so that the audit trail names each of them.
func firstAdmin(ctx context.Context, st *store.Store, path, url string, pin []byte) error {
	a, err := keyserver.ReadAdminFile(path)
	if errors.Is(err, os.ErrNotExist) {
		a, err = newAdmin(path, url, pin)
	}
	if err != nil {
		return err
	}
	spki, err := keyserver.PublicKey(a.Key)
	if err != nil {
		return err
	}
	return st.AddAdmin(ctx, a.Name, spki)
}

func newAdmin(path, url string, pin []byte) (*keyserver.AdminFile, error) {
	k, err := keyserver.NewKey()
	if err != nil {
		return nil, err
	}
	a := &keyserver.AdminFile{Name: "admin", URL: url, ServerKey: pin, Key: k}
	return a, keyserver.WriteAdminFile(path, a)
}

// directory returns the directory that checks claims, nil without
// --ad-domain.
func (f adFlags) directory(log *slog.Logger) (keyserver.Directory, error) {
	if f.domain == "" {
		log.Warn("no --ad-domain: every claim is refused")
		return nil, nil
	}
	if f.ca == "" {
		return nil, errors.New("--ad-domain needs --ad-ca: no system roots are trusted for domain controllers")
	}
	ca, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, fmt.Errorf("--ad-ca: %w", err)
	}
	cfg := ad.Config{Domain: f.domain, DCs: list(f.dcs), LDAPS: f.ldaps, CA: ca,
		OwnerGroups: list(f.owners), AdminGroups: list(f.admins), Logger: log}
	if f.lookup != "" {
		pw, err := os.ReadFile(f.lookupPassword)
		if err != nil {
			return nil, fmt.Errorf("--ad-lookup-password-file: %w", err)
		}
		cfg.LookupAccount = f.lookup
		cfg.LookupAccountPassword = secret.Bytes(bytes.TrimSuffix(pw, []byte("\n")))
	}
	c, err := ad.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("--ad-*: %w", err)
	}
	return keyserver.AD(c), nil
}

func list(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
