package ad

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/pbn/secret"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

// password is every test user's password; it meets the default complexity.
const password = "Corr3ct-horse"

// fixture is the shared DC with one user in every state.
type fixture struct {
	dc       *samba.DC
	adminSID string // of the group pbn-admins
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

// users are created once for the package; names say their state.
var users = []samba.User{
	{Name: "alice", Password: password, DisplayName: "Alice Example"},
	{Name: "carol", Password: password},
	{Name: "nomember", Password: password},
	{Name: "changer", Password: password},
	{Name: "disabled", Password: password, State: samba.Disabled},
	{Name: "locked", Password: password, State: samba.Locked},
	{Name: "expired", Password: password, State: samba.AccountExpired},
	{Name: "pwexpired", Password: password, State: samba.PasswordExpired},
	{Name: "mustchange", Password: password, State: samba.MustChange},
	{Name: "hours", Password: password, State: samba.LogonHoursDenied},
	{Name: "workstation", Password: password, State: samba.WorkstationDenied},
	{Name: "renew1", Password: password, State: samba.MustChange},
	{Name: "renew2", Password: password, State: samba.PasswordExpired},
}

// setup creates the users and the groups: alice is in pbn-staff, which is in
// pbn-owners (nested); carol is in pbn-admins; Domain Users, everyone's
// primary group, is in pbn-everyone.
func setup(t testing.TB) fixture {
	t.Helper()
	dc := samba.Shared(t)
	fixOnce.Do(func() {
		fix.dc = dc
		ctx := context.Background()
		dns := map[string]string{}
		for _, u := range users {
			dn, err := dc.AddUser(ctx, u)
			if err != nil {
				fixErr = err
				return
			}
			dns[u.Name] = dn
		}
		staff, err := dc.AddGroup("pbn-staff", dns["alice"], dns["renew1"], dns["renew2"])
		if err == nil {
			_, err = dc.AddGroup("pbn-owners", staff)
		}
		var admins string
		if err == nil {
			admins, err = dc.AddGroup("pbn-admins", dns["carol"])
		}
		if err == nil {
			_, err = dc.AddGroup("pbn-everyone", "CN=Domain Users,CN=Users,"+dc.BaseDN)
		}
		if err != nil {
			fixErr = err
			return
		}
		fix.adminSID, fixErr = groupSID(dc, admins)
	})
	if fixErr != nil {
		t.Fatalf("fixture: %v", fixErr)
	}
	return fix
}

// groupSID reads a group's SID by logging carol in, who is its only member.
func groupSID(dc *samba.DC, dn string) (string, error) {
	c, err := New(Config{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}, CA: dc.CA.PEM})
	if err != nil {
		return "", err
	}
	id, err := c.Login(context.Background(), "carol", secret.Bytes(password))
	if err != nil {
		return "", err
	}
	for _, g := range id.Groups {
		if g.DN == dn {
			return g.SID, nil
		}
	}
	return "", errors.New("carol is not in " + dn)
}

// config returns a configuration for the fixture's DC.
func (f fixture) config(dcs ...string) Config {
	if len(dcs) == 0 {
		dcs = []string{f.dc.LDAPS()}
	}
	return Config{
		Domain:                f.dc.DNSDomain,
		DCs:                   dcs,
		CA:                    f.dc.CA.PEM,
		OwnerGroups:           []string{"pbn-owners"},
		AdminGroups:           []string{f.adminSID},
		ChangeAccount:         "changer@" + f.dc.DNSDomain,
		ChangeAccountPassword: secret.Bytes(password),
		// Generous: the machine running the tests may be loaded.
		Timeouts: Timeouts{Connect: 10 * time.Second, DC: 30 * time.Second},
	}
}

