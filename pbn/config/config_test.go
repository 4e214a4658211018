package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
)

const example = `{"version": 1, "ad": {"domain": "corp.example.test", "dcs": ["ldaps://dc1.corp.example.test"]},
 "autoboot": {"countdown": "3s"}}`

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(example), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load without ca.pem succeeded, want an error naming the CA")
	}
	if err := os.WriteFile(filepath.Join(dir, CAFile), []byte("PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Countdown(), 3*time.Second; got != want {
		t.Errorf("Countdown = %v, want %v", got, want)
	}
	a, err := c.ADConfig(time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if a.Domain != "corp.example.test" || len(a.DCs) != 1 || string(a.CA) != "PEM" || a.Now == nil {
		t.Errorf("ADConfig = %+v", a)
	}
}

// TestLoadChangeAccount: a change account's password is read from its own
// file, never from pbn.conf, and goes to the directory's configuration.
func TestLoadChangeAccount(t *testing.T) {
	dir := t.TempDir()
	conf := `{"version": 1, "ad": {"domain": "corp.example.test", "change_account": "pbn-change@corp.example.test"}}`
	for name, b := range map[string]string{ConfigFile: conf, CAFile: "PEM"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "change account") {
		t.Fatalf("Load without %s = %v, want an error naming it", ChangePasswordFile, err)
	}
	pwFile := filepath.Join(dir, ChangePasswordFile)
	if err := os.WriteFile(pwFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("Load with an empty password file = %v, want an error", err)
	}
	if err := os.WriteFile(pwFile, []byte("S3rvice-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.ADConfig(time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if !c.ChangesPasswords() || a.ChangeAccount != "pbn-change@corp.example.test" ||
		string(a.ChangeAccountPassword) != "S3rvice-pass" {
		t.Errorf("ADConfig = account %q, password of %d bytes; want the change account and its password without the newline",
			a.ChangeAccount, len(a.ChangeAccountPassword))
	}
	if strings.Contains(fmt.Sprintf("%+v", c), "S3rvice") {
		t.Error("the change account's password shows in the printed configuration")
	}
}

func TestLoadMissing(t *testing.T) {
	c, err := Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.HasAD() || c.Countdown() != DefaultCountdown {
		t.Errorf("Load of nothing = %+v, want no domain and the default countdown", c)
	}
	if _, err := c.ADConfig(time.Now); err == nil {
		t.Error("ADConfig without a domain succeeded")
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, "EOF"},
		{"version", `{"version": 2}`, "version 2"},
		{"unknown field", `{"version": 1, "server": "x"}`, `unknown field "server"`},
		{"two values", `{"version": 1} {}`, "more than one"},
		{"dcs without domain", `{"version": 1, "ad": {"dcs": ["ldaps://dc"]}}`, "without a domain"},
		{"change account without domain", `{"version": 1, "ad": {"change_account": "x@y"}}`, "without a domain"},
		{"long change account", `{"version": 1, "ad": {"domain": "d.test", "change_account": "` + strings.Repeat("x", 257) + `"}}`, "change_account"},
		{"negative countdown", `{"version": 1, "autoboot": {"countdown": "-1s"}}`, "countdown"},
		{"huge countdown", `{"version": 1, "autoboot": {"countdown": "1h"}}`, "countdown"},
		{"countdown number", `{"version": 1, "autoboot": {"countdown": 5}}`, "duration"},
		{"imaging over http", `{"version": 1, "imaging": {"payload": "http://img/os", "kernel": "https://img/k", "image": "https://img/i"}}`, "payload"},
		{"imaging without kernel", `{"version": 1, "imaging": {"payload": "https://img/os", "image": "https://img/i"}}`, "kernel"},
		{"imaging small esp", `{"version": 1, "imaging": {"payload": "https://img/os", "kernel": "https://img/k", "image": "https://img/i", "esp_mib": 1}}`, "esp_mib"},
		{"imaging disk", `{"version": 1, "imaging": {"payload": "https://img/os", "kernel": "https://img/k", "image": "https://img/i", "disk": "/etc/passwd"}}`, "disk"},
		{"imaging unknown field", `{"version": 1, "imaging": {"payload": "https://img/os", "kernel": "https://img/k", "image": "https://img/i", "wipe": true}}`, `unknown field "wipe"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q) = %v, want an error with %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	c, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal) = %v\n%s", err, b)
	}
	if d.Countdown() != c.Countdown() || d.AD.Domain != c.AD.Domain {
		t.Errorf("round trip = %+v, want %+v", d, c)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte(`{"version": 1}`))
	f.Add([]byte(`{"version": 1, "keyserver": {"url": "https://pbnd:8443", "public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"}}`))
	f.Add([]byte(imagingExample))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if cd := c.Countdown(); cd <= 0 || cd > MaxCountdown {
			t.Errorf("accepted countdown %v", cd)
		}
		if m := c.Imaging; m != nil {
			for _, u := range []string{m.Payload, m.Kernel, m.Image} {
				if !strings.HasPrefix(u, "https://") {
					t.Errorf("accepted imaging URL %q", u)
				}
			}
		}
	})
}

func TestKeyServerPin(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	const url = "https://pbnd.corp.example.test:8443"
	in := fmt.Sprintf(`{"version": 1, "keyserver": {"url": %q, "public_key": %q}}`, url,
		base64.StdEncoding.EncodeToString(pin))
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	other := slices.Clone(pin)
	other[len(other)-1] ^= 1
	for _, tc := range []struct {
		name string
		s    keyfile.Server
		want bool
	}{
		{"the pinned server", keyfile.Server{URL: url, PublicKey: pin}, true},
		{"no server", keyfile.Server{}, true},
		{"another key", keyfile.Server{URL: url, PublicKey: other}, false},
		{"another URL", keyfile.Server{URL: "https://10.0.0.66:8443", PublicKey: pin}, false},
	} {
		if got := c.Trusts(tc.s); got != tc.want {
			t.Errorf("Trusts(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !(&Config{Version: Version}).Trusts(keyfile.Server{URL: url, PublicKey: other}) {
		t.Error("a configuration without a key server refused a key file's server")
	}
	for _, bad := range []string{
		`{"version": 1, "keyserver": {"url": "http://pbnd:8443", "public_key": "` + base64.StdEncoding.EncodeToString(pin) + `"}}`,
		`{"version": 1, "keyserver": {"url": "https://pbnd:8443", "public_key": "AAAA"}}`,
		`{"version": 1, "keyserver": {"url": "https://pbnd:8443"}}`,
	} {
		if _, err := Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), "keyserver") {
			t.Errorf("Parse(%s) = %v, want a keyserver error", bad, err)
		}
	}
}
