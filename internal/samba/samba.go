// Package samba runs a real Samba Active Directory domain controller for
// tests: provisioned with samba-tool in a temporary directory, listening only
// on a loopback address of its own (one of 127.128.0.0 to 127.191.255.255,
// added to lo for its lifetime), with LDAPS and StartTLS certificates from a CA the harness
// makes, so that a test knows the CA to pin.
//
// Provisioning takes 7 to 11 s on a 2-core machine and the start 0.4 to 3 s,
// depending on load, so a test binary shares one DC: call [Shared] from tests
// and [Main] from TestMain, which stops the DC when the tests end.
//
//	func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }
//
//	func TestLogin(t *testing.T) {
//		dc := samba.Shared(t)
//		dn, err := dc.AddUser(ctx, samba.User{Name: "alice", Password: "..."})
//		...
//	}
//
// The DC runs Samba's ldap and dns services only (no Kerberos, SMB or RPC),
// in Samba's single-process model. It stops when Close is called, when the
// test process dies (PR_SET_PDEATHSIG, and its standard input closes), or
// after an hour at most. A test process killed outright leaves its address
// on lo; a later DC skips an address that is taken.
//
// With Options.Netns the DC runs in a network namespace instead, such as
// the QEMU lab's, and DC.DialContext reaches it from the test process.
package samba

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/pbn-project/pbn/internal/netns"
	"github.com/pbn-project/pbn/internal/testenv"
)

// Options choose the domain a DC serves and where it listens. The zero
// value is usable.
type Options struct {
	// Realm is the DNS name of the domain, CORP.EXAMPLE.TEST by default.
	Realm string
	// Domain is the NetBIOS name of the domain, CORP by default.
	Domain string
	// Netns, when set, names a network namespace (ip netns) to run the DC
	// in, on Addr, which must already be up there: the QEMU lab's LAN, say.
	// Without it the DC runs on a 127.x address of its own, added to lo.
	Netns string
	// Addr is the DC's address inside Netns; ignored without Netns.
	Addr netip.Addr
}

// Timeouts of the harness.
const (
	// ProvisionTimeout bounds samba-tool domain provision (7 to 11 s on a
	// 2-core machine, more under load).
	ProvisionTimeout = 3 * time.Minute
	// StartTimeout bounds the wait for a started DC to answer LDAPS.
	StartTimeout = 2 * time.Minute
	// StopTimeout is how long Close waits after SIGTERM before SIGKILL.
	StopTimeout = 5 * time.Second
	// RequestTimeout bounds each LDAP request the harness sends.
	RequestTimeout = 30 * time.Second
	// maxRuntime makes an orphaned samba stop on its own.
	maxRuntime = time.Hour
)

// DC is a running Samba AD domain controller.
type DC struct {
	// Realm is the domain's DNS name in upper case, such as CORP.EXAMPLE.TEST.
	Realm string
	// DNSDomain is the domain's DNS name in lower case.
	DNSDomain string
	// Domain is the NetBIOS domain name, such as CORP.
	Domain string
	// BaseDN is the domain's naming context, such as DC=corp,DC=example,DC=test.
	BaseDN string
	// Host is the DC's DNS name; the DC's own DNS server resolves it.
	Host string
	// Addr is the loopback address the DC listens on: LDAP on 389, LDAPS on
	// 636, DNS on 53.
	Addr netip.Addr
	// CA issued the DC's certificate, whose names are Host and Addr.
	CA *CA
	// AdminPassword is the password of Administrator.
	AdminPassword string
	// Provisioned and Started are how long samba-tool domain provision and
	// the start until the first LDAPS answer took.
	Provisioned, Started time.Duration

	netns string
	dir   string
	cmd   *exec.Cmd
	stdin *os.File // samba -i exits when this closes
	exit  chan struct{}
	err   error // samba's exit status, once exit is closed
}

// LDAPS returns the DC's ldaps:// URL (RFC 4516), by address.
func (d *DC) LDAPS() string { return "ldaps://" + d.Addr.String() }

// LDAP returns the DC's ldap:// URL, for StartTLS (RFC 4511 section 4.14).
func (d *DC) LDAP() string { return "ldap://" + d.Addr.String() }

