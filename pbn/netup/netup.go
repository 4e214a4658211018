// Package netup brings up the network before the OS: every link at once,
// DHCPv4 (RFC 2131) and DHCPv6 (RFC 8415) or the static set-up of the
// kernel command line's ip=, with addresses, routes and name servers set
// through netlink and resolv.conf. The first link to get a lease wins and
// the others are stopped.
package netup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/cmdline"
)

// The defaults of [Config].
const (
	// DefaultCarrierTimeout bounds the wait for a cable or a radio link
	// once a link is up: an Ethernet PHY negotiates in one to three
	// seconds.
	DefaultCarrierTimeout = 3 * time.Second
	// DefaultRetransmit is the DHCP retransmission timeout: a server on
	// the LAN answers in milliseconds, so a lost packet is sent again
	// soon. The whole bring-up is bounded by the context's deadline.
	DefaultRetransmit = 1 * time.Second
	// DefaultResolvConf is where the name servers go.
	DefaultResolvConf = "/etc/resolv.conf"

	carrierPoll = 10 * time.Millisecond
	// linkPoll is how often Up looks for links that appeared since it
	// started.
	linkPoll = 50 * time.Millisecond
)

// The errors of [Up]. Each has a sentence for the console: see [Sentence].
var (
	// ErrNoLink says no link got a carrier (no cable, no signal) in time,
	// or there is no network link at all.
	ErrNoLink = errors.New("no network link with a carrier")
	// ErrNoLease says links had a carrier but no DHCP server answered in
	// time. Up wraps it in a *NoLeaseError.
	ErrNoLease = errors.New("no DHCP lease")
)

// NoLeaseError reports the links that tried DHCP and why each failed.
type NoLeaseError struct {
	Links []string
	Err   error // the attempts' errors, joined
}

func (e *NoLeaseError) Error() string {
	return fmt.Sprintf("no DHCP lease on %s: %v", strings.Join(e.Links, ", "), e.Err)
}

// Is makes errors.Is(err, ErrNoLease) hold.
func (e *NoLeaseError) Is(target error) bool { return target == ErrNoLease }

func (e *NoLeaseError) Unwrap() error { return e.Err }

// Sentence returns the console's line for an error of Up: a plain sentence
// for ErrNoLink and ErrNoLease, a generic one otherwise.
func Sentence(err error) string {
	switch {
	case errors.Is(err, ErrNoLink):
		return "No network cable or signal was found; continuing without the network."
	case errors.Is(err, ErrNoLease):
		return "The network did not give this computer an address; continuing without the network."
	}
	return "The network could not be set up; continuing without the network."
}

// Config says how to bring up the network.
type Config struct {
	// IP are the kernel command line's ip= parameters; none means DHCPv4
	// and DHCPv6 on every link.
	IP []cmdline.IP
	// Nameservers are extra name servers (nameserver=).
	Nameservers []string
	// CarrierTimeout bounds the wait for a link's carrier; default
	// DefaultCarrierTimeout.
	CarrierTimeout time.Duration
	// Retransmit is the DHCP retransmission timeout; default
	// DefaultRetransmit.
	Retransmit time.Duration
	// ResolvConf is the file the name servers are written to; default
	// DefaultResolvConf.
	ResolvConf string
	// Log receives the steps taken; nil discards them.
	Log *slog.Logger
}

// Result says how the network came up.
type Result struct {
	// Link is the link that won.
	Link string
	// Method is "DHCP", "DHCPv6" or "static".
	Method string
	// Address is the address set on the link, with its prefix.
	Address netip.Prefix
	// Gateway is the default route's next hop, if any.
	Gateway netip.Addr
	// DNS are the name servers written to resolv.conf.
	DNS []netip.Addr
}

func (r *Result) String() string {
	return fmt.Sprintf("%s %s via %s", r.Link, r.Address, r.Method)
}

// config is what a lease or a static set-up gives a link.
type config struct {
	Result
	validLft int // seconds; 0 is forever
}

