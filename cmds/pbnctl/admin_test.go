package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// TestAdminAdd makes an enrol-only administrator file with pbnctl admin
// add: it enrolls a device, pbnctl's other commands refuse it with the
// role's exit code, and it may not add administrators itself.
func TestAdminAdd(t *testing.T) {
	admin, st, _ := keyServer(t)
	dir := t.TempDir()
	imaging := filepath.Join(dir, "imaging.json")

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"enrol-only", []string{"admin", "add", "--admin", admin, "--role", "enroll", "--out", imaging, "imaging"},
			0, "administrator imaging (enroll) added"},
		{"file exists", []string{"admin", "add", "--admin", admin, "--out", imaging, "imaging-2"},
			exitUsage, "exists already"},
		{"name taken", []string{"admin", "add", "--admin", admin, "--out", filepath.Join(dir, "b.json"), "imaging"},
			exitError, "exists already"},
		{"no --out", []string{"admin", "add", "--admin", admin, "x"}, exitUsage, "--out"},
		{"bad role", []string{"admin", "add", "--admin", admin, "--role", "root", "--out",
			filepath.Join(dir, "c.json"), "x"}, exitUsage, "role"},
		{"enrol-only lists devices", []string{"device", "list", "--admin", imaging}, exitRole, "role"},
		{"enrol-only adds an administrator", []string{"admin", "add", "--admin", imaging, "--out",
			filepath.Join(dir, "d.json"), "escalated"}, exitRole, "role"},
		{"list", []string{"admin", "list", "--admin", admin}, 0, "imaging     enroll"},
		{"remove without reason", []string{"admin", "remove", "--admin", admin, "imaging"}, exitUsage, "--reason"},
		{"remove nobody", []string{"admin", "remove", "--admin", admin, "--reason", "typo", "nobody"},
			exitNoDevice, "no administrator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := pbnctl(t, "", tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("pbnctl %q = %d:\n%s\nwant %d with %q", tt.args, code, out, tt.code, tt.want)
			}
		})
	}
	for _, f := range []string{"b.json", "c.json", "d.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s after a refused admin add: %v, want no file", f, err)
		}
	}

	fi, err := os.Stat(imaging)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("Stat(imaging file) = %v, %v; want mode 0600", fi, err)
	}
	a, err := keyserver.ReadAdminFile(imaging)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	k, _ := keyserver.NewKey()
	spki, _ := keyserver.PublicKey(k)
	if _, err := c.Enroll(t.Context(), store.Device{ID: keyfile.NewID(), Hostname: "pbn-1", Group: "laptops",
		Key: spki}, keyfile.NewID()); err != nil {
		t.Fatalf("Enroll with the enrol-only file = %v", err)
	}
	es, err := st.Tail(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.Kind+" by "+e.Actor)
	}
	want := []string{"admin-add by helpdesk-1", "admin-refused by imaging", "admin-refused by imaging",
		"enroll by imaging"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("audit trail: %s\nwant %s", strconv.Quote(strings.Join(got, ", ")), strings.Join(want, ", "))
	}

	// Once removed, the enrol-only file enrolls nothing.
	if out, code := pbnctl(t, "", "admin", "remove", "--admin", admin, "--reason", "image rebuilt",
		"imaging"); code != 0 {
		t.Fatalf("admin remove = %d: %s", code, out)
	}
	if _, err := c.Enroll(t.Context(), store.Device{ID: keyfile.NewID(), Hostname: "pbn-2", Group: "laptops",
		Key: spki}, keyfile.NewID()); !errors.Is(err, keyserver.ErrUnknownKey) {
		t.Errorf("Enroll with the removed file = %v, want ErrUnknownKey", err)
	}
}
