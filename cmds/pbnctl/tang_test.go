package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTangCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pin := filepath.Join(t.TempDir(), "pin.pem")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"show before keygen", []string{"show", dir}, exitError, "no such file"},
		{"keygen", []string{"keygen", dir}, 0, "BEGIN PUBLIC KEY"},
		{"keygen again", []string{"keygen", dir}, exitHasTangKeys, "already has keys"},
		{"show", []string{"show", dir}, 0, "exchange key P-256"},
		{"retire with nothing rotated", []string{"retire", dir}, 0, "no rotated-out keys"},
		{"rotate", []string{"rotate", dir}, 0, "signing key thumbprint"},
		{"retire", []string{"retire", dir}, 0, "retired "},
		{"no DIR", []string{"show"}, exitUsage, "exactly one DIR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := pbnctl(t, "", append([]string{"tang"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("pbnctl tang %v = %d %q, want %d and %q", tc.args, code, out, tc.code, tc.want)
			}
		})
	}

	// The pin that show prints is what keyfile create takes.
	out, _ := pbnctl(t, "", "tang", "show", dir)
	if err := os.WriteFile(pin, []byte(out[strings.Index(out, "-----BEGIN"):]), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readPublicKey(pin); err != nil {
		t.Errorf("readPublicKey(the pin tang show printed) = %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, code := pbnctl(t, "", "tang", "show", dir); code != exitNoTangKeys {
		t.Errorf("pbnctl tang show (empty dir) = %d %q, want %d", code, out, exitNoTangKeys)
	}
}
