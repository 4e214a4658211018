package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/pbn/secret"
)

// testTimeout bounds each test's use of the TPM.
const testTimeout = time.Minute

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openSim opens the TPM of sim and closes it when the test ends.
func openSim(t testing.TB, sim *swtpm.Sim) *TPM {
	t.Helper()
	tp, err := Open(context.Background(), sim.Path(), nil)
	if err != nil {
		t.Fatalf("Open(%q) = %v", sim.Path(), err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// seal seals a random secret with a random authValue, or fails t.
func seal(t testing.TB, tp *TPM, sel PCRSelection) (s *Sealed, auth, data secret.Bytes) {
	t.Helper()
	auth, data = secret.Random(32), secret.Random(32)
	s, err := tp.Seal(testContext(t), sel, auth, data)
	if err != nil {
		t.Fatalf("Seal(%v) = %v", sel, err)
	}
	return s, auth, data
}

func TestSealRoundTrip(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	for _, sel := range []PCRSelection{DefaultPCRs, {16}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}} {
		t.Run(sel.String(), func(t *testing.T) {
			s, auth, data := seal(t, tp, sel)
			got, err := tp.Unseal(testContext(t), s, auth)
			if err != nil {
				t.Fatalf("Unseal = %v", err)
			}
			if !got.Equal(data) {
				t.Errorf("Unseal returned another secret than Seal sealed")
			}
			if err := tp.Check(testContext(t), s); err != nil {
				t.Errorf("Check = %v, want nil", err)
			}
		})
	}
	// authValues with zero bytes inside and at the end, which go-tpm v0.9.8
	// would cut short if objectAuth passed them on as they are.
	for _, auth := range []secret.Bytes{{1, 0, 2, 3}, {1, 2, 0}, {0}} {
		data := secret.Random(32)
		s, err := tp.Seal(testContext(t), DefaultPCRs, auth, data)
		if err != nil {
			t.Fatalf("Seal = %v", err)
		}
		if got, err := tp.Unseal(testContext(t), s, auth); err != nil || !got.Equal(data) {
			t.Errorf("Unseal with authValue %x = %v, want the secret", []byte(auth), err)
		}
	}
}

func TestSealRefusesNoPCRBinding(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	for _, sel := range []PCRSelection{nil, {}} {
		_, err := tp.Seal(testContext(t), sel, secret.Random(32), secret.Random(32))
		if !errors.Is(err, ErrNoPCRBinding) {
			t.Errorf("Seal(%v) = %v, want ErrNoPCRBinding", sel, err)
		}
	}
	sha1Only := openSim(t, swtpm.StartWithBanks(t, "sha1"))
	if _, err := sha1Only.Seal(testContext(t), DefaultPCRs, secret.Random(32), secret.Random(32)); !errors.Is(err, ErrNoPCRBinding) {
		t.Errorf("Seal on a TPM without a SHA-256 bank = %v, want ErrNoPCRBinding", err)
	}
	for _, sel := range []PCRSelection{{24}, {-1}, {3, 99}} {
		if _, err := tp.Seal(testContext(t), sel, secret.Random(32), secret.Random(32)); err == nil {
			t.Errorf("Seal(%v) = nil error, want an error", sel)
		}
	}
}

func TestParsePCRSelection(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for an error
	}{
		{"0,2,4,7,9", "0,2,4,7,9"},
		{"7, 0,7 ,2", "0,2,7"},
		{"23", "23"},
		{"", ""},
		{"24", ""},
		{"1,,2", ""},
		{"x", ""},
		{"-1", ""},
	} {
		sel, err := ParsePCRSelection(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ParsePCRSelection(%q) = %v, want an error", tc.in, sel)
		case tc.want != "" && (err != nil || sel.String() != tc.want):
			t.Errorf("ParsePCRSelection(%q) = %v, %v, want %s", tc.in, sel, err, tc.want)
		}
	}
}

// extend extends a PCR, as a boot component that measures something does.
func extend(t testing.TB, tp *TPM, pcr int) {
	t.Helper()
	swtpm.ExtendOn(t, tp.tr, pcr, "another boot component")
}

// A PCR extended after sealing must keep the secret, and the refusal must
// not count against the dictionary-attack protection. This does not prove
// that a real firmware's measurements land in the PCRs DefaultPCRs names:
// swtpm has no firmware.
func TestPCRChangedFailsClosed(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	for _, tc := range []struct {
		sel    PCRSelection
		extend int
	}{
		{DefaultPCRs, 4},
		{PCRSelection{7, 16}, 16},
	} {
		t.Run(fmt.Sprintf("%v/%d", tc.sel, tc.extend), func(t *testing.T) {
			s, auth, _ := seal(t, tp, tc.sel)
			extend(t, tp, tc.extend)
			_, err := tp.Unseal(testContext(t), s, auth)
			if !errors.Is(err, ErrPCRMismatch) {
				t.Fatalf("Unseal after PCRExtend(%d) = %v, want ErrPCRMismatch", tc.extend, err)
			}
			if err := tp.Check(testContext(t), s); !errors.Is(err, ErrPCRMismatch) {
				t.Errorf("Check = %v, want ErrPCRMismatch", err)
			}
			info, err := tp.Info(testContext(t))
			if err != nil {
				t.Fatalf("Info = %v", err)
			}
			if info.FailedTries != 0 {
				t.Errorf("after a PCR mismatch the TPM counts %d failed tries, want 0", info.FailedTries)
			}
		})
	}
}

func TestWrongPassword(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	setLockout(t, tp, 5, 600)
	s, auth, data := seal(t, tp, DefaultPCRs)

	for want := 4; want >= 3; want-- {
		_, err := tp.Unseal(testContext(t), s, secret.Random(32))
		var wp *WrongPasswordError
		if !errors.As(err, &wp) {
			t.Fatalf("Unseal with a wrong authValue = %v, want *WrongPasswordError", err)
		}
		if wp.TriesLeft != want {
			t.Errorf("TriesLeft = %d, want %d", wp.TriesLeft, want)
		}
		if Prompt(err) == "" {
			t.Errorf("Prompt(%v) is empty", err)
		}
	}
	got, err := tp.Unseal(testContext(t), s, auth)
	if err != nil || !got.Equal(data) {
		t.Errorf("Unseal with the right authValue after wrong ones = %v, want the secret", err)
	}
}

func TestLockout(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	setLockout(t, tp, 2, 600)
	s, auth, _ := seal(t, tp, DefaultPCRs)

	for want := 1; want >= 0; want-- {
		var wp *WrongPasswordError
		if _, err := tp.Unseal(testContext(t), s, secret.Random(32)); !errors.As(err, &wp) || wp.TriesLeft != want {
			t.Fatalf("Unseal with a wrong authValue = %v, want *WrongPasswordError with %d tries left", err, want)
		}
	}
	for _, a := range []secret.Bytes{secret.Random(32), auth} {
		_, err := tp.Unseal(testContext(t), s, a)
		var lo *LockoutError
		if !errors.As(err, &lo) {
			t.Fatalf("Unseal in lockout = %v, want *LockoutError", err)
		}
		if !lo.Known || lo.Interval != 600*time.Second {
			t.Errorf("LockoutError = %+v, want a known interval of 600s", lo)
		}
		if p := Prompt(err); !strings.Contains(p, "10 minutes") || !strings.Contains(p, "recovery key") {
			t.Errorf("Prompt = %q, want the wait and the recovery key", p)
		}
	}
}

// setLockout sets the dictionary-attack parameters of a fresh TPM.
func setLockout(t testing.TB, tp *TPM, maxTries, interval uint32) {
	t.Helper()
	da := DictionaryAttack{MaxTries: maxTries, Recovery: time.Duration(interval) * time.Second}
	if err := tp.SetDictionaryAttack(testContext(t), da); err != nil {
		t.Fatal(err)
	}
}

// TestSetDictionaryAttack sets the fleet's parameters on a fresh TPM, and
// leaves those of a TPM whose lockout authorization is set, without
// trying the empty one on it.
func TestSetDictionaryAttack(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	if err := tp.SetDictionaryAttack(testContext(t), FleetDictionaryAttack); err != nil {
		t.Fatalf("SetDictionaryAttack = %v", err)
	}
	info, err := tp.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.MaxTries != FleetDictionaryAttack.MaxTries || info.Interval != FleetDictionaryAttack.Recovery {
		t.Errorf("Info = %d tries, %v; want %d, %v", info.MaxTries, info.Interval,
			FleetDictionaryAttack.MaxTries, FleetDictionaryAttack.Recovery)
	}

	_, err = tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("taken")},
	}.Execute(tp.tr)
	if err != nil {
		t.Fatalf("HierarchyChangeAuth(lockout) = %v", err)
	}
	err = tp.SetDictionaryAttack(testContext(t), DictionaryAttack{MaxTries: 5, Recovery: time.Minute})
	if !errors.Is(err, ErrLockoutAuthSet) {
		t.Errorf("SetDictionaryAttack with the lockout authorization set = %v, want ErrLockoutAuthSet", err)
	}
	if info, err := tp.Info(testContext(t)); err != nil || info.MaxTries != FleetDictionaryAttack.MaxTries {
		t.Errorf("Info = %+v, %v; want the fleet's tries left as they were", info, err)
	}
}