// Start provisions a new domain in a temporary directory and starts its DC.
// The caller must Close it.
func Start(ctx context.Context, opts Options) (*DC, error) {
	d, err := newDC(opts)
	if err != nil {
		return nil, err
	}
	if err := d.start(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func newDC(opts Options) (*DC, error) {
	if opts.Realm == "" {
		opts.Realm = "CORP.EXAMPLE.TEST"
	}
	if opts.Domain == "" {
		opts.Domain = "CORP"
	}
	dns := strings.ToLower(opts.Realm)
	ca, err := NewCA("PBN test CA for " + dns)
	if err != nil {
		return nil, fmt.Errorf("samba: %w", err)
	}
	return &DC{
		Realm:         strings.ToUpper(opts.Realm),
		DNSDomain:     dns,
		Domain:        strings.ToUpper(opts.Domain),
		BaseDN:        "DC=" + strings.ReplaceAll(dns, ".", ",DC="),
		Host:          "dc1." + dns,
		CA:            ca,
		AdminPassword: "Adm1n-" + strings.ToLower(serial().Text(36))[:12],
		netns:         opts.Netns,
		Addr:          opts.Addr,
		exit:          make(chan struct{}),
	}, nil
}

func (d *DC) start(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "pbn-samba-")
	if err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	d.dir = dir
	if d.netns == "" {
		if d.Addr, err = addLoopback(); err != nil {
			return err
		}
	} else if !d.Addr.IsValid() {
		return errors.New("samba: Options.Netns needs Options.Addr")
	}
	tlsDir := filepath.Join(dir, "pbn-tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	if err := d.CA.writeServer(tlsDir, d.Host, d.Addr); err != nil {
		return fmt.Errorf("samba: %w", err)
	}

	t0 := time.Now()
	if err := d.provision(ctx, tlsDir); err != nil {
		return err
	}
	d.Provisioned = time.Since(t0)

	t0 = time.Now()
	if err := d.run(); err != nil {
		return err
	}
	if err := d.waitReady(ctx); err != nil {
		return err
	}
	d.Started = time.Since(t0)
	return nil
}

// provision runs samba-tool domain provision with the options that keep the
// DC on its own address and inside its directory.
func (d *DC) provision(ctx context.Context, tlsDir string) error {
	ctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
	defer cancel()
	run := filepath.Join(d.dir, "run")
	options := []string{
		"interfaces=" + d.Addr.String(),
		"bind interfaces only=yes",
		"server services=ldap dns",
		"dns forwarder=", // never forward a query off the machine
		"pid directory=" + run,
		"ncalrpc dir=" + filepath.Join(run, "ncalrpc"),
		"winbindd socket directory=" + filepath.Join(run, "winbindd"),
		"ntp signd socket directory=" + filepath.Join(run, "ntp_signd"),
		"log file=" + filepath.Join(d.dir, "log.%m"),
		"tls enabled=yes",
		"tls certfile=" + filepath.Join(tlsDir, "cert.pem"),
		"tls keyfile=" + filepath.Join(tlsDir, "key.pem"),
		"tls cafile=" + filepath.Join(tlsDir, "ca.pem"),
	}
	args := []string{
		"domain", "provision", "--quiet",
		"--targetdir=" + filepath.Join(d.dir, "dc"),
		"--realm=" + d.Realm, "--domain=" + d.Domain,
		"--server-role=dc", "--dns-backend=SAMBA_INTERNAL",
		"--host-name=dc1", "--host-ip=" + d.Addr.String(),
		"--adminpass=" + d.AdminPassword,
	}
	for _, o := range options {
		args = append(args, "--option="+o)
	}
	if err := os.MkdirAll(run, 0o755); err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	cmd := d.command(ctx, "samba-tool", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	wait, err := startOrphanSafe(cmd)
	if err != nil {
		return fmt.Errorf("samba: provision: %w", err)
	}
	if err := <-wait; err != nil {
		return fmt.Errorf("samba: provision: %w\n%s", err, tail(out.Bytes()))
	}
	return nil
}

// startOrphanSafe starts cmd in its own process group, to be killed when
// this process dies (PR_SET_PDEATHSIG), and returns a channel that yields
// cmd.Wait's result. The kernel sends that signal when the thread that
// forked the child exits, so the fork and the wait happen on one locked
// thread, which lives as long as the child.
func startOrphanSafe(cmd *exec.Cmd) (<-chan error, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started, wait := make(chan error), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		wait <- cmd.Wait()
	}()
	return wait, <-started
}

// run starts samba in the foreground, in its own process group.
func (d *DC) run() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	logf, err := os.Create(filepath.Join(d.dir, "samba.log"))
	if err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("samba: %w", err)
	}
	cmd := d.command(context.Background(), "samba", "-i", "-M", "single", "-s", d.conf(),
		fmt.Sprintf("--maximum-runtime=%d", int(maxRuntime.Seconds())))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, logf, logf
	wait, err := startOrphanSafe(cmd)
	r.Close()
	logf.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("samba: start: %w", err)
	}
	d.cmd, d.stdin = cmd, w
	go func() {
		d.err = <-wait
		close(d.exit)
	}()
	return nil
}

// command returns a command that runs in the DC's network namespace.
func (d *DC) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d.netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", d.netns, name}, args...)...)
}

func (d *DC) conf() string { return filepath.Join(d.dir, "dc", "etc", "smb.conf") }

