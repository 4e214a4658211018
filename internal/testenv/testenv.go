// Package testenv lets tests ask for the real components they run against.
//
// Outside CI a test skips when a component is missing, and says which
// package installs it. In CI (CI=true) a missing component fails the test:
// .ci/deps installs every component, so a skip there would hide a gap.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// InCI reports whether the tests run in CI.
func InCI() bool { return os.Getenv("CI") == "true" }

// missing skips or fails t for a missing component.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf(format+" (CI installs it through .ci/deps)", args...)
	}
	t.Skipf(format+" (run make deps)", args...)
}

// sbin are the directories a root shell has on PATH but a test may not.
var sbin = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// Command returns the path of the named program, looked up on PATH and in
// the sbin directories. It skips or fails t when the program is missing.
func Command(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range sbin {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	missing(t, "%s is not installed", name)
	return ""
}

// Root skips or fails t unless the test runs as root, as it must to make
// network namespaces, tap devices or loop mounts.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "the test needs root")
	}
}
