package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// The deployed stage's prompt.
const (
	usersRE    = `pbn: users of this device:\n`
	signInRE   = `Sign in as \(number or account; R for a recovery key\): `
	passwordRE = `Password for ` + testUPN + `: `
	recoveryRE = `Recovery key: `
	testSID    = "S-1-5-21-1004336348-1177238915-682003330-1105"
	groupSID   = "S-1-5-21-1004336348-1177238915-682003330-1200"
)

// sealedElsewhere makes alice's key file for the fixture's volume as the
// secure moment makes one, but sealed to a TPM on the host: in the guest
// its TPM and password protector fails as on a laptop whose TPM was
// replaced, and only its recovery key opens it.
func sealedElsewhere(t *testing.T, rk keyfile.RecoveryKey) []byte {
	t.Helper()
	ctx := context.Background()
	sim := swtpm.Start(t)
	host, err := tpm.Open(ctx, sim.Path(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ring := &keyfile.Keyring{FDE: pbnFixture.spec.LUKSKey.Clone(), Enterprise: secret.Random(32),
		Groups: []keyfile.GroupKey{{SID: groupSID, Name: "pbn-staff", Key: secret.Random(32)}}}
	f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindUser, DeviceID: keyfile.NewID(),
		UPN: testUPN, SID: testSID}, ring)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pw := secret.Bytes(testPassword)
	if _, err := f.AddProtector(ctx, securemoment.LabelPasswordTPM, keyfile.PasswordWith(pw, keyfile.FloorArgon2),
		tpm.NewFactor(host, nil, pw)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddProtector(ctx, securemoment.LabelRecovery, keyfile.Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// diskWith copies the fixture's disk with kb as its only key file.
func diskWith(t *testing.T, kb []byte) string {
	t.Helper()
	_, _, disk, _ := pbnDisk(t)
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(t.TempDir(), "laptop.img")
	if err := os.WriteFile(d, b, 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "keyfile")
	if err := os.WriteFile(src, kb, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := run(ctx, "mdel", "-i", espOf(d), "::"+keyFileName); err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, "mcopy", "-i", espOf(d), src, "::EFI/PBN/keys/"+testSID+keyfile.Ext); err != nil {
		t.Fatal(err)
	}
	return d
}

// espOf names the ESP of a disk MakeDisk made, for mtools.
func espOf(disk string) string { return fmt.Sprintf("%s@@%d", disk, ESPOffset) }

// espFile reads a file from the ESP of disk.
func espFile(t *testing.T, disk, name string) string {
	t.Helper()
	mtype, err := lookSbin("mtype")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(mtype, "-i", espOf(disk), "::"+name).Output()
	if err != nil {
		t.Fatalf("mtype %s: %v", name, err)
	}
	return string(out)
}

// TestDeployedRecovery boots a laptop whose key file was sealed to
// another TPM: the password is refused with the TPM's sentence, the
// recovery key opens the disk, the ESP records the use for the key server,
// and the tiny OS finds the session and the user's keys in the kernel
// keyring.
//
// It does not prove that the use reaches the key server's audit trail:
// pbn/signin's TestDeployed does, on the host.
func TestDeployedRecovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	pbnDisk(t) // the fixture's LUKSKey, for the key file
	rk := keyfile.NewRecoveryKey()
	kb := sealedElsewhere(t, rk)
	kf, err := keyfile.Parse(kb)
	if err != nil {
		t.Fatal(err)
	}
	disk := diskWith(t, kb)
	_, m := bootPBN(t, ctx, disk, false, "pbn.nettimeout=1s", LaptopOptions{})

	expect(t, ctx, m, usersRE, `  1\. `+regexp.QuoteMeta(testUPN)+`\n`, signInRE)
	m.Console.Type("1\n")
	expect(t, ctx, m, passwordRE)
	m.Console.Type(testPassword + "\n")
	expect(t, ctx, m, `This is not the TPM your key was sealed to`, signInRE)
	m.Console.Type("R\n")
	expect(t, ctx, m, recoveryRE)
	digits := rk.Digits()
	m.Console.Type(string(digits) + "\n")
	digits.Wipe()
	got := expect(t, ctx, m, `pbn: signed in as `+regexp.QuoteMeta(testUPN)+` \(offline\)`,
		TinyOSBanner,
		regexp.QuoteMeta(SessionBegin)+`\n((?s:.*?))`+regexp.QuoteMeta(SessionEnd),
		regexp.QuoteMeta(KeysBegin)+`\n((?s:.*?))`+regexp.QuoteMeta(KeysEnd))
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}

	s, err := handoff.ParseSession([]byte(strings.TrimSpace(got[2][1])))
	want := handoff.Session{UPN: testUPN, SID: testSID, KeyFile: kf.Header().ID, Kind: keyfile.KindUser,
		Stage: handoff.StageRecovery, Keyring: handoff.KeyringName}
	if err != nil || *s != want {
		t.Errorf("session file %q = %+v, %v; want %+v", got[2][1], s, err, want)
	}
	keys := got[3][1]
	for _, k := range []string{" keyring   " + handoff.KeyringName + ":", " user      " + handoff.EnterpriseKey + ": 32",
		" user      " + handoff.GroupKeyPrefix + groupSID + ": 32"} {
		if !strings.Contains(keys, k) {
			t.Errorf("/proc/keys has no %q:\n%s", k, keys)
		}
	}
	state := espFile(t, disk, "EFI/PBN/keys/signin.0.state")
	if !strings.Contains(state, `"recoveries":[{"key_file":"`+kf.Header().ID.String()) {
		t.Errorf("sign-in state %s, want the recovery-key use recorded", state)
	}
}