// attempt is one way of configuring one link.
type attempt struct {
	link   netlink.Link
	method cmdline.Method
	ip     cmdline.IP // the ip= parameter, for MethodStatic
}

// Up brings up every link at once and configures the first that succeeds.
// A link that appears while the others are still tried (a second card
// whose driver bound later, a dock's) is tried too. It returns nil and no
// error when ip=off leaves the network down. It returns ErrNoLink when no
// link has a carrier, and a *NoLeaseError (see ErrNoLease) when DHCP found
// no server before ctx's deadline.
func Up(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	links, err := networkLinks()
	if err != nil {
		return nil, err
	}
	attempts := plan(cfg, links)
	if len(attempts) == 0 {
		if allOff(cfg.ips()) {
			return nil, nil
		}
		return nil, ErrNoLink
	}
	if err := waitRandom(ctx); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		winner  *Result
		errs    []error
		carrier = map[string]bool{}
	)
	ended := make(chan struct{})
	run := func(a attempt) {
		hadCarrier, err := try(ctx, cfg, a, func(c *config) error {
			mu.Lock()
			defer mu.Unlock()
			if winner != nil || ctx.Err() != nil {
				return errLost
			}
			if err := apply(cfg, a.link, c); err != nil {
				return err
			}
			winner = &c.Result
			cancel()
			return nil
		})
		mu.Lock()
		if hadCarrier {
			carrier[a.link.Attrs().Name] = true
		}
		if err != nil && !errors.Is(err, errLost) {
			errs = append(errs, fmt.Errorf("%s %s: %w", a.link.Attrs().Name, a.method, err))
		}
		mu.Unlock()
		ended <- struct{}{}
	}
	tried := map[int]bool{}
	for _, l := range links {
		tried[l.Attrs().Index] = true
	}
	running := len(attempts)
	for _, a := range attempts {
		go run(a)
	}
	poll := time.NewTicker(linkPoll)
	defer poll.Stop()
	for running > 0 {
		select {
		case <-ended:
			running--
		case <-poll.C:
			if ctx.Err() != nil {
				continue
			}
			for _, a := range plan(cfg, newLinks(cfg, tried)) {
				running++
				go run(a)
			}
		}
	}

	if winner != nil {
		return winner, nil
	}
	if len(carrier) == 0 {
		return nil, ErrNoLink
	}
	names := make([]string, 0, len(carrier))
	for l := range carrier {
		names = append(names, l)
	}
	slices.Sort(names)
	return nil, &NoLeaseError{Links: names, Err: errors.Join(errs...)}
}

// newLinks returns the links whose index is not in tried, and adds them to
// it.
func newLinks(cfg Config, tried map[int]bool) []netlink.Link {
	now, err := networkLinks()
	if err != nil {
		cfg.Log.Debug("network links", "err", err)
		return nil
	}
	var fresh []netlink.Link
	for _, l := range now {
		if !tried[l.Attrs().Index] {
			tried[l.Attrs().Index] = true
			fresh = append(fresh, l)
			cfg.Log.Debug("new link", "link", l.Attrs().Name)
		}
	}
	return fresh
}

// errLost says another attempt won first.
var errLost = errors.New("another link was configured first")