func TestOtherTPMRefused(t *testing.T) {
	a := openSim(t, swtpm.Start(t))
	b := openSim(t, swtpm.Start(t))
	s, auth, _ := seal(t, a, DefaultPCRs)

	if _, err := b.Unseal(testContext(t), s, auth); !errors.Is(err, ErrSRKMismatch) {
		t.Errorf("Unseal on another TPM = %v, want ErrSRKMismatch", err)
	}
	if err := b.Check(testContext(t), s); !errors.Is(err, ErrSRKMismatch) {
		t.Errorf("Check on another TPM = %v, want ErrSRKMismatch", err)
	}
	if Prompt(ErrSRKMismatch) == "" || Prompt(ErrPCRMismatch) == "" {
		t.Errorf("Prompt gives no sentence for ErrSRKMismatch or ErrPCRMismatch")
	}
}

// After a reboot (a restart on the same state) the persistent SRK and the
// PCRs' boot values are what they were, so the secret unseals.
func TestUnsealAfterRestart(t *testing.T) {
	sim := swtpm.Start(t)
	tp := openSim(t, sim)
	s, auth, data := seal(t, tp, DefaultPCRs)
	tp.Close()

	sim.Restart(t)
	tp = openSim(t, sim)
	got, err := tp.Unseal(testContext(t), s, auth)
	if err != nil || !got.Equal(data) {
		t.Errorf("Unseal after a restart = %v, want the secret", err)
	}
}

