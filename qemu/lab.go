// Package qemu is PBN's lab: a small enterprise LAN inside a network
// namespace, and QEMU laptops on it, each with its own swtpm, disks and a
// serial console that a test reads and types into.
//
// A Lab owns everything it starts: the namespace with its bridge, the DHCP
// server, the services later stories add, and the laptops with their TPMs.
// Close ends all of it on every path, so a failing test leaves no
// namespace, tap device or process behind. Nothing in the lab reaches
// beyond its namespace: its addresses exist only there.
//
// Lab.StartEnterprise adds the enterprise's services to the LAN: a Samba
// AD domain controller and the key server pbnd, with an administrator's
// client that reaches pbnd from the test process. Enterprise.Provision
// sets a laptop up from the host as imaging does on a real device
// (enrolment, TPM state, a disk with the provisioning key file), and
// Laptop.PowerCut and PowerOn cut the power and boot it again on the same
// disk and TPM.
//
// QEMU runs with TCG (these machines have no KVM): a Debian kernel reaches
// /init in a few seconds.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The lab's LAN. Each lab has a namespace of its own, so every lab uses the
// same addresses without clashing.
var (
	// Subnet is the lab LAN.
	Subnet = netip.MustParsePrefix("10.99.0.0/24")
	// Gateway is the bridge's address, where the lab's services listen.
	Gateway = netip.MustParseAddr("10.99.0.1")
)

// The lab's DHCP pool, handed out by StartDHCP.
var (
	dhcpFirst = netip.MustParseAddr("10.99.0.100")
	dhcpLast  = netip.MustParseAddr("10.99.0.199")
)

// DefaultStopTimeout bounds how long Close waits for a process to exit after
// it was killed.
const DefaultStopTimeout = 5 * time.Second

// labs numbers the labs of this process, for unique names.
var labs atomic.Int64

// Lab is a LAN in a network namespace: a bridge with the address Gateway,
// and the processes the lab started.
type Lab struct {
	// Name is unique on the host while the lab lives: it holds the
	// process ID. The network namespace has this name.
	Name string
	// Dir is the lab's working directory: sockets, leases, logs.
	Dir string

	log     *slog.Logger
	console io.Writer

	mu      sync.Mutex
	procs   []*Process
	closers []func() error
	taps    int
	laptops int
	dhcp    *Process // the dnsmasq that serves DHCP, if any
	// dhcpExtra are dhcp's further options, kept for a restart, and dns
	// the name server it hands out, if any (SetDNS).
	dhcpExtra []string
	dns       netip.Addr
	closed    bool
}

// Options configure a Lab.
type Options struct {
	// Log receives what the lab does; nil discards it.
	Log *slog.Logger
	// Console receives the console output of every laptop whose
	// LaptopOptions name no Console of its own.
	Console io.Writer
}

// New makes a lab: a network namespace holding a bridge, up, with the
// address Gateway. It needs root, ip(8) and a kernel with bridges. On
// error nothing is left behind.
func New(ctx context.Context, opts Options) (lab *Lab, err error) {
	l := &Lab{
		Name:    fmt.Sprintf("pbn%d-%d", os.Getpid(), labs.Add(1)),
		log:     opts.Log,
		console: opts.Console,
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	sweep(ctx, l.log)
	if l.Dir, err = os.MkdirTemp("", l.Name+"-"); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.closers = append(l.closers, func() error { return os.RemoveAll(l.Dir) })
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()

	if err := ip(ctx, "netns", "add", l.Name); err != nil {
		return nil, err
	}
	l.closers = append(l.closers, func() error { return ip(context.Background(), "netns", "delete", l.Name) })
	bridge := fmt.Sprintf("%s/%d", Gateway, Subnet.Bits())
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", bridge, "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		if err := ip(ctx, append([]string{"-n", l.Name}, args...)...); err != nil {
			return nil, err
		}
	}
	l.log.Info("lab up", "netns", l.Name, "bridge", bridge)
	return l, nil
}

// labName matches the name of a lab: its process ID and number.
var labName = regexp.MustCompile(`^pbn([0-9]+)-[0-9]+$`)

// sweep removes what labs of processes that no longer run left behind: a
// test binary killed at its timeout runs no cleanup. Most of its processes
// died with it (they run with a parent-death signal); what still runs in
// a namespace is killed, and the namespaces and directories removed. A lab whose process ID runs again, as another
// program, is left alone.
func sweep(ctx context.Context, log *slog.Logger) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		m := labName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		// dnsmasq changes its credentials, which clears its parent-death
		// signal: it outlives the test binary, inside the namespace.
		if out, err := exec.CommandContext(ctx, "ip", "netns", "pids", e.Name()).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := ip(ctx, "netns", "delete", e.Name()); err != nil {
			log.Warn("sweeping a stale lab", "netns", e.Name(), "err", err)
			continue
		}
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), e.Name()+"-*"))
		for _, d := range dirs {
			os.RemoveAll(d)
		}
		log.Info("swept a stale lab", "netns", e.Name())
	}
}

// ip runs ip(8) with args.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addTap adds a tap device to the bridge and returns its name.
func (l *Lab) addTap(ctx context.Context) (string, error) {
	l.mu.Lock()
	l.taps++
	name := fmt.Sprintf("tap%d", l.taps)
	l.mu.Unlock()
	for _, args := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap"},
		{"link", "set", name, "master", "br0"},
		{"link", "set", name, "up"},
	} {
		if err := ip(ctx, append([]string{"-n", l.Name}, args...)...); err != nil {
			return "", err
		}
	}
	return name, nil
}

// Process is a program the lab started.
type Process struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