func (c Config) withDefaults() Config {
	if c.CarrierTimeout == 0 {
		c.CarrierTimeout = DefaultCarrierTimeout
	}
	if c.Retransmit == 0 {
		c.Retransmit = DefaultRetransmit
	}
	if c.ResolvConf == "" {
		c.ResolvConf = DefaultResolvConf
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// plan lists the attempts on links: for each link (all but loopback, or
// those ip= names), one per DHCP version or the static set-up.
func plan(cfg Config, links []netlink.Link) []attempt {
	var attempts []attempt
	for _, ip := range cfg.ips() {
		for _, l := range links {
			if ip.Interface != "" && ip.Interface != l.Attrs().Name {
				continue
			}
			attempts = append(attempts, attemptsFor(l, ip)...)
		}
	}
	return attempts
}

// ips returns the ip= parameters, or the default of DHCP of either
// version on every link.
func (c Config) ips() []cmdline.IP {
	if len(c.IP) == 0 {
		return []cmdline.IP{{Method: cmdline.MethodAny}}
	}
	return c.IP
}

// HasLink reports whether there is a network link other than loopback,
// which there is once a network card's driver has bound.
func HasLink() (bool, error) {
	links, err := networkLinks()
	return len(links) > 0, err
}

// networkLinks returns every link but loopback.
func networkLinks() ([]netlink.Link, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("network links: %w", err)
	}
	var links []netlink.Link
	for _, l := range all {
		if l.Attrs().Flags&net.FlagLoopback == 0 {
			links = append(links, l)
		}
	}
	return links, nil
}

func allOff(ips []cmdline.IP) bool {
	for _, ip := range ips {
		if ip.Method != cmdline.MethodOff {
			return false
		}
	}
	return true
}

func attemptsFor(l netlink.Link, ip cmdline.IP) []attempt {
	switch ip.Method {
	case cmdline.MethodAny:
		return []attempt{{l, cmdline.MethodDHCP, ip}, {l, cmdline.MethodDHCP6, ip}}
	case cmdline.MethodOff:
		return nil
	}
	return []attempt{{l, ip.Method, ip}}
}

// try sets the link up, waits for its carrier and configures it with
// commit, which applies the configuration unless another attempt won. It
// reports whether the link had a carrier.
func try(ctx context.Context, cfg Config, a attempt, commit func(*config) error) (bool, error) {
	name := a.link.Attrs().Name
	cfg.Log.Debug("link up", "link", name, "method", a.method)
	if err := linkUp(a.link, a.ip); err != nil {
		return false, err
	}
	if err := waitCarrier(ctx, a.link, cfg.CarrierTimeout); err != nil {
		return false, err
	}
	cfg.Log.Debug("carrier", "link", name, "method", a.method)

	var c *config
	var err error
	switch a.method {
	case cmdline.MethodDHCP:
		c, err = dhcp4(ctx, cfg, name)
	case cmdline.MethodDHCP6:
		c, err = dhcp6(ctx, cfg, name)
	case cmdline.MethodStatic:
		c = static(a.ip)
	}
	if err != nil {
		return true, err
	}
	cfg.Log.Debug("configured", "link", name, "method", a.method, "address", c.Address)
	c.Link = name
	c.DNS = appendNameservers(c.DNS, a.ip.DNS, cfg.Nameservers)
	return true, commit(c)
}

func static(ip cmdline.IP) *config {
	return &config{Result: Result{Method: "static", Address: ip.Address, Gateway: ip.Gateway}}
}

func appendNameservers(dns, given []netip.Addr, extra []string) []netip.Addr {
	dns = append(dns, given...)
	for _, s := range extra {
		if a, err := netip.ParseAddr(s); err == nil {
			dns = append(dns, a)
		}
	}
	var out []netip.Addr
	for _, a := range dns {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func linkUp(l netlink.Link, ip cmdline.IP) error {
	if ip.MAC != nil {
		if err := netlink.LinkSetHardwareAddr(l, ip.MAC); err != nil {
			return fmt.Errorf("set mac address: %w", err)
		}
	}
	if ip.MTU != 0 {
		if err := netlink.LinkSetMTU(l, ip.MTU); err != nil {
			return fmt.Errorf("set mtu: %w", err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link up: %w", err)
	}
	return nil
}

// errNoCarrier says a link got no carrier in time.
var errNoCarrier = errors.New("no carrier")

func waitCarrier(ctx context.Context, l netlink.Link, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		cur, err := netlink.LinkByIndex(l.Attrs().Index)
		if err != nil {
			return fmt.Errorf("link state: %w", err)
		}
		if cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return errNoCarrier
		case <-time.After(carrierPoll):
		}
	}
}