// counter counts the commands sent through it: n those the TPM ran, and
// retries those it answered with TPM_RC_RETRY (sent again).
type counter struct {
	tr         transport.TPM
	n, retries int
}

func (c *counter) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.tr.Send(cmd)
	if err == nil && retry(rsp) {
		c.retries++
	} else {
		c.n++
	}
	return rsp, err
}

// An unseal on a TPM whose SRK is persistent takes the seven commands the
// Unseal doc comment lists.
func TestUnsealCommands(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	s, auth, _ := seal(t, tp, DefaultPCRs)

	c := &counter{tr: tp.tr}
	fresh := New(c, nil)
	if _, err := fresh.Unseal(testContext(t), s, auth); err != nil {
		t.Fatalf("Unseal = %v", err)
	}
	if c.n != 7 {
		t.Errorf("Unseal with a persistent SRK sent %d commands, want 7", c.n)
	}
	fresh.Close()
}

func TestDeviceKey(t *testing.T) {
	sim := swtpm.Start(t)
	tp := openSim(t, sim)
	first := devicePub(t, tp)
	tp.Close()

	sim.Restart(t)
	tp = openSim(t, sim)
	if again := devicePub(t, tp); !again.Equal(first) {
		t.Errorf("the device key changed across a restart")
	}
	if other := devicePub(t, openSim(t, swtpm.Start(t))); other.Equal(first) {
		t.Errorf("another TPM made the same device key")
	}
}

// TestDeviceKeyBesideUnseal signs with the device key between a seal and
// its unseal on swtpm's raw socket, which has no resource manager: the
// device key must hold no transient object slot while it is not signing,
// since the unseal needs them all (the secure moment talks to the key
// server with the device key while it seals the user's key file).
func TestDeviceKeyBesideUnseal(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	k, err := tp.DeviceKey(testContext(t))
	if err != nil {
		t.Fatalf("DeviceKey = %v", err)
	}
	digest := sha256.Sum256([]byte("a challenge from the key server"))
	s, auth, data := seal(t, tp, DefaultPCRs)
	if _, err := k.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign after Seal = %v", err)
	}
	got, err := tp.Unseal(testContext(t), s, auth)
	if err != nil {
		t.Fatalf("Unseal after Sign = %v", err)
	}
	if !got.Equal(data) {
		t.Error("Unseal returned another secret than Seal sealed")
	}
	if _, err := k.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign after Unseal = %v", err)
	}
}

// devicePub returns the device key's public key after checking that it
// signs.
func devicePub(t testing.TB, tp *TPM) *ecdsa.PublicKey {
	t.Helper()
	k, err := tp.DeviceKey(testContext(t))
	if err != nil {
		t.Fatalf("DeviceKey = %v", err)
	}
	pub := k.Public().(*ecdsa.PublicKey)
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		d := h.New()
		d.Write([]byte("a challenge from the key server"))
		sig, err := k.Sign(nil, d.Sum(nil), h)
		if err != nil {
			t.Fatalf("Sign(%v) = %v", h, err)
		}
		if !ecdsa.VerifyASN1(pub, d.Sum(nil), sig) {
			t.Errorf("the %v signature does not verify", h)
		}
	}
	if _, err := k.Sign(nil, make([]byte, 20), crypto.SHA1); err == nil {
		t.Errorf("Sign(SHA-1) = nil error, want an error")
	}
	return pub
}

