package netup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/pbn/cmdline"
)

// The tests run Up in a child process inside a network namespace of their
// own (a netns applies to a thread, and Up runs many goroutines), with the
// link's peer in a second namespace where dnsmasq serves DHCP.
const helperEnv = "PBN_NETUP_HELPER"

type helperRequest struct {
	Config  Config
	Timeout time.Duration
}

type helperReply struct {
	Result  *Result
	Err     string
	NoLink  bool
	NoLease bool
	Took    time.Duration // Up's own time, without the child's start
}

func TestMain(m *testing.M) {
	if req := os.Getenv(helperEnv); req != "" {
		os.Exit(helper(req))
	}
	os.Exit(m.Run())
}

func helper(req string) int {
	var r helperRequest
	if err := json.Unmarshal([]byte(req), &r); err != nil {
		fmt.Println(err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
	defer cancel()
	start := time.Now()
	res, err := Up(ctx, r.Config)
	rep := helperReply{Result: res, NoLink: errors.Is(err, ErrNoLink), NoLease: errors.Is(err, ErrNoLease),
		Took: time.Since(start)}
	if err != nil {
		rep.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// lab is a client namespace and a server namespace joined by a veth pair.
type lab struct {
	client, server string // namespace names
	link           string // the client's end of the veth pair
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab makes the namespaces, named with the PID and the test's number
// so that tests running beside it never collide; serverUp false leaves the
// server's end down, so the client's link has no carrier.
func newLab(t testing.TB, n int, serverUp bool) *lab {
	t.Helper()
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	id := fmt.Sprintf("%d%d", os.Getpid(), n)
	l := &lab{client: "pbnc" + id, server: "pbns" + id, link: "pbc" + id}
	peer := "pbs" + id
	for _, ns := range []string{l.client, l.server} {
		run(t, ip, "netns", "add", ns)
		t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	}
	run(t, ip, "link", "add", l.link, "netns", l.client, "type", "veth", "peer", "name", peer, "netns", l.server)
	run(t, ip, "-n", l.server, "addr", "add", "192.0.2.1/24", "dev", peer)
	run(t, ip, "-n", l.server, "addr", "add", "2001:db8::1/64", "dev", peer, "nodad")
	if serverUp {
		run(t, ip, "-n", l.server, "link", "set", peer, "up")
	}
	return l
}

// dnsmasq serves DHCPv4 (and DHCPv6 when v6) in the server namespace
// until the test ends.
func (l *lab) dnsmasq(t testing.TB, v6 bool) {
	t.Helper()
	bin := testenv.Command(t, "dnsmasq")
	args := []string{"netns", "exec", l.server, bin, "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--no-resolv", "--no-hosts", "--leasefile-ro", "--pid-file=", "--bind-interfaces",
		"--interface=pbs" + strings.TrimPrefix(l.server, "pbns"), "--user=root", "--group=root",
		"--dhcp-range=192.0.2.10,192.0.2.20,255.255.255.0,1h",
		"--dhcp-option=option:router,192.0.2.1", "--dhcp-option=option:dns-server,192.0.2.53",
		"--dhcp-authoritative", "--no-ping"}
	if v6 {
		args = append(args, "--dhcp-range=2001:db8::10,2001:db8::20,64,1h",
			"--dhcp-option=option6:dns-server,[2001:db8::53]")
	}
	cmd := exec.Command(testenv.Command(t, "ip"), args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq:\n%s", out.String())
		}
	})
}

// up runs Up in the client namespace.
func (l *lab) up(t testing.TB, cfg Config, timeout time.Duration) (helperReply, time.Duration) {
	t.Helper()
	req, err := json.Marshal(helperRequest{Config: cfg, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.Command(t, "ip"), "netns", "exec", l.client, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+string(req))
	cmd.Stderr = os.Stderr
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var rep helperReply
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("helper said %q: %v", out, err)
	}
	return rep, took
}

func TestUpDHCP(t *testing.T) {
	l := newLab(t, 1, true)
	l.dnsmasq(t, false)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")

	rep, took := l.up(t, Config{ResolvConf: resolv}, 10*time.Second)
	if rep.Result == nil {
		t.Fatalf("Up() = %s, want a lease", rep.Err)
	}
	t.Logf("Up() = %v in %v", rep.Result, took)
	r := rep.Result
	if r.Method != "DHCP" || r.Link != l.link {
		t.Errorf("Up() = %v, want DHCP on %s", r, l.link)
	}
	if !netip.MustParsePrefix("192.0.2.0/24").Contains(r.Address.Addr()) || r.Address.Bits() != 24 {
		t.Errorf("Up() address = %v, want one of 192.0.2.0/24", r.Address)
	}
	if r.Gateway != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("Up() gateway = %v, want 192.0.2.1", r.Gateway)
	}
	b, err := os.ReadFile(resolv)
	if err != nil || !strings.Contains(string(b), "nameserver 192.0.2.53\n") {
		t.Errorf("resolv.conf = %q, %v; want nameserver 192.0.2.53", b, err)
	}
	ip := testenv.Command(t, "ip")
	if got := run(t, ip, "-n", l.client, "-4", "addr", "show", "dev", l.link); !strings.Contains(got, r.Address.String()) {
		t.Errorf("the link has addresses\n%s\nwant %v", got, r.Address)
	}
	if got := run(t, ip, "-n", l.client, "-4", "route", "show", "default"); !strings.Contains(got, "via 192.0.2.1") {
		t.Errorf("default route = %q, want via 192.0.2.1", got)
	}
}

func TestUpNoServer(t *testing.T) {
	l := newLab(t, 2, true)
	const timeout = 1500 * time.Millisecond
	rep, took := l.up(t, Config{ResolvConf: filepath.Join(t.TempDir(), "resolv.conf")}, timeout)
	if !rep.NoLease || rep.Result != nil {
		t.Errorf("Up() = %+v, want ErrNoLease", rep)
	}
	// The child process starts in a fraction of a second; the wait itself
	// must end at the deadline.
	if took > timeout+2*time.Second {
		t.Errorf("Up() took %v with a deadline of %v", took, timeout)
	}
}

func TestUpNoCarrier(t *testing.T) {
	l := newLab(t, 3, false)
	rep, _ := l.up(t, Config{CarrierTimeout: 300 * time.Millisecond,
		ResolvConf: filepath.Join(t.TempDir(), "resolv.conf")}, 5*time.Second)
	if !rep.NoLink {
		t.Errorf("Up() = %+v, want ErrNoLink", rep)
	}
}

func TestUpStatic(t *testing.T) {
	l := newLab(t, 4, true)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	c, err := cmdline.Parse("ip=192.0.2.77::192.0.2.1:255.255.255.0:laptop:" + l.link + ":none:192.0.2.54")
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := l.up(t, Config{IP: c.IP, ResolvConf: resolv}, 5*time.Second)
	if rep.Result == nil || rep.Result.Address != netip.MustParsePrefix("192.0.2.77/24") {
		t.Fatalf("Up() = %+v, want 192.0.2.77/24", rep)
	}
	ip := testenv.Command(t, "ip")
	if got := run(t, ip, "-n", l.client, "-4", "route", "show", "default"); !strings.Contains(got, "via 192.0.2.1") {
		t.Errorf("default route = %q, want via 192.0.2.1", got)
	}
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 192.0.2.54") {
		t.Errorf("resolv.conf = %q, want nameserver 192.0.2.54", b)
	}
}

func TestUpOff(t *testing.T) {
	l := newLab(t, 5, true)
	rep, _ := l.up(t, Config{IP: []cmdline.IP{{Method: cmdline.MethodOff}}}, 5*time.Second)
	if rep.Result != nil || rep.Err != "" {
		t.Errorf("Up(ip=off) = %+v, want nothing done", rep)
	}
}

func TestSentence(t *testing.T) {
	for _, err := range []error{ErrNoLink, &NoLeaseError{Links: []string{"eth0"}, Err: context.DeadlineExceeded},
		errors.New("netlink: permission denied")} {
		s := Sentence(err)
		if !strings.HasSuffix(s, ".") || strings.Contains(s, "netlink") {
			t.Errorf("Sentence(%v) = %q, want a plain sentence", err, s)
		}
	}
}

func TestUpDHCP6(t *testing.T) {
	l := newLab(t, 6, true)
	l.dnsmasq(t, true)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	rep, took := l.up(t, Config{IP: []cmdline.IP{{Method: cmdline.MethodDHCP6, Interface: l.link}},
		ResolvConf: resolv}, 10*time.Second)
	if rep.Result == nil {
		t.Fatalf("Up(dhcp6) = %s, want a lease", rep.Err)
	}
	t.Logf("Up(dhcp6) = %v in %v", rep.Result, took)
	if r := rep.Result; r.Method != "DHCPv6" || !netip.MustParsePrefix("2001:db8::/64").Contains(r.Address.Addr()) {
		t.Errorf("Up(dhcp6) = %v, want an address of 2001:db8::/64 by DHCPv6", r)
	}
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 2001:db8::53") {
		t.Errorf("resolv.conf = %q, want nameserver 2001:db8::53", b)
	}
}

