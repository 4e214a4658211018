package samba

import (
	"context"
	"errors"
	"os"
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
	for i, tt := range tests {
		name := "state" + string(rune('a'+i))
		t.Run(name, func(t *testing.T) {
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
				t.Errorf("Bind(state %d) = %v, want success", tt.state, err)
			case tt.want != "" && (!errors.As(err, &le) || !strings.Contains(le.Err.Error(), tt.want)):
				t.Errorf("Bind(state %d) = %v, want invalid credentials with %q", tt.state, err, tt.want)
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