// waitReady polls the DC until an anonymous LDAPS search of the root DSE
// succeeds, samba exits, or StartTimeout passes.
func (d *DC) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := d.ping()
		if err == nil {
			return nil
		}
		select {
		case <-d.exit:
			return fmt.Errorf("samba: exited before answering: %v\n%s", d.err, d.logTail())
		case <-ctx.Done():
			return fmt.Errorf("samba: not answering LDAPS: %w (last: %v)\n%s", ctx.Err(), err, d.logTail())
		case <-tick.C:
		}
	}
}

func (d *DC) ping() error {
	c, err := d.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		0, 0, false, "(objectClass=*)", []string{"defaultNamingContext"}, nil))
	return err
}

// TLSConfig returns a client configuration that trusts only the DC's CA.
func (d *DC) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CA.PEM)
	return &tls.Config{RootCAs: pool, ServerName: d.Addr.String(), MinVersion: tls.VersionTLS12}
}

// dial returns an LDAPS connection to the DC, not yet bound.
func (d *DC) dial() (*ldap.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(d.Addr, 636).String())
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, d.TLSConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	c := ldap.NewConn(tc, true)
	c.Start()
	c.SetTimeout(RequestTimeout)
	return c, nil
}

// DialContext connects to address from inside the DC's network namespace
// (from this one without Options.Netns), as a net.Dialer's DialContext.
func (d *DC) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if d.netns == "" {
		var nd net.Dialer
		return nd.DialContext(ctx, network, address)
	}
	return netns.Dial(ctx, d.netns, network, address)
}

// Close stops the DC, removes its address from lo and its directory.
func (d *DC) Close() error {
	var errs []error
	if d.cmd != nil {
		d.stdin.Close()
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.exit:
		case <-time.After(StopTimeout):
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.exit
		}
	}
	if d.netns == "" && d.Addr.IsValid() {
		del := exec.Command("ip", "addr", "del", d.Addr.String()+"/32", "dev", "lo")
		if out, err := del.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("samba: remove %s from lo: %w: %s", d.Addr, err, out))
		}
	}
	if d.dir != "" {
		errs = append(errs, os.RemoveAll(d.dir))
	}
	return errors.Join(errs...)
}

func (d *DC) logTail() []byte {
	b, _ := os.ReadFile(filepath.Join(d.dir, "samba.log"))
	return tail(b)
}

// tail returns the last lines of a command's output, for an error message.
func tail(b []byte) []byte {
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return bytes.TrimSpace(b)
}

// addrSeq numbers the loopback addresses this process takes.
var addrSeq atomic.Uint32

// addLoopback adds an unused 127.x.y.z address to lo: the second octet counts
// this process's DCs, the last two are the low bits of its PID, so that
// concurrent test processes rarely try the same address, and one that is
// taken already (ip says it exists) is skipped.
func addLoopback() (netip.Addr, error) {
	pid := os.Getpid()
	for range 64 {
		n := addrSeq.Add(1)
		a := netip.AddrFrom4([4]byte{127, byte(128 + n%64), byte(pid >> 8), byte(pid)})
		out, err := exec.Command("ip", "addr", "add", a.String()+"/32", "dev", "lo").CombinedOutput()
		if err == nil {
			return a, nil
		}
		if !bytes.Contains(out, []byte("exists")) {
			return netip.Addr{}, fmt.Errorf("samba: add %s to lo: %w: %s", a, err, out)
		}
	}
	return netip.Addr{}, errors.New("samba: no free loopback address")
}

var shared struct {
	once sync.Once
	dc   *DC
	err  error
}

// Shared returns the DC that the tests of this binary share, provisioning
// and starting it on the first call. It skips t (fails it in CI) when Samba
// or root is missing. The binary's TestMain must call [Main] to stop it.
func Shared(t testing.TB) *DC {
	t.Helper()
	Need(t)
	shared.once.Do(func() {
		shared.dc, shared.err = Start(context.Background(), Options{})
	})
	if shared.err != nil {
		t.Fatalf("shared Samba DC: %v", shared.err)
	}
	return shared.dc
}

// Need skips t (fails it in CI) unless what Start needs is here: root,
// samba, samba-tool, ip and Samba's provisioning files.
func Need(t testing.TB) {
	t.Helper()
	testenv.Root(t)
	testenv.Command(t, "samba")
	testenv.Command(t, "samba-tool")
	testenv.Command(t, "ip")
	if _, err := os.Stat("/usr/share/samba/setup/ad-schema"); err != nil {
		msg := "samba-ad-provision is not installed"
		if testenv.InCI() {
			t.Fatal(msg + " (CI installs it through .ci/deps)")
		}
		t.Skip(msg + " (run make deps)")
	}
}

// Main runs the tests of m and then stops the shared DC, if one was started.
// Call it from TestMain: os.Exit(samba.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared.dc != nil {
		if err := shared.dc.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}