func TestCancelledContext(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	s, auth, _ := seal(t, tp, DefaultPCRs)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(tp.tr, nil).Unseal(ctx, s, auth); !errors.Is(err, context.Canceled) {
		t.Errorf("Unseal(cancelled) = %v, want context.Canceled", err)
	}
	if _, err := tp.Seal(ctx, DefaultPCRs, auth, secret.Random(32)); !errors.Is(err, context.Canceled) {
		t.Errorf("Seal(cancelled) = %v, want context.Canceled", err)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, path := range []string{
		"unix:" + t.TempDir() + "/none",
		"tcp:127.0.0.1:1",
		t.TempDir() + "/no-such-device",
		t.TempDir(), // not a device
	} {
		if tp, err := Open(testContext(t), path, nil); err == nil {
			tp.Close()
			t.Errorf("Open(%q) = nil error, want an error", path)
		}
	}
}

func TestPrompts(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&WrongPasswordError{TriesLeft: -1}, "The password is wrong."},
		{&WrongPasswordError{TriesLeft: 3}, "You have 3 more tries"},
		{&WrongPasswordError{TriesLeft: 1}, "One more wrong password"},
		{&WrongPasswordError{TriesLeft: 0, Lockout: LockoutError{Interval: time.Hour, Known: true}},
			"last try: the TPM has locked itself. Wait an hour"},
		{&LockoutError{Interval: 90 * time.Minute, Known: true}, "Wait 2 hours and try again. Your recovery key"},
		{&LockoutError{Interval: 30 * time.Second, Known: true}, "Wait a minute"},
		{&LockoutError{Known: true}, "until your IT support resets it"},
		{&LockoutError{}, "Wait a while"},
		{fmt.Errorf("open: %w", errors.Join(errors.New("other"), ErrPCRMismatch)), "recovery key"},
		{ErrSRKMismatch, "not the TPM your key was sealed to"},
		{errors.New("something else"), ""},
	} {
		got := Prompt(tc.err)
		if !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("Prompt(%v) = %q, want it to contain %q", tc.err, got, tc.want)
		}
	}
}

// Open reaches a TPM over TCP, here swtpm's Unix socket behind a relay on
// loopback that the test runs.
func TestOpenTCP(t *testing.T) {
	sim := swtpm.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		u, err := net.Dial("unix", strings.TrimPrefix(sim.Path(), "unix:"))
		if err != nil {
			return
		}
		go func() {
			io.Copy(u, c)
			u.Close() // the client is gone: free swtpm for the next one
		}()
		io.Copy(c, u)
	}()

	tp, err := Open(testContext(t), "tcp:"+ln.Addr().String(), nil)
	if err != nil {
		t.Fatalf("Open(tcp) = %v", err)
	}
	defer tp.Close()
	s, auth, data := seal(t, tp, DefaultPCRs)
	if got, err := tp.Unseal(testContext(t), s, auth); err != nil || !got.Equal(data) {
		t.Errorf("Unseal over TCP = %v, want the secret", err)
	}
}

func FuzzParsePCRSelection(f *testing.F) {
	for _, s := range []string{"0,2,4,7,9", "23", "7, 0,7 ,2", "", "24", "1,,2", "-1", "+3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParsePCRSelection(s)
		if err != nil {
			return
		}
		if err := sel.check(); err != nil {
			t.Errorf("ParsePCRSelection(%q) = %v, which check refuses: %v", s, sel, err)
		}
		again, err := ParsePCRSelection(sel.String())
		if err != nil || again.String() != sel.String() {
			t.Errorf("ParsePCRSelection(%q) = %v, whose String parses to %v, %v", s, sel, again, err)
		}
	})
}

// Another program's RSA key at the SRK's persistent handle (Windows and
// tpm2-tools put theirs there) does not stop sealing and unsealing: they
// make the ECC SRK instead.
func TestForeignKeyAtSRKHandle(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
	}.Execute(tp.tr)
	if err != nil {
		t.Fatalf("CreatePrimary(RSA) = %v", err)
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		PersistentHandle: srkHandle,
	}.Execute(tp.tr)
	if err != nil {
		t.Fatalf("EvictControl = %v", err)
	}
	flush(tp.tr, rsp.ObjectHandle)

	s, auth, data := seal(t, tp, DefaultPCRs)
	fresh := New(tp.tr, nil)
	defer fresh.Close()
	if got, err := fresh.Unseal(testContext(t), s, auth); err != nil || !got.Equal(data) {
		t.Errorf("Unseal with an RSA key at the SRK handle = %v, want the secret", err)
	}
	if ok, err := fresh.SRKPersistent(testContext(t)); err != nil || ok {
		t.Errorf("SRKPersistent = %v, %v, want false", ok, err)
	}
}
