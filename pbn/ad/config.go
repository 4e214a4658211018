package ad

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
)

// Config says which domain to authenticate against and how.
type Config struct {
	// Domain is the domain's DNS name, such as corp.example.test. A bare
	// account name is taken as a name in it. Required.
	Domain string
	// NetBIOSDomain is the down-level domain name that CORP\alice must use.
	// Default: the first label of Domain in upper case.
	NetBIOSDomain string
	// BaseDN is where accounts and groups are searched. Default: the
	// domain's naming context, DC=corp,DC=example,DC=test.
	BaseDN string

	// DCs are the domain controllers' URLs, tried in order: ldaps://host[:636]
	// for LDAP over TLS, or ldap://host[:389], which is upgraded with
	// StartTLS (RFC 4511 section 4.14) before anything else is sent. When
	// empty, the DCs are looked up in DNS (SRV _ldap._tcp.dc._msdcs.Domain,
	// MS-ADTS 6.3.2.3 and RFC 2782).
	DCs []string
	// LDAPS makes DCs found in DNS be reached by LDAPS on port 636;
	// otherwise they are reached on the SRV record's port with StartTLS.
	LDAPS bool
	// CA is the PEM-encoded CA certificate(s) that must have issued the DC's
	// certificate, for the DC's name as written in its URL. Required: no
	// system roots are ever used.
	CA []byte

	// OwnerGroups name the groups whose members may own a device, and
	// AdminGroups those of administrators, each by SID (S-1-5-21-...) or by
	// sAMAccountName. Nested membership counts. When both are empty, every
	// account that can sign in is allowed as an owner.
	OwnerGroups, AdminGroups []string

	// ChangeAccount and ChangeAccountPassword are an account used only to carry a
	// password change (ChangePassword): AD lets a user whose password has
	// expired neither bind nor change it anonymously, but lets any
	// authenticated account change a password to which it proves the old
	// one (the User-Change-Password right, MS-ADTS 3.1.1.3.1.5.1). It needs
	// no other right. Optional; without it ChangePassword fails with
	// ChangeUnavailable.
	ChangeAccount         string
	ChangeAccountPassword secret.Bytes

	// LookupAccount and LookupAccountPassword are an account used only
	// to look other accounts up without their password (Lookup), as the
	// key server does when an administrator names a device's owner
	// before its imaging. Any authenticated account may read user
	// objects in a default AD; it needs no other right. Optional;
	// without it Lookup fails with LookupUnavailable.
	LookupAccount         string
	LookupAccountPassword secret.Bytes

	// Timeouts bound the network steps; zero fields take the defaults.
	Timeouts Timeouts
	// Resolver looks up DC names and SRV records. Default: net.DefaultResolver.
	Resolver *net.Resolver
	// Now is the clock for certificate validity and accountExpires. The
	// pre-boot agent passes a clock no earlier than the image's build time.
	// Default: time.Now.
	Now func() time.Time
	// Logger receives each DC's failure, and at debug level the DCs found
	// in DNS. Default: discard.
	Logger *slog.Logger
}

// Timeouts bound the network steps of a login.
type Timeouts struct {
	// Connect bounds reaching one DC: TCP, StartTLS and the TLS handshake.
	// Default DefaultConnect.
	Connect time.Duration
	// DC bounds everything done with one DC, Connect included. A DC that
	// is down or never answers costs at most this before the next is tried.
	// Default DefaultDC.
	DC time.Duration
	// Lookup bounds the DNS SRV lookup. Default DefaultLookup.
	Lookup time.Duration
}

// Default timeouts: on a LAN a DC answers in milliseconds, so a few seconds
// tell a dead one without making a person wait long.
const (
	DefaultConnect = 3 * time.Second
	DefaultDC      = 10 * time.Second
	DefaultLookup  = 3 * time.Second
)

