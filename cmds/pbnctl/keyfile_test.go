package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// pbnctl runs the command with stdin and returns its output and exit code.
func pbnctl(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), stdio{strings.NewReader(stdin), &out, &errOut, slog.New(slog.DiscardHandler)}, args)
	code := report(&errOut, err)
	return out.String() + errOut.String(), code
}

// Fast Argon2id for tests: calibration to a millisecond lands on the floor.
const fast = "--argon2-target=1ms"

func TestKeyfileCommands(t *testing.T) {
	dir := t.TempDir()
	kf := filepath.Join(dir, "alice.pbk")

	out, code := pbnctl(t, "correct horse\n", "keyfile", "create", "--password-stdin", fast, "--recovery",
		"--upn", "alice@corp.example.test", "--group", "S-1-5-21-1-2-3-1201=Finance", kf)
	if code != 0 {
		t.Fatalf("create = %d: %s", code, out)
	}
	rk := regexp.MustCompile(`recovery key: ([0-9-]{55})`).FindStringSubmatch(out)
	if rk == nil {
		t.Fatalf("create printed no recovery key: %s", out)
	}

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"create over an existing file", "x\n", []string{"create", "--password-stdin", fast, kf}, exitExists, "exists"},
		{"inspect", "", []string{"inspect", kf}, 0, "protector 1: recovery key"},
		{"inspect json", "", []string{"inspect", "--json", kf}, 0, `"upn": "alice@corp.example.test"`},
		{"open with the password", "correct horse\n", []string{"open", "--password-stdin", kf}, 0, "opens"},
		{"open with a wrong password", "Correct horse\n", []string{"open", "--password-stdin", kf}, exitWrongSecret, "wrong password"},
		{"open with the recovery key", rk[1] + "\n", []string{"open", "--recovery-key-stdin", kf}, 0, "opens"},
		{"open with a mistyped recovery key", mistype(rk[1]) + "\n", []string{"open", "--recovery-key-stdin", kf}, exitWrongSecret, "group 1"},
		{"open with no input", "", []string{"open", "--password-stdin", kf}, exitError, "nothing on standard input"},
		{"add a password", "correct horse\nsecond password\n", []string{"add-protector", "--password-stdin", fast, "--new", "password", kf}, 0, "generation 2"},
		{"open with the added password", "second password\n", []string{"open", "--password-stdin", kf}, 0, "opens"},
		{"remove the first password", "second password\n", []string{"remove-protector", "--password-stdin", "--index", "0", kf}, 0, "generation 3"},
		{"open with the removed password", "correct horse\n", []string{"open", "--password-stdin", kf}, exitWrongSecret, "wrong password"},
		{"no such subcommand", "", []string{"frobnicate"}, exitUsage, "unknown subcommand"},
		{"two files", "", []string{"inspect", kf, kf}, exitUsage, "exactly one FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := pbnctl(t, tc.stdin, append([]string{"keyfile"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("pbnctl keyfile %v = %d, %q; want %d and %q", tc.args, code, out, tc.code, tc.want)
			}
			if strings.Contains(out, "correct horse") || strings.Contains(out, "second password") {
				t.Errorf("output shows a password: %q", out)
			}
		})
	}
}

// The simplest forms stay as named, for scripts.
func TestKeyfileScriptForms(t *testing.T) {
	kf := filepath.Join(t.TempDir(), "k.pbk")
	if out, code := pbnctl(t, "pw\n", "keyfile", "create", "--password-stdin", kf); code != 0 {
		t.Fatalf("create --password-stdin = %d: %s", code, out)
	}
	if out, code := pbnctl(t, "pw\n", "keyfile", "open", "--password-stdin", kf); code != 0 {
		t.Fatalf("open --password-stdin = %d: %s", code, out)
	}
}

func TestKeyfileBadFiles(t *testing.T) {
	dir := t.TempDir()
	kf := filepath.Join(dir, "k.pbk")
	if out, code := pbnctl(t, "pw\n", "keyfile", "create", "--password-stdin", fast, kf); code != 0 {
		t.Fatalf("create = %d: %s", code, out)
	}
	good, _ := os.ReadFile(kf)
	flipped := bytes.Clone(good)
	flipped[60] ^= 1
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"flipped bit", flipped, "damaged"},
		{"truncated", good[:len(good)-10], "truncated"},
		{"text", []byte("not a key file\n"), "not a PBN key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".pbk")
			os.WriteFile(p, tc.b, 0o600)
			out, code := pbnctl(t, "", "keyfile", "inspect", p)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != exitBadKeyFile || len(lines) != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("inspect = %d, %q; want %d and one line with %q", code, out, exitBadKeyFile, tc.want)
			}
		})
	}
	if out, code := pbnctl(t, "", "keyfile", "inspect", filepath.Join(dir, "missing.pbk")); code != exitError {
		t.Errorf("inspect of a missing file = %d, %q; want %d", code, out, exitError)
	}
}

// mistype changes the first digit of a recovery key to another digit.
func mistype(k string) string {
	return string('0'+(k[0]-'0'+1)%10) + k[1:]
}
