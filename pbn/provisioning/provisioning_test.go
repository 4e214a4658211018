package provisioning

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// unlocks counts the unlocks the key server recorded for the device.
func (e *env) unlocks(t *testing.T) int {
	t.Helper()
	n := 0
	err := e.admin.Audit(testContext(t), keyserver.AuditQuery{}, func(ev store.Event) error {
		if ev.Kind == "unlock" && ev.Device == e.device.String() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return n
}

// TestAutoboot lets the countdown run out: the provisioning key file opens
// with the key server's help, its FDE secret opens the volume, and the
// server recorded the unlock.
func TestAutoboot(t *testing.T) {
	e := newEnv(t)
	s := newSession(t)
	ctx := testContext(t)

	st := e.stage(t, s, e.ad, nil)
	prompted := 0
	st.Prompted = func() { prompted++ }
	res, err := st.Run(ctx)
	if err != nil {
		t.Fatalf("Run = %v\n%s", err, s.out)
	}
	defer res.KeyFile.Close()
	if prompted != 0 {
		t.Errorf("Prompted called %d times in an autoboot, want 0", prompted)
	}
	if res.Mode != Autoboot || res.KeyFile.Header().Kind != keyfile.KindProvisioning {
		t.Errorf("Run = %v with a %v key file, want autoboot with the provisioning key file",
			res.Mode, res.KeyFile.Header().Kind)
	}
	if _, err := e.volume.Find(ctx, res.KeyFile.Keyring().FDE); err != nil {
		t.Errorf("the autoboot's FDE secret: Find = %v", err)
	}
	if want := "Booting unattended in 1 s. Press Enter to sign in.\n"; !strings.Contains(s.out.String(), want) {
		t.Errorf("console:\n%s\nwant %q", s.out, want)
	}
	if n := e.unlocks(t); n != 1 {
		t.Errorf("the server recorded %d unlocks, want 1", n)
	}
}

// TestNoAutoboot checks that a device the server refuses, or cannot help,
// never boots unattended: the prompt says why and offers the sign-in. It
// does not prove that the network factor's secret stays unknown (pbn/tang's
// tests do): only that the stage does not go on without it.
func TestNoAutoboot(t *testing.T) {
	tests := []struct {
		name  string
		fault func(t *testing.T, e *env)
		want  string
	}{
		{"device lost", func(t *testing.T, e *env) {
			if err := e.admin.SetDeviceState(testContext(t), e.device, store.DeviceLost, "test"); err != nil {
				t.Fatal(err)
			}
		}, "blocked by your IT department"},
		{"binding revoked", func(t *testing.T, e *env) {
			f, _ := keyfile.Load(keyfile.OSFS{}, e.prov)
			if err := e.admin.RevokeBinding(testContext(t), f.Header().ID); err != nil {
				t.Fatal(err)
			}
		}, "start-up key is no longer valid"},
		{"autoboot off", func(t *testing.T, e *env) {
			p := store.DefaultPolicy("laptops")
			p.Autoboot = false
			if err := e.admin.SetPolicy(testContext(t), p); err != nil {
				t.Fatal(err)
			}
		}, "may not start unattended"},
		{"server down", func(t *testing.T, e *env) { e.stop() }, "cannot reach the company's key server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.fault(t, e)
			s := newSession(t)
			s.in.Close() // nobody signs in

			_, err := e.stage(t, s, e.ad, nil).Run(testContext(t))
			if !errors.Is(err, console.ErrClosed) {
				t.Errorf("Run = %v, want console.ErrClosed from the sign-in prompt", err)
			}
			out := s.out.String()
			if !strings.Contains(out, tt.want) || !strings.Contains(out, signInLine+"\nAccount: ") {
				t.Errorf("console:\n%s\nwant %q, then the sign-in prompt", out, tt.want)
			}
			if strings.Contains(out, "Booting unattended") {
				t.Errorf("console:\n%s\nwant no countdown", out)
			}
		})
	}
}

// TestSignIn presses Enter during the countdown and signs in, first with
// a wrong password: the secure moment makes the device the user's, and
// each of its steps is reported.
func TestSignIn(t *testing.T) {
	e := newEnv(t)
	s := newSession(t)
	s.typeIn(t, "\r"+user+"\rwrong-Passw0rd\r"+user+"\r"+password+"\r")
	s.in.Close()
	var steps []StepEvent

	st := e.stage(t, s, e.ad, &steps)
	prompted := 0
	st.Prompted = func() { prompted++ }
	res, err := st.Run(testContext(t))
	if err != nil {
		t.Fatalf("Run = %v\n%s", err, s.out)
	}
	defer res.KeyFile.Close()
	if prompted != 1 {
		t.Errorf("Prompted called %d times for two sign-ins, want once", prompted)
	}
	if h := res.KeyFile.Header(); res.Mode != SignedIn || h.Kind != keyfile.KindUser ||
		!strings.HasPrefix(h.UPN, user+"@") {
		t.Errorf("Run = %v with key file %+v, want sign-in with %s's key file", res.Mode, h, user)
	}
	out := s.out.String()
	wrong := ad.WrongCredentials.Sentence()
	if !strings.Contains(out, "Account: "+user+"\nPassword for "+user+": ****") || !strings.Contains(out, wrong) {
		t.Errorf("console:\n%s\nwant the account echoed, the password masked and %q", out, wrong)
	}
	if _, err := os.Stat(e.prov); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the provisioning key file: Stat = %v, want it removed", err)
	}
	if _, err := e.volume.Find(testContext(t), res.KeyFile.Keyring().FDE); err != nil {
		t.Errorf("the user's FDE secret: Find = %v", err)
	}

	// The wrong password's authentication failed; then every step ran.
	var got []securemoment.Step
	for _, ev := range steps {
		if ev.Did && !ev.Failed {
			got = append(got, ev.Step)
		}
	}
	if !slices.Equal(got, securemoment.Steps) {
		t.Errorf("steps reported %v, want %v", got, securemoment.Steps)
	}
	if len(steps) == 0 || !steps[0].Failed || steps[0].Step != securemoment.StepAuthenticate {
		t.Errorf("first step reported %+v, want the failed authentication", steps)
	}
	if e.unlocks(t) == 0 {
		t.Error("the server recorded no unlock for the secure moment's keyslot")
	}
}