func (f fixture) client(t testing.TB, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func TestLoginStates(t *testing.T) {
	f := setup(t)
	c := f.client(t, f.config())
	tests := []struct {
		account, password string
		want              Reason // Other: success
	}{
		{"alice@corp.example.test", password, Other},
		{`CORP\alice`, password, Other},
		{"alice", password, Other},
		{" ALICE ", password, Other},
		{"carol", password, Other}, // admin, not owner
		{"alice", password + "x", WrongCredentials},
		{"nosuchuser", password, WrongCredentials},
		{"disabled", password, AccountDisabled},
		{"locked", password, AccountLocked},
		{"locked", "wrong", AccountLocked}, // AD says locked whatever the password
		{"expired", password, AccountExpired},
		{"pwexpired", password, PasswordExpired},
		{"mustchange", password, PasswordMustChange},
		{"hours", password, LogonHours},
		{"workstation", password, Workstation},
		{"nomember", password, NotAllowed},
		{"disabled", "wrong", WrongCredentials}, // no state is told without the password
		{`OTHER\alice`, password, BadAccount},
		{"alice", "", EmptyPassword},
	}
	for _, tt := range tests {
		name := tt.want.String()
		if tt.want == Other {
			name = "ok"
		}
		t.Run(tt.account+"/"+name, func(t *testing.T) {
			id, err := c.Login(context.Background(), tt.account, secret.Bytes(tt.password))
			if got := ReasonOf(err); err != nil && got != tt.want || err == nil && tt.want != Other {
				t.Fatalf("Login(%q) = %v (reason %v), want reason %v", tt.account, err, got, tt.want)
			}
			if err != nil {
				if s := Sentence(err); s == "" || strings.Contains(s, password) {
					t.Errorf("Sentence(%v) = %q", err, s)
				}
				if strings.Contains(err.Error(), password) {
					t.Errorf("error %q holds the password", err)
				}
				return
			}
			if id.RoundTrips != 3 {
				t.Errorf("RoundTrips = %d, want 3 (bind, user, groups)", id.RoundTrips)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	f := setup(t)
	c := f.client(t, f.config())
	id, err := c.Login(context.Background(), `CORP\alice`, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	if id.UPN != "alice@corp.example.test" || id.SAMAccountName != "alice" || id.DisplayName != "Alice Example" {
		t.Errorf("Login = UPN %q, sAMAccountName %q, displayName %q; want alice@corp.example.test, alice, Alice Example",
			id.UPN, id.SAMAccountName, id.DisplayName)
	}
	if !regexp.MustCompile(`^S-1-5-21(-\d+){4}$`).MatchString(id.SID) {
		t.Errorf("SID = %q, want a domain account's SID", id.SID)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$`).MatchString(id.GUID) {
		t.Errorf("GUID = %q", id.GUID)
	}
	var names []string
	for _, g := range id.Groups {
		names = append(names, g.Name)
		if !strings.HasPrefix(g.SID, "S-1-5-") {
			t.Errorf("group %s has SID %q", g.Name, g.SID)
		}
	}
	domainSID := id.SID[:strings.LastIndexByte(id.SID, '-')]
	for _, g := range id.Groups {
		if g.Name == "Domain Users" && g.SID != domainSID+"-513" {
			t.Errorf("Domain Users has SID %s, want %s-513", g.SID, domainSID)
		}
	}
	slices.Sort(names)
	// Users is BUILTIN\Users, which AD puts Domain Users in.
	if want := []string{"Domain Users", "Users", "pbn-everyone", "pbn-owners", "pbn-staff"}; !slices.Equal(names, want) {
		t.Errorf("Groups = %v, want %v (pbn-owners through nesting, Domain Users as the primary group, "+
			"Users and pbn-everyone through the primary group)", names, want)
	}
	if !id.Owner || id.Admin {
		t.Errorf("Owner, Admin = %v, %v; want true, false", id.Owner, id.Admin)
	}

	carol, err := c.Login(context.Background(), "carol", secret.Bytes(password))
	if err != nil || !carol.Admin || carol.Owner {
		t.Errorf("Login(carol) = %+v, %v; want an admin (by SID), not an owner", carol, err)
	}
}

// TestInjection checks that filter metacharacters never reach a filter
// unescaped. It does not prove that AD's own parsing of bind names is safe.
func TestInjection(t *testing.T) {
	f := setup(t)
	c := f.client(t, f.config())
	for _, account := range []string{
		"*", "al*", "*@corp.example.test", "alice)(sAMAccountName=*",
		`CORP\*`, "alice)(|(objectClass=*", "alice\x00", "(alice)",
	} {
		_, err := c.Login(context.Background(), account, secret.Bytes(password))
		if got := ReasonOf(err); got != BadAccount {
			t.Errorf("Login(%q) = %v, want BadAccount", account, err)
		}
	}
	// Past the parser, escaping alone must hold.
	got := c.userFilter(Account{Form: Principal, Name: `a*)(x\`, Domain: "corp.example.test"})
	want := `(&(objectCategory=person)(objectClass=user)` +
		`(|(userPrincipalName=a\2a\29\28x\5c@corp.example.test)(sAMAccountName=a\2a\29\28x\5c)))`
	if got != want {
		t.Errorf("userFilter = %s, want %s", got, want)
	}
}

// listener returns the address of a TCP listener on loopback that accepts
// connections, reads what they send and never answers, and a function that
// returns how many it accepted and what they sent. It stands for a hung DC,
// which the real Samba cannot be made into.
func listener(t *testing.T) (addr string, received func() (int, []byte)) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var data []byte
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					mu.Lock()
					data = append(data, buf[:n]...)
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), func() (int, []byte) {
		mu.Lock()
		defer mu.Unlock()
		return len(conns), bytes.Clone(data)
	}
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestFailover(t *testing.T) {
	f := setup(t)
	slow, slowReceived := listener(t)
	dead := deadAddr(t)
	tests := []struct {
		name string
		dcs  []string
		want Reason // Other: success on the last DC
	}{
		{"dead then live", []string{"ldaps://" + dead, f.dc.LDAPS()}, Other},
		{"slow ldaps then live", []string{"ldaps://" + slow, f.dc.LDAPS()}, Other},
		{"slow starttls then live starttls", []string{"ldap://" + slow, f.dc.LDAP()}, Other},
		{"dead and slow", []string{"ldaps://" + dead, "ldap://" + slow}, Unreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := f.config(tt.dcs...)
			cfg.Timeouts.Connect = 2 * time.Second // what a slow DC costs
			c := f.client(t, cfg)
			id, err := c.Login(context.Background(), "alice", secret.Bytes(password))
			if tt.want != Other {
				var e *Error
				if !errors.As(err, &e) || e.Reason != tt.want || len(e.Causes) != len(tt.dcs) {
					t.Fatalf("Login = %v, want %v with %d causes", err, tt.want, len(tt.dcs))
				}
				return
			}
			if err != nil {
				t.Fatalf("Login = %v, want success on %s", err, tt.dcs[len(tt.dcs)-1])
			}
			if id.DC != tt.dcs[len(tt.dcs)-1] {
				t.Errorf("DC = %s, want %s", id.DC, tt.dcs[len(tt.dcs)-1])
			}
		})
	}
	if n, _ := slowReceived(); n == 0 {
		t.Errorf("the slow DC was never tried")
	}

	// The caller's deadline ends the wait for a slow DC before its own
	// timeout does, and stops the failover.
	cfg := f.config("ldaps://"+slow, f.dc.LDAPS())
	cfg.Timeouts = Timeouts{Connect: time.Minute, DC: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := f.client(t, cfg).Login(ctx, "alice", secret.Bytes(password))
	if ReasonOf(err) != Unreachable || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Login past the caller's deadline = %v, want Unreachable from the deadline", err)
	}
}

func TestStartTLS(t *testing.T) {
	f := setup(t)
	c := f.client(t, f.config(f.dc.LDAP()))
	id, err := c.Login(context.Background(), "alice", secret.Bytes(password))
	if err != nil {
		t.Fatalf("Login over StartTLS: %v", err)
	}
	if id.RoundTrips != 4 {
		t.Errorf("RoundTrips = %d, want 4 (StartTLS, bind, user, groups)", id.RoundTrips)
	}
}

// TestPinMismatch checks that a DC whose certificate another CA issued is
// refused before the password is sent. It does not prove that the password
// never left the process: only that the login fails at the handshake.
func TestPinMismatch(t *testing.T) {
	f := setup(t)
	other, err := samba.NewCA("not the domain's CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, dc := range []string{f.dc.LDAPS(), f.dc.LDAP()} {
		cfg := f.config(dc)
		cfg.CA = other.PEM
		_, err := f.client(t, cfg).Login(context.Background(), "alice", secret.Bytes(password))
		if got := ReasonOf(err); got != PinMismatch {
			t.Errorf("Login via %s with another CA pinned = %v, want PinMismatch", dc, err)
		}
	}

	// An impostor on one address does not stop the login on the next DC.
	impostor := impostor(t, other)
	cfg := f.config(impostor, f.dc.LDAPS())
	id, err := f.client(t, cfg).Login(context.Background(), "alice", secret.Bytes(password))
	if err != nil || id.DC != f.dc.LDAPS() {
		t.Errorf("Login via %s then %s = %v, want success on the second", impostor, f.dc.LDAPS(), err)
	}
}

// impostor returns the ldaps:// URL of a TLS server on loopback whose
// certificate, for its own name, ca issued. It stands for a DC with the
// wrong certificate: a fake, because it only needs to finish a handshake.
func impostor(t *testing.T, ca *samba.CA) string {
	t.Helper()
	addr := netip.MustParseAddr("127.0.0.1")
	cert, err := ca.Certificate("impostor.invalid", addr)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", addr.String()+":0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return "ldaps://" + l.Addr().String()
}

func TestEmptyPasswordSendsNothing(t *testing.T) {
	f := setup(t)
	addr, received := listener(t)
	c := f.client(t, f.config("ldaps://"+addr))
	_, err := c.Login(context.Background(), "alice", nil)
	if ReasonOf(err) != EmptyPassword {
		t.Errorf("Login with no password = %v, want EmptyPassword", err)
	}
	if n, _ := received(); n != 0 {
		t.Errorf("a DC was contacted %d times for an empty password", n)
	}
}

// TestNothingInTheClear checks that on an ldap:// URL the first and only
// thing sent before TLS is the StartTLS request. It does not prove anything
// about what a DC that answers StartTLS receives: that is TLS, which
// TestStartTLS and TestPinMismatch cover.
func TestNothingInTheClear(t *testing.T) {
	f := setup(t)
	addr, received := listener(t)
	cfg := f.config("ldap://" + addr)
	cfg.Timeouts.Connect = 300 * time.Millisecond
	_, err := f.client(t, cfg).Login(context.Background(), "alice", secret.Bytes(password))
	if ReasonOf(err) != Unreachable {
		t.Errorf("Login via a DC that never answers StartTLS = %v, want Unreachable", err)
	}
	n, data := received()
	if n != 1 || !bytes.Contains(data, []byte(oidStartTLS)) {
		t.Errorf("the DC got %d connections and % x, want one StartTLS request", n, data)
	}
	if bytes.Contains(data, []byte(password)) || bytes.Contains(data, []byte("alice")) {
		t.Errorf("the account or password crossed the wire in the clear: % x", data)
	}
}

func TestDNSDiscovery(t *testing.T) {
	f := setup(t)
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer // the DC's own DNS server, never the system's
		return d.DialContext(ctx, network, net.JoinHostPort(f.dc.Addr.String(), "53"))
	}}
	for _, tt := range []struct {
		ldaps bool
		want  string
	}{
		{true, "ldaps://" + f.dc.Host + ":636"},
		{false, "ldap://" + f.dc.Host + ":389"},
	} {
		cfg := f.config()
		cfg.DCs, cfg.LDAPS, cfg.Resolver = nil, tt.ldaps, resolver
		id, err := f.client(t, cfg).Login(context.Background(), "alice", secret.Bytes(password))
		if err != nil {
			t.Errorf("Login with DCs from DNS SRV (LDAPS %v): %v", tt.ldaps, err)
		} else if id.DC != tt.want {
			t.Errorf("DC = %s, want %s", id.DC, tt.want)
		}
	}
}

func TestChangePassword(t *testing.T) {
	f := setup(t)
	c := f.client(t, f.config())
	ctx := context.Background()
	for _, name := range []string{"renew1", "renew2"} {
		t.Run(name, func(t *testing.T) {
			_, err := c.Login(ctx, name, secret.Bytes(password))
			if !NeedsNewPassword(err) {
				t.Fatalf("Login(%s) = %v, want a reason that needs a new password", name, err)
			}
			err = c.ChangePassword(ctx, name, secret.Bytes("wrong-Old-1"), secret.Bytes("N3w-password-1"))
			if ReasonOf(err) != WrongCredentials {
				t.Errorf("ChangePassword with a wrong old password = %v, want WrongCredentials", err)
			}
			if err := c.ChangePassword(ctx, name, secret.Bytes(password), secret.Bytes("a")); ReasonOf(err) != PasswordRejected {
				t.Errorf("ChangePassword to %q = %v, want PasswordRejected", "a", err)
			}
			if err := c.ChangePassword(ctx, name, secret.Bytes(password), secret.Bytes("N3w-password-1")); err != nil {
				t.Fatalf("ChangePassword = %v", err)
			}
			if _, err := c.Login(ctx, name, secret.Bytes("N3w-password-1")); err != nil {
				t.Errorf("Login with the new password = %v, want success", err)
			}
		})
	}

	cfg := f.config()
	cfg.ChangeAccount = ""
	err := f.client(t, cfg).ChangePassword(ctx, "mustchange", secret.Bytes(password), secret.Bytes("N3w-password-1"))
	if ReasonOf(err) != ChangeUnavailable {
		t.Errorf("ChangePassword without a change account = %v, want ChangeUnavailable", err)
	}
}

func BenchmarkLogin(b *testing.B) {
	f := setup(b)
	for _, dc := range []struct{ name, url string }{{"ldaps", f.dc.LDAPS()}, {"starttls", f.dc.LDAP()}} {
		b.Run(dc.name, func(b *testing.B) {
			c := f.client(b, f.config(dc.url))
			pw := secret.Bytes(password)
			trips := 0
			for b.Loop() {
				id, err := c.Login(context.Background(), "alice", pw)
				if err != nil {
					b.Fatal(err)
				}
				trips = id.RoundTrips
			}
			b.ReportMetric(float64(trips), "round-trips/login")
		})
	}
}
