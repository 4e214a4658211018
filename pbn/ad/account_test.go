package ad

import (
	"strings"
	"testing"
	"unicode"
)

func TestParseAccount(t *testing.T) {
	tests := []struct {
		in   string
		want Account
		ok   bool
	}{
		{"alice@corp.example.test", Account{Principal, "alice", "corp.example.test"}, true},
		{`CORP\alice`, Account{DownLevel, "alice", "CORP"}, true},
		{"alice", Account{Bare, "alice", ""}, true},
		{"  alice.smith  ", Account{Bare, "alice.smith", ""}, true},
		{"jean-luc@corp.example.test", Account{Principal, "jean-luc", "corp.example.test"}, true},
		{"zoë", Account{Bare, "zoë", ""}, true},
		{"", Account{}, false},
		{"@corp.example.test", Account{}, false},
		{"alice@", Account{}, false},
		{`\alice`, Account{}, false},
		{`CORP\`, Account{}, false},
		{`CORP\a\b`, Account{}, false},
		{"a@b@c", Account{}, false},
		{"alice@corp..test", Account{}, false},
		{"alice@-corp.test", Account{}, false},
		{`THIS.IS.DNS\alice`, Account{}, false},
		{`ABCDEFGHIJKLMNOP\alice`, Account{}, false}, // 16 > 15
		{"*", Account{}, false},
		{"alice)(cn=*", Account{}, false},
		{"al\x00ice", Account{}, false},
		{"al\nice", Account{}, false},
		{"...", Account{}, false},
		{"\xff", Account{}, false},
		{strings.Repeat("a", 65), Account{}, false},
	}
	for _, tt := range tests {
		got, err := ParseAccount(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseAccount(%q) = %+v, %v; want %+v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && ReasonOf(err) != BadAccount {
			t.Errorf("ParseAccount(%q) error reason = %v, want BadAccount", tt.in, ReasonOf(err))
		}
	}
}

// FuzzParseAccount checks that an accepted account holds nothing a filter
// or a bind name could misread, and reads back the same from its String.
func FuzzParseAccount(f *testing.F) {
	for _, s := range []string{"alice@corp.example.test", `CORP\alice`, "alice", "a*)(b", "zoë@x.y", `A\b@c`, " \t "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAccount(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(a.Name, forbidden) || strings.IndexFunc(a.Name, unicode.IsControl) >= 0 || a.Name == "" {
			t.Fatalf("ParseAccount(%q) = name %q", s, a.Name)
		}
		b, err := ParseAccount(a.String())
		if err != nil || b != a {
			t.Fatalf("ParseAccount(%q) = %+v, but its String %q parses as %+v, %v", s, a, a.String(), b, err)
		}
	})
}