func (c *Config) setDefaults() {
	if c.NetBIOSDomain == "" {
		first, _, _ := strings.Cut(c.Domain, ".")
		c.NetBIOSDomain = strings.ToUpper(first)
	}
	if c.BaseDN == "" {
		c.BaseDN = "DC=" + strings.ReplaceAll(c.Domain, ".", ",DC=")
	}
	if c.Timeouts.Connect <= 0 {
		c.Timeouts.Connect = DefaultConnect
	}
	if c.Timeouts.DC <= 0 {
		c.Timeouts.DC = DefaultDC
	}
	if c.Timeouts.Lookup <= 0 {
		c.Timeouts.Lookup = DefaultLookup
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Client authenticates accounts of one domain. It is safe for concurrent use.
type Client struct {
	cfg   Config
	roots *x509.CertPool
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.Domain == "" || checkDNS(cfg.Domain) != nil {
		return nil, fmt.Errorf("ad: config: bad domain %q", cfg.Domain)
	}
	roots := x509.NewCertPool()
	if len(cfg.CA) == 0 || !roots.AppendCertsFromPEM(cfg.CA) {
		return nil, errors.New("ad: config: no CA certificate to pin")
	}
	for _, u := range cfg.DCs {
		if _, err := parseDC(u); err != nil {
			return nil, fmt.Errorf("ad: config: %w", err)
		}
	}
	cfg.setDefaults()
	if checkNetBIOS(cfg.NetBIOSDomain) != nil {
		return nil, fmt.Errorf("ad: config: bad NetBIOS domain %q", cfg.NetBIOSDomain)
	}
	return &Client{cfg: cfg, roots: roots}, nil
}

// dcURL is a parsed DC URL.
type dcURL struct {
	raw      string
	host     string // for the certificate check
	addr     string // host:port to dial
	startTLS bool
}

func parseDC(s string) (dcURL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return dcURL{}, fmt.Errorf("DC %q: %w", s, err)
	}
	if u.Path != "" && u.Path != "/" || u.User != nil || u.RawQuery != "" || u.Hostname() == "" {
		return dcURL{}, fmt.Errorf("DC %q: want ldaps://host[:port] or ldap://host[:port]", s)
	}
	d := dcURL{raw: s, host: u.Hostname()}
	port := u.Port()
	switch u.Scheme {
	case "ldaps":
		if port == "" {
			port = "636"
		}
	case "ldap":
		d.startTLS = true
		if port == "" {
			port = "389"
		}
	default:
		return dcURL{}, fmt.Errorf("DC %q: scheme must be ldaps or ldap (with StartTLS)", s)
	}
	d.addr = net.JoinHostPort(d.host, port)
	return d, nil
}

// dcs returns the DCs to try: the configured ones, or those DNS names.
func (c *Client) dcs(ctx context.Context) ([]dcURL, error) {
	if len(c.cfg.DCs) > 0 {
		out := make([]dcURL, 0, len(c.cfg.DCs))
		for _, s := range c.cfg.DCs {
			d, _ := parseDC(s) // checked by New
			out = append(out, d)
		}
		return out, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.Lookup)
	defer cancel()
	// LookupSRV orders the records by priority and, within one, by weight
	// (RFC 2782).
	_, srvs, err := c.cfg.Resolver.LookupSRV(ctx, "ldap", "tcp", "dc._msdcs."+c.cfg.Domain)
	if err != nil {
		return nil, fmt.Errorf("look up the domain controllers of %s: %w", c.cfg.Domain, err)
	}
	out := make([]dcURL, 0, len(srvs))
	for _, s := range srvs {
		host := strings.TrimSuffix(s.Target, ".")
		d := dcURL{host: host, addr: net.JoinHostPort(host, strconv.Itoa(int(s.Port))), startTLS: true}
		if c.cfg.LDAPS {
			d = dcURL{host: host, addr: net.JoinHostPort(host, "636")}
		}
		if d.startTLS {
			d.raw = "ldap://" + d.addr
		} else {
			d.raw = "ldaps://" + d.addr
		}
		out = append(out, d)
	}
	c.cfg.Logger.Debug("domain controllers found in DNS", "domain", c.cfg.Domain, "dcs", rawURLs(out))
	return out, nil
}

// rawURLs returns the URLs of dcs, for the log.
func rawURLs(dcs []dcURL) []string {
	out := make([]string, len(dcs))
	for i, d := range dcs {
		out[i] = d.raw
	}
	return out
}