// BenchmarkUpDHCP measures Up from the first netlink call to the address
// set, against dnsmasq on a veth pair: the agent's "network configured"
// phase on a LAN, less the link's own carrier delay.
func BenchmarkUpDHCP(b *testing.B) {
	l := newLab(b, 7, true)
	l.dnsmasq(b, false)
	resolv := filepath.Join(b.TempDir(), "resolv.conf")
	// A first lease while dnsmasq starts may lose its DISCOVER and wait a
	// retransmission: leave it out.
	l.up(b, Config{IP: []cmdline.IP{{Method: cmdline.MethodDHCP}}, ResolvConf: resolv}, 10*time.Second)
	var total time.Duration
	for b.Loop() {
		rep, _ := l.up(b, Config{IP: []cmdline.IP{{Method: cmdline.MethodDHCP}}, ResolvConf: resolv}, 10*time.Second)
		if rep.Result == nil {
			b.Fatalf("Up() = %s", rep.Err)
		}
		total += rep.Took
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/lease")
}

// TestUpLinkLater starts Up with one link that has no carrier and adds a
// second, wired to the DHCP server, half a second later, as a second card
// whose driver binds late (or a dock) does: Up must try the new link and
// get its lease there.
func TestUpLinkLater(t *testing.T) {
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	id := fmt.Sprintf("%d%d", os.Getpid(), 8)
	l := &lab{client: "pbnc" + id, server: "pbns" + id, link: "pbc" + id}
	for _, ns := range []string{l.client, l.server} {
		run(t, ip, "netns", "add", ns)
		t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	}
	// The server's bridge takes the name dnsmasq listens on.
	bridge := "pbs" + id
	run(t, ip, "-n", l.server, "link", "add", bridge, "type", "bridge")
	run(t, ip, "-n", l.server, "addr", "add", "192.0.2.1/24", "dev", bridge)
	run(t, ip, "-n", l.server, "link", "set", bridge, "up")
	// The first link's other end stays down: no carrier.
	run(t, ip, "link", "add", l.link, "netns", l.client, "type", "veth", "peer", "name", "pbd"+id, "netns", l.server)
	l.dnsmasq(t, false)

	late := "pbl" + id
	added := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		var err error
		for _, args := range [][]string{
			{"link", "add", late, "netns", l.client, "type", "veth", "peer", "name", "pbe" + id, "netns", l.server},
			{"-n", l.server, "link", "set", "pbe" + id, "master", bridge},
			{"-n", l.server, "link", "set", "pbe" + id, "up"},
		} {
			if out, e := exec.Command(ip, args...).CombinedOutput(); e != nil {
				err = errors.Join(err, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), e, out))
			}
		}
		added <- err
	}()
	rep, _ := l.up(t, Config{CarrierTimeout: 8 * time.Second, ResolvConf: filepath.Join(t.TempDir(), "resolv.conf")}, 20*time.Second)
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if rep.Result == nil || rep.Result.Link != late {
		t.Fatalf("Up() = %+v, want a lease on %s, the link that came later", rep, late)
	}
}
