package samba

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestStates checks that each State is what the DC says when the account
// binds with its right password: the AD sub-code after "data" in the
// diagnostic message, as Windows sends it. This is the record of what
// Samba 4.17 really returns; pbn/ad's tests check the mapping to reasons.
func TestStates(t *testing.T) {
	dc := Shared(t)
	t.Logf("provisioned in %v, started in %v, on %v", dc.Provisioned, dc.Started, dc.Addr)
	tests := []struct {
		state State
		want  string // "" for a successful bind
	}{
		{Active, ""},
		{Disabled, "data 533,"},
		{Locked, "data 775,"},
		{AccountExpired, "data 701,"},
		{PasswordExpired, "data 532,"},
		{MustChange, "data 773,"},
		{LogonHoursDenied, "data 530,"},
		{WorkstationDenied, "data 531,"},
	}
	for _, tt := range tests {
		name := "s-" + tt.state.String() // at most 20, as sAMAccountName allows
		t.Run(tt.state.String(), func(t *testing.T) {
			if _, err := dc.AddUser(context.Background(), User{Name: name, Password: "Pass-w0rd-1", State: tt.state}); err != nil {
				t.Fatal(err)
			}
			c, err := dc.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Bind(name+"@"+dc.DNSDomain, "Pass-w0rd-1")
			var le *ldap.Error
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Bind(%v) = %v, want success", tt.state, err)
			case tt.want != "" && (!errors.As(err, &le) || !strings.Contains(le.Err.Error(), tt.want)):
				t.Errorf("Bind(%v) = %v, want invalid credentials with %q", tt.state, err, tt.want)
			}
		})
	}
}

// TestLoopbackOnly checks that the DC listens on its own address only.
func TestLoopbackOnly(t *testing.T) {
	dc := Shared(t)
	if !dc.Addr.IsLoopback() {
		t.Errorf("Addr = %v, want a loopback address", dc.Addr)
	}
	c, err := ldap.DialURL("ldaps://127.0.0.1", ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err == nil {
		c.Close()
		t.Errorf("the DC answers on 127.0.0.1 too")
	}
}

// TestNetns starts a DC inside a network namespace of the test's own, on
// that namespace's 127.0.0.1, and binds to it through DialContext.
func TestNetns(t *testing.T) {
	Need(t)
	ns := fmt.Sprintf("pbn-samba-test-%d", os.Getpid())
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		if args[0] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	dc, err := Start(context.Background(), Options{Netns: ns, Addr: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, err := dc.AddUser(context.Background(), User{Name: "alice", Password: "Pass-w0rd-1"}); err != nil {
		t.Fatal(err)
	}
	c, err := dc.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind("alice@"+dc.DNSDomain, "Pass-w0rd-1"); err != nil {
		t.Errorf("Bind in netns %s = %v", ns, err)
	}
}