// TestSignInChangesPassword: a new account whose password must change at
// the first sign-in chooses a new one at the prompt, and the secure moment
// goes on with it.
func TestSignInChangesPassword(t *testing.T) {
	e := newEnv(t)
	s := newSession(t)
	const newPassword = "N3w-battery-staple"
	s.typeIn(t, "\r"+newHire+"\r"+password+"\r"+newPassword+"\r"+newPassword+"\r")
	s.in.Close()
	st := e.stage(t, s, e.ad, nil)
	changer, err := ad.New(ad.Config{Domain: e.dc.DNSDomain, DCs: []string{e.dc.LDAPS()}, CA: e.dc.CA.PEM,
		ChangeAccount: changeAccount + "@" + e.dc.DNSDomain, ChangeAccountPassword: secret.Bytes(password)})
	if err != nil {
		t.Fatal(err)
	}
	st.Passwords = changer

	res, err := st.Run(testContext(t))
	if err != nil {
		t.Fatalf("Run = %v\n%s", err, s.out)
	}
	defer res.KeyFile.Close()
	if h := res.KeyFile.Header(); !strings.HasPrefix(h.UPN, newHire+"@") {
		t.Errorf("key file of %q, want %s's", h.UPN, newHire)
	}
	out := s.out.String()
	for _, want := range []string{ad.PasswordMustChange.Sentence(), "New password: ****", "New password again: ****",
		"Your password is changed.\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("console:\n%s\nwant %q", out, want)
		}
	}
	if _, err := e.ad.Login(testContext(t), newHire, secret.Bytes(newPassword)); err != nil {
		t.Errorf("Login with the new password = %v", err)
	}
	// The old password is not checked: Samba still takes it for an hour
	// ("old password allowed period"), as Windows does for NTLM.
	// The key file opens with the password chosen at the prompt.
	if _, err := e.volume.Find(testContext(t), res.KeyFile.Keyring().FDE); err != nil {
		t.Errorf("the new key file's FDE secret: Find = %v", err)
	}
}

