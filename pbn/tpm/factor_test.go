package tpm

import (
	"errors"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// testPassword is the password factor at the floor parameters, so that
// tests run fast.
func testPassword(pw secret.Bytes) *keyfile.PasswordFactor {
	return keyfile.PasswordWith(pw, keyfile.FloorArgon2)
}

// newKeyFile makes a key file with a password-and-TPM protector sealed to
// sel and a recovery protector, and returns its encoding and its recovery
// key.
func newKeyFile(t *testing.T, tp *TPM, sel PCRSelection, pw secret.Bytes) ([]byte, keyfile.RecoveryKey) {
	t.Helper()
	ctx := testContext(t)
	f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindProvisioning, DeviceID: keyfile.NewID()},
		&keyfile.Keyring{FDE: secret.Random(64), Enterprise: secret.Random(32)})
	if err != nil {
		t.Fatalf("keyfile.New = %v", err)
	}
	defer f.Close()
	if _, err := f.AddProtector(ctx, ResealLabel, testPassword(pw), NewFactor(tp, sel, pw)); err != nil {
		t.Fatalf("AddProtector(password, TPM) = %v", err)
	}
	rk := keyfile.NewRecoveryKey()
	if _, err := f.AddProtector(ctx, "recovery", keyfile.Recovery(rk)); err != nil {
		t.Fatalf("AddProtector(recovery) = %v", err)
	}
	return marshal(t, f), rk
}

func marshal(t *testing.T, f *keyfile.KeyFile) []byte {
	t.Helper()
	b, err := f.Marshal()
	if err != nil {
		t.Fatalf("Marshal = %v", err)
	}
	return b
}

func parse(t *testing.T, b []byte) *keyfile.KeyFile {
	t.Helper()
	f, err := keyfile.Parse(b)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	t.Cleanup(f.Close)
	return f
}

// openWith opens the key file b with the password and this TPM.
func openWith(t *testing.T, b []byte, tp *TPM, pw secret.Bytes) error {
	t.Helper()
	return parse(t, b).Open(testContext(t), testPassword(pw), NewFactor(tp, nil, pw))
}

func TestFactorNeedsTPMAndPassword(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	pw := secret.Bytes("correct horse")
	f, _ := newKeyFile(t, tp, DefaultPCRs, pw)

	if err := openWith(t, f, tp, pw); err != nil {
		t.Fatalf("Open(password, TPM) = %v", err)
	}
	if err := openWith(t, f, tp, secret.Bytes("Correct horse")); !errors.Is(err, keyfile.ErrWrongPassword) {
		t.Errorf("Open with a wrong password = %v, want keyfile.ErrWrongPassword", err)
	}
	// The password alone does not satisfy the protector.
	if err := parse(t, f).Open(testContext(t), testPassword(pw)); !errors.Is(err, keyfile.ErrNoProtector) {
		t.Errorf("Open(password) = %v, want keyfile.ErrNoProtector", err)
	}
	// Another TPM with the right password does not either.
	other := openSim(t, swtpm.Start(t))
	if err := openWith(t, f, other, pw); !errors.Is(err, ErrSRKMismatch) {
		t.Errorf("Open on another TPM = %v, want ErrSRKMismatch", err)
	}
}

// Locking the TPM out with wrong passwords leaves the recovery key working.
func TestLockoutLeavesRecoveryKey(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	setLockout(t, tp, 2, 3600)
	pw := secret.Bytes("correct horse")
	f, rk := newKeyFile(t, tp, DefaultPCRs, pw)

	for range 2 {
		if err := openWith(t, f, tp, secret.Bytes("guess")); !errors.Is(err, keyfile.ErrWrongPassword) {
			t.Fatalf("Open with a wrong password = %v, want keyfile.ErrWrongPassword", err)
		}
	}
	err := openWith(t, f, tp, pw)
	var lo *LockoutError
	if !errors.As(err, &lo) {
		t.Fatalf("Open in lockout = %v, want *LockoutError", err)
	}
	if err := parse(t, f).Open(testContext(t), keyfile.Recovery(rk)); err != nil {
		t.Errorf("Open(recovery key) in lockout = %v, want nil", err)
	}
}

// After a change of the boot chain the TPM protector fails closed; the
// recovery key opens the file, Reseal seals it to the new PCR values and
// the password and TPM open it again.
func TestReseal(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	pw := secret.Bytes("correct horse")
	f, rk := newKeyFile(t, tp, DefaultPCRs, pw)

	extend(t, tp, 4) // a new kernel
	if err := openWith(t, f, tp, pw); !errors.Is(err, ErrPCRMismatch) {
		t.Fatalf("Open after a kernel update = %v, want ErrPCRMismatch", err)
	}

	opened := parse(t, f)
	if err := opened.Open(testContext(t), keyfile.Recovery(rk)); err != nil {
		t.Fatalf("Open(recovery key) = %v", err)
	}
	n, err := Reseal(testContext(t), opened, NewFactor(tp, DefaultPCRs, pw), keyfile.FloorArgon2)
	if err != nil {
		t.Fatalf("Reseal = %v", err)
	}
	resealed := marshal(t, opened)

	ps := parse(t, resealed).Protectors()
	var tpms []int
	for i, p := range ps {
		if slices.Contains(p.Factors, keyfile.FactorTPM) {
			tpms = append(tpms, i)
		}
	}
	if !slices.Equal(tpms, []int{n}) || ps[n].Label != ResealLabel {
		t.Errorf("after Reseal the TPM protectors are %v (of %d), want only the new one, %d, labelled %q",
			tpms, len(ps), n, ResealLabel)
	}
	if err := openWith(t, resealed, tp, pw); err != nil {
		t.Errorf("Open(password, TPM) after Reseal = %v", err)
	}
	if err := parse(t, resealed).Open(testContext(t), keyfile.Recovery(rk)); err != nil {
		t.Errorf("Open(recovery key) after Reseal = %v", err)
	}
}
