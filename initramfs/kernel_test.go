package initramfs

import "testing"

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-57-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-57-amd64", -1},
		{"6.10.0-1-amd64", "6.9.0-1-amd64", 1},
		{"6.1.0-57-amd64", "6.1.0-57-amd64", 0},
		{"6.1.0-57-amd64", "6.1.0-57", 1},
		{"6.1.0-57-cloud-amd64", "6.1.0-57-amd64", 1},
	}
	for _, tt := range tests {
		if got := compareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
