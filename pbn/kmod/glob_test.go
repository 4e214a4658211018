package kmod

import (
	"path"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00", true},
		{"pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00008086d0000100Fsv00001AF4sd00001100bc02sc00i00", false},
		{"virtio:d00000001v*", "virtio:d00000001v00001AF4", true},
		{"virtio:d00000001v*", "virtio:d00000002v00001AF4", false},
		{"usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00", true},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"[abc]x", "bx", true},
		{"[!abc]x", "bx", false},
		{"[!abc]x", "dx", true},
		{"[a-f]0", "e0", true},
		{"[a-f]0", "g0", false},
		{"[]]", "]", true},
		{"[a-]", "-", true},
		{"[abc", "[abc", true},
		{"of:N*T*Cfsl,imx/x*", "of:NfooTbarCfsl,imx/xyz", true},
		{"*a*a*a*a*b", strings.Repeat("a", 60), false},
		{"", "", true},
		{"*", "", true},
		{"x", "", false},
	}
	for _, tt := range tests {
		if got := match(tt.p, tt.s); got != tt.want {
			t.Errorf("match(%q, %q) = %v, want %v", tt.p, tt.s, got, tt.want)
		}
	}
}

// FuzzMatch checks match against path.Match on the patterns where the two
// agree: ASCII (match works on bytes, as fnmatch in the C locale does, and
// path.Match on runes) without '/', '\' and '[' (bracket edge cases
// differ).
func FuzzMatch(f *testing.F) {
	f.Add("pci:v*d*", "pci:v00001AF4d00001000")
	f.Add("a*b?c*", "axxbyczz")
	f.Add("[a-c]*[!x]", "bqqy")
	f.Fuzz(func(t *testing.T, p, s string) {
		got := match(p, s)
		if strings.ContainsAny(p+s, `/\[]^!-`) || strings.IndexFunc(p+s, func(r rune) bool { return r >= 0x80 }) >= 0 {
			return
		}
		want, err := path.Match(p, s)
		if err == nil && got != want {
			t.Errorf("match(%q, %q) = %v, path.Match = %v", p, s, got, want)
		}
	})
}
