package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/internal/swtpm"
)

func TestTPMCommands(t *testing.T) {
	sim := swtpm.Start(t)
	other := swtpm.Start(t)
	kf := filepath.Join(t.TempDir(), "alice.pbk")
	const pw = "correct horse\n"

	out, code := pbnctl(t, pw, "keyfile", "create", "--password-stdin", fast, "--recovery", kf)
	if code != 0 {
		t.Fatalf("keyfile create = %d: %s", code, out)
	}
	rk := regexp.MustCompile(`recovery key: ([0-9-]{55})`).FindStringSubmatch(out)
	if rk == nil {
		t.Fatalf("keyfile create printed no recovery key: %s", out)
	}

	wrong := []byte(rk[1])
	wrong[0] = '0' + (wrong[0]-'0'+1)%10 // another first digit

	steps := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"info", "", []string{"info", "--tpm", sim.Path()}, 0, "manufacturer: IBM"},
		{"pcrs", "", []string{"pcrs", "--tpm", sim.Path(), "--pcrs", "0,16"}, 0, "sha256 16: 0000"},
		{"srk before sealing", "", []string{"srk", "--tpm", sim.Path()}, 0, "persistent at 0x81000001: false"},
		{"check without a TPM protector", "", []string{"check", "--tpm", sim.Path(), kf}, exitNoTPMFactor, "no TPM protector"},
		{"seal with the password", pw, []string{"reseal", "--tpm", sim.Path(), "--password-stdin", fast, kf}, 0, "protector 2"},
		{"srk after sealing", "", []string{"srk", "--tpm", sim.Path()}, 0, "persistent at 0x81000001: true"},
		{"check", "", []string{"check", "--tpm", sim.Path(), kf}, 0, "matches this TPM"},
		{"check on another TPM", "", []string{"check", "--tpm", other.Path(), kf}, exitSRKMismatch, "not the one"},
		{"extend PCR 4", "", nil, 0, ""},
		{"check after a kernel update", "", []string{"check", "--tpm", sim.Path(), kf}, exitPCRMismatch, "boot chain changed"},
		{"reseal with the recovery key", rk[1] + "\n" + pw, []string{"reseal", "--tpm", sim.Path(), "--recovery-key-stdin", fast, kf}, 0, "protector 2, generation 3"},
		{"check after resealing", "", []string{"check", "--tpm", sim.Path(), kf}, 0, "matches this TPM"},
		{"reseal with a wrong recovery key", string(wrong) + "\n" + pw, []string{"reseal", "--tpm", sim.Path(), "--recovery-key-stdin", fast, kf}, exitWrongSecret, ""},
		{"no TPM", "", []string{"info", "--tpm", "unix:" + filepath.Join(t.TempDir(), "none")}, exitNoTPM, ""},
		{"bad PCR list", "", []string{"pcrs", "--tpm", sim.Path(), "--pcrs", "0,24"}, exitUsage, "does not exist"},
		{"help", "", []string{"-h"}, 0, "exit codes"},
	}
	for _, s := range steps {
		if s.args == nil {
			sim.Extend(t, 4, "a new kernel")
			continue
		}
		out, code := pbnctl(t, s.stdin, append([]string{"tpm"}, s.args...)...)
		if code != s.code || !strings.Contains(out, s.want) {
			t.Errorf("%s: pbnctl tpm %s = %d:\n%s\nwant %d and %q", s.name, strings.Join(s.args, " "), code, out, s.code, s.want)
		}
	}
}