// TestSignInLimits checks the sign-in's limits: too many wrong passwords
// end it, and a directory that cannot be reached is said plainly and the
// prompt comes back.
func TestSignInLimits(t *testing.T) {
	e := newEnv(t)

	t.Run("wrong passwords", func(t *testing.T) {
		s := newSession(t)
		s.typeIn(t, "\r"+user+"\rwrong-1\r"+user+"\rwrong-2\r")
		s.in.Close()
		st := e.stage(t, s, e.ad, nil)
		st.Tries = 2
		_, err := st.Run(testContext(t))
		if !errors.Is(err, ErrNoSignIn) || !errors.Is(err, console.ErrTooManyTries) {
			t.Errorf("Run = %v, want ErrNoSignIn with console.ErrTooManyTries", err)
		}
	})

	t.Run("DC down", func(t *testing.T) {
		// A DC URL where nothing listens: the port of a closed listener.
		dead, err := ad.New(ad.Config{Domain: e.dc.DNSDomain, DCs: []string{"ldaps://127.0.0.1:1"},
			CA: e.dc.CA.PEM})
		if err != nil {
			t.Fatal(err)
		}
		s := newSession(t)
		s.typeIn(t, "\r"+user+"\r"+password+"\r")
		st := e.stage(t, s, dead, nil)
		done := make(chan error, 1)
		go func() { _, err := st.Run(testContext(t)); done <- err }()
		waitFor(t, s, ad.Unreachable.Sentence()+"\nAccount: ")
		s.in.Close()
		if err := <-done; !errors.Is(err, console.ErrClosed) {
			t.Errorf("Run = %v, want console.ErrClosed at the prompt that came back", err)
		}
		if _, err := os.Stat(e.prov); err != nil {
			t.Errorf("the provisioning key file: Stat = %v, want it kept", err)
		}
	})
}

// TestOwned checks that a device whose secure moment was cut short does
// not boot unattended, though the server would help: it asks its owner
// to sign in.
func TestOwned(t *testing.T) {
	e := newEnv(t)
	s := newSession(t)
	s.in.Close()
	st := e.stage(t, s, e.ad, nil)
	st.Owned = true

	if _, err := st.Run(testContext(t)); !errors.Is(err, console.ErrClosed) {
		t.Errorf("Run = %v, want console.ErrClosed from the sign-in prompt", err)
	}
	if out := s.out.String(); !strings.HasPrefix(out, finishLine+"\nAccount: ") {
		t.Errorf("console:\n%s\nwant %q and the prompt", out, finishLine)
	}
	if n := e.unlocks(t); n != 0 {
		t.Errorf("the server recorded %d unlocks, want none", n)
	}
}

// TestSentence checks the lines for errors the key server's client
// returns in PBN mode.
func TestSentence(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&keyserver.Error{Code: "device-lost"}, "blocked"},
		{&keyserver.Error{Code: "not-allowed"}, "may not start unattended"},
		{context.DeadlineExceeded, "cannot reach"},
		{disk.ErrWrongKey, "could not be unlocked over the network"},
	}
	for _, tt := range tests {
		if got := Sentence(tt.err); !strings.Contains(got, tt.want) || !strings.HasSuffix(got, ".") {
			t.Errorf("Sentence(%v) = %q, want a sentence with %q", tt.err, got, tt.want)
		}
	}
}