// Wait waits for the process to exit or ctx to end.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w", p.Name, ctx.Err())
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// stop kills the process and waits for it.
func (p *Process) stop() error {
	if p.Exited() {
		return nil
	}
	// The process leads its own group: kill what it started too.
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(DefaultStopTimeout):
		return fmt.Errorf("lab: %s (pid %d) did not exit when killed", p.Name, p.Pid())
	}
}

// Start starts a program inside the lab's namespace, as a service on the
// LAN, and stops it at Close. cmd's Stdin, Stdout and Stderr are the
// caller's to set; its path and arguments are run through ip netns exec.
func (l *Lab) Start(name string, cmd *exec.Cmd) (*Process, error) {
	return l.start(name, cmd, true)
}

// start starts cmd, in the lab's namespace if netns, and tracks it.
func (l *Lab) start(name string, cmd *exec.Cmd, netns bool) (*Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("lab: starting %s: the lab is closed", name)
	}
	if netns {
		ipPath, err := lookSbin("ip")
		if err != nil {
			return nil, err
		}
		cmd.Path, cmd.Args = ipPath, append([]string{ipPath, "netns", "exec", l.Name}, cmd.Args...)
	}
	// Should the test binary die, the kernel kills the process too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: starting %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	l.log.Info("started", "name", name, "pid", cmd.Process.Pid)
	return p, nil
}

// Close stops every process the lab started, newest first, and removes the
// namespace with its bridge and taps, and the lab's directory. It is safe
// to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, closers := l.procs, l.closers
	l.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].stop())
	}
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i]())
	}
	l.log.Info("lab down", "netns", l.Name)
	return errors.Join(errs...)
}

// onClose runs f at Close, before the namespace goes.
func (l *Lab) onClose(f func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, f)
}

// StartDHCP starts dnsmasq on the bridge as the LAN's DHCPv4 server (RFC
// 2131), handing out addresses of Subnet with Gateway as the router, and
// the name server that SetDNS set, if any. It serves no DNS itself, and
// offers at once: no ping of the address first, which would add seconds
// to every boot.
func (l *Lab) StartDHCP(ctx context.Context) (*Process, error) {
	return l.startDnsmasq(ctx)
}

// SetDNS makes the LAN's DHCP server hand out addr as the name server
// (RFC 2132 section 3.8) from now on: a DHCP server that runs already is
// started again with it, with its other options and its leases.
func (l *Lab) SetDNS(ctx context.Context, addr netip.Addr) error {
	l.mu.Lock()
	l.dns = addr
	running := l.dhcp != nil && !l.dhcp.Exited()
	extra := l.dhcpExtra
	l.mu.Unlock()
	if !running {
		return nil
	}
	_, err := l.startDnsmasq(ctx, extra...)
	return err
}

// startDnsmasq starts dnsmasq as StartDHCP describes, with further
// options extra, and returns once it listens. A dnsmasq that the lab runs
// already is stopped first: the LAN has one DHCP server, and the new one
// keeps the leases.
func (l *Lab) startDnsmasq(ctx context.Context, extra ...string) (*Process, error) {
	dnsmasq, err := lookSbin("dnsmasq")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	old, dns := l.dhcp, l.dns
	l.mu.Unlock()
	if old != nil {
		if err := old.stop(); err != nil {
			return nil, err
		}
	}
	pid := filepath.Join(l.Dir, "dnsmasq.pid")
	if err := os.Remove(pid); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab: dnsmasq: %w", err)
	}
	args := []string{"--keep-in-foreground", "--no-resolv", "--no-hosts",
		"--conf-file=/dev/null", "--port=0", "--no-ping", "--interface=br0", "--bind-interfaces",
		"--pid-file=" + pid,
		"--dhcp-leasefile=" + l.LeaseFile(),
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,1h", dhcpFirst, dhcpLast),
		"--dhcp-option=option:router," + Gateway.String(),
		"--dhcp-authoritative", "--log-dhcp", "--log-facility=" + filepath.Join(l.Dir, "dnsmasq.log")}
	if dns.IsValid() {
		args = append(args, "--dhcp-option=option:dns-server,"+dns.String())
	}
	p, err := l.Start("dnsmasq", exec.Command(dnsmasq, append(args, extra...)...))
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.dhcp, l.dhcpExtra = p, extra
	l.mu.Unlock()
	// dnsmasq writes its pid file once it listens; a bad option ends it.
	for range 200 {
		if _, err := os.Stat(pid); err == nil {
			return p, nil
		}
		if p.Exited() {
			log, _ := os.ReadFile(filepath.Join(l.Dir, "dnsmasq.log"))
			return nil, fmt.Errorf("lab: dnsmasq exited: %v: %s", p.err, strings.TrimSpace(string(log)))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lab: waiting for dnsmasq: %w", ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
	return nil, errors.New("lab: dnsmasq did not start within 5 s")
}

// LeaseFile is where the DHCP server records its leases, one a line:
// expiry, MAC address, IP address, host name, client ID.
func (l *Lab) LeaseFile() string { return filepath.Join(l.Dir, "dnsmasq.leases") }

// Lease returns the address leased to the MAC address mac, if any.
func (l *Lab) Lease(mac string) (netip.Addr, bool) {
	b, _ := os.ReadFile(l.LeaseFile())
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 3 && strings.EqualFold(f[1], mac) {
			a, err := netip.ParseAddr(f[2])
			return a, err == nil
		}
	}
	return netip.Addr{}, false
}

// lookSbin finds a program on PATH or in the sbin directories, which a
// test's PATH may lack.
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("lab: %s is not installed", name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// pids returns the IDs of the lab's processes that still run.
func (l *Lab) pids() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pids []int
	for _, p := range l.procs {
		if !p.Exited() {
			pids = append(pids, p.Pid())
		}
	}
	return pids
}
