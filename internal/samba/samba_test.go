package samba

import (
	"context"
	"os"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestStates(t *testing.T) {
	dc := Shared(t)
	t.Logf("provision %v start %v addr %v", dc.Provisioned, dc.Started, dc.Addr)
	for _, s := range []State{Active, Disabled, Locked, AccountExpired, PasswordExpired, MustChange, LogonHoursDenied, WorkstationDenied} {
		name := "u" + string(rune('a'+s))
		if _, err := dc.AddUser(context.Background(), User{Name: name, Password: "Pass-w0rd-1", State: s}); err != nil {
			t.Fatal(err)
		}
		c, err := dc.dial()
		if err != nil {
			t.Fatal(err)
		}
		err = c.Bind(name+"@"+dc.DNSDomain, "Pass-w0rd-1")
		t.Logf("%d: %v", s, err)
		c.Close()
	}
}
