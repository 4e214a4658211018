package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pbn-project/pbn/internal/samba"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

const adPassword = "Corr3ct-horse"

// adFixture makes the shared DC's users once: alice in pbn-owners, a
// disabled account, and a user in no group.
func adFixture(t *testing.T) (dc *samba.DC, caFile string) {
	t.Helper()
	dc = samba.Shared(t)
	adOnce.Do(func() {
		ctx := context.Background()
		var alice string
		for _, u := range []samba.User{
			{Name: "alice", Password: adPassword},
			{Name: "disabled", Password: adPassword, State: samba.Disabled},
			{Name: "nomember", Password: adPassword},
		} {
			dn, err := dc.AddUser(ctx, u)
			if err != nil {
				adErr = err
				return
			}
			if u.Name == "alice" {
				alice = dn
			}
		}
		_, adErr = dc.AddGroup("pbn-owners", alice)
	})
	if adErr != nil {
		t.Fatal(adErr)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, dc.CA.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return dc, caFile
}

var (
	adOnce sync.Once
	adErr  error
)

func runPbnctl(t *testing.T, stdin string, args ...string) (code int, out string) {
	t.Helper()
	var o, e bytes.Buffer
	err := run(context.Background(), stdio{strings.NewReader(stdin), &o, &e, slog.New(slog.DiscardHandler)}, args)
	code = report(&e, err)
	return code, o.String() + e.String()
}

func TestADLogin(t *testing.T) {
	dc, ca := adFixture(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ldaps://" + l.Addr().String()
	l.Close()

	login := func(extra ...string) []string {
		return append([]string{"ad", "login", "--ca", ca, "--password-stdin", "--owner-group", "pbn-owners", "--connect-timeout", "1s"}, extra...)
	}
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"ok", adPassword + "\n", login("--dc", dead, "--dc", dc.LDAPS(), "alice@"+dc.DNSDomain), 0, "owner:          yes"},
		{"starttls", adPassword + "\r\n", login("--dc", dc.LDAP(), "--domain", dc.DNSDomain, `CORP\alice`), 0, "(4 LDAP round trips)"},
		{"wrong password", "nope\n", login("--dc", dc.LDAPS(), "alice@"+dc.DNSDomain), 10, "wrong"},
		{"disabled", adPassword, login("--dc", dc.LDAPS(), "disabled@"+dc.DNSDomain), 11, "disabled"},
		{"not a member", adPassword, login("--dc", dc.LDAPS(), "nomember@"+dc.DNSDomain), 18, "may not use this computer"},
		{"no DC", adPassword, login("--dc", dead, "alice@"+dc.DNSDomain), 19, "No domain controller answers"},
		{"injection", adPassword, login("--dc", dc.LDAPS(), "*@"+dc.DNSDomain), 21, "Type your account"},
		{"empty password", "\n", login("--dc", dc.LDAPS(), "alice@"+dc.DNSDomain), 22, "Type your password"},
		{"no --ca", adPassword, []string{"ad", "login", "--password-stdin", "alice@x.test"}, 2, "exit codes"},
		{"bare name without --domain", adPassword, login("--dc", dc.LDAPS(), "alice"), 2, "--domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runPbnctl(t, tt.stdin, tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) {
				t.Errorf("pbnctl %s = exit %d, output:\n%s\nwant exit %d and %q", strings.Join(tt.args, " "), code, out, tt.wantCode, tt.wantOut)
			}
			if strings.Contains(out, adPassword) {
				t.Errorf("output holds the password:\n%s", out)
			}
		})
	}
}

func TestADHelp(t *testing.T) {
	code, out := runPbnctl(t, "", "ad", "login", "-h")
	if code != 0 {
		t.Errorf("pbnctl ad login -h = exit %d", code)
	}
	for _, e := range adExitCodes {
		if !strings.Contains(out, e.reason.String()) {
			t.Errorf("-h does not document exit code %d (%s)", e.code, e.reason)
		}
	}
}

func TestReadLine(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"pw\nrest", "pw"}, {"pw\r\n", "pw"}, {"pw", "pw"}, {"\n", ""},
	} {
		got, err := readLine(strings.NewReader(tt.in))
		if err != nil || string(got) != tt.want {
			t.Errorf("readLine(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if _, err := readLine(strings.NewReader(strings.Repeat("a", maxPassword+1))); err == nil {
		t.Errorf("readLine accepted a password longer than %d bytes", maxPassword)
	}
	if _, err := readLine(strings.NewReader("")); err == nil {
		t.Errorf("readLine accepted no input")
	}
}
