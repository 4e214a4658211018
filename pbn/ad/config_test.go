package ad

import (
	"testing"

	"github.com/pbn-project/pbn/internal/samba"
)

func TestNewChecksConfig(t *testing.T) {
	ca, err := samba.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	good := Config{Domain: "corp.example.test", DCs: []string{"ldaps://dc1.corp.example.test"}, CA: ca.PEM}
	if _, err := New(good); err != nil {
		t.Fatalf("New(%+v) = %v", good, err)
	}
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no domain", func(c *Config) { c.Domain = "" }},
		{"bad domain", func(c *Config) { c.Domain = "corp example" }},
		{"no CA", func(c *Config) { c.CA = nil }},
		{"CA not PEM", func(c *Config) { c.CA = []byte("not a certificate") }},
		{"http DC", func(c *Config) { c.DCs = []string{"http://dc1"} }},
		{"DC with a path", func(c *Config) { c.DCs = []string{"ldaps://dc1/dc=corp"} }},
		{"DC with credentials", func(c *Config) { c.DCs = []string{"ldaps://u:p@dc1"} }},
		{"DC without host", func(c *Config) { c.DCs = []string{"ldaps://"} }},
		{"bad NetBIOS name", func(c *Config) { c.NetBIOSDomain = "TOO-LONG-A-NETBIOS" }},
	}
	for _, tt := range tests {
		cfg := good
		tt.edit(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("New with %s succeeded", tt.name)
		}
	}
}

func TestParseDC(t *testing.T) {
	for _, tt := range []struct {
		url, addr string
		startTLS  bool
	}{
		{"ldaps://dc1.corp.example.test", "dc1.corp.example.test:636", false},
		{"ldap://dc1.corp.example.test", "dc1.corp.example.test:389", true},
		{"ldaps://127.0.0.1:1636/", "127.0.0.1:1636", false},
		{"ldap://[::1]:1389", "[::1]:1389", true},
	} {
		d, err := parseDC(tt.url)
		if err != nil || d.addr != tt.addr || d.startTLS != tt.startTLS {
			t.Errorf("parseDC(%q) = %+v, %v; want addr %s, StartTLS %v", tt.url, d, err, tt.addr, tt.startTLS)
		}
	}
}
