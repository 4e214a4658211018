package signin

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// signIn signs in and closes the key file, returning the result.
func signIn(t *testing.T, d *Device, account, pw string) (*Result, error) {
	t.Helper()
	res, err := d.SignIn(testContext(t), account, secret.Bytes(pw))
	if err == nil {
		t.Cleanup(res.KeyFile.Close)
	}
	return res, err
}

// failedTries returns the TPM's dictionary-attack counter.
func failedTries(t *testing.T, e *env) uint32 {
	t.Helper()
	info, err := e.tpm.Info(testContext(t))
	if err != nil {
		t.Fatalf("Info = %v", err)
	}
	return info.FailedTries
}

func at(d *Device, t time.Time) *Device {
	n := *d
	n.Now = func() time.Time { return t }
	return &n
}

// TestDeployed walks one device through its deployed stage, step by
// step, against the real DC, key server and TPM: each step builds on the
// state the ones before left.
//
// What it does not prove: that the agent at the prompt maps these results
// to no boot (cmds/pbn and the lab's boot tests do), or that a device
// whose disk is open cannot be kept running past its offline limit.
func TestDeployed(t *testing.T) {
	e := newEnv(t)
	p := store.DefaultPolicy("deployed")
	p.UsersPerDevice, p.OfflineLimit = 2, 7*24*time.Hour
	p.Administrators = []string{carol + "@" + e.dc.DNSDomain}
	d := e.newDevice(t, p)
	upn := func(name string) string { return name + "@" + e.dc.DNSDomain }
	now := time.Now()

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"offline before any contact", func(t *testing.T) {
			if _, err := signIn(t, d.offline, alice, password); !errors.Is(err, ErrNoContact) {
				t.Errorf("SignIn(offline, never online) = %v, want ErrNoContact", err)
			}
		}},
		{"online", func(t *testing.T) {
			res, err := signIn(t, d.Device, alice, password)
			if err != nil {
				t.Fatalf("SignIn(alice) = %v", err)
			}
			h := res.KeyFile.Header()
			if !res.Online || res.Made || res.Reprotected || h.UPN != upn(alice) || len(res.KeyFile.Keyring().Groups) == 0 {
				t.Errorf("SignIn(alice) = %+v, header %+v; want her key file, online, with her group keys", res, h)
			}
		}},
		{"wrong password online", func(t *testing.T) {
			// The password's derivation runs beside the directory's
			// check; the TPM is asked only after the directory and the
			// server accepted, so its dictionary-attack counter stays.
			before := failedTries(t, e)
			_, err := signIn(t, d.Device, alice, "Wr0ng-horse")
			if !WrongPassword(err) || ad.ReasonOf(err) != ad.WrongCredentials {
				t.Errorf("SignIn(wrong password) = %v, want the directory's wrong credentials", err)
			}
			if got := failedTries(t, e); got != before {
				t.Errorf("the TPM's failed tries after a wrong password online: %d, want %d", got, before)
			}
		}},
		{"offline", func(t *testing.T) {
			tests := []struct {
				name    string
				now     time.Time
				account string
				pw      string
				want    error
			}{
				{"by principal name", now.Add(time.Hour), upn(alice), password, nil},
				{"within the limit", now.Add(6 * 24 * time.Hour), alice, password, nil},
				{"past the limit", now.Add(8 * 24 * time.Hour), alice, password, ErrOfflineLimit},
				{"clock in 2040", time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC), alice, password, ErrOfflineLimit},
				{"clock in 1980", time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC), alice, password, ErrClockUntrusted},
				{"wrong password", now, alice, "Wr0ng-horse", keyfile.ErrWrongPassword},
				{"unknown account", now, bob, password, ErrUnknownUser},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					_, err := signIn(t, at(d.offline, tt.now), tt.account, tt.pw)
					if !errors.Is(err, tt.want) {
						t.Errorf("SignIn(offline at %v) = %v, want %v", tt.now, err, tt.want)
					}
				})
			}
		}},
		{"offline floor", func(t *testing.T) {
			// The sign-in six days on raised the floor: a clock set back
			// to the day of the contact is refused now.
			_, err := signIn(t, at(d.offline, now.Add(24*time.Hour)), alice, password)
			if !errors.Is(err, ErrClockUntrusted) {
				t.Errorf("SignIn(offline, clock set back) = %v, want ErrClockUntrusted", err)
			}
		}},
		{"bob added", func(t *testing.T) {
			slots := d.keyslots(t)
			res, err := signIn(t, d.Device, bob, password)
			if err != nil {
				t.Fatalf("SignIn(bob) = %v", err)
			}
			if !res.Made || res.KeyFile.Header().Kind != keyfile.KindUser || d.keyslots(t) != slots+1 {
				t.Errorf("SignIn(bob) = %+v, keyslots %d; want a user key file made, keyslot %d added",
					res, d.keyslots(t), slots+1)
			}
			again, err := signIn(t, d.Device, bob, password)
			if err != nil || again.Made || again.KeyFile.Header().ID != res.KeyFile.Header().ID {
				t.Errorf("SignIn(bob again) = %+v, %v; want his key file", again, err)
			}
		}},
		{"administrator account", func(t *testing.T) {
			res, err := signIn(t, d.Device, carol, password)
			if err != nil || !res.Made || res.KeyFile.Header().Kind != keyfile.KindAdministrator {
				t.Fatalf("SignIn(carol) = %+v, %v; want an administrator key file made", res, err)
			}
		}},
		{"too many users", func(t *testing.T) {
			if _, err := signIn(t, d.Device, dave, password); !errors.Is(err, keyserver.ErrTooManyUsers) {
				t.Errorf("SignIn(dave) = %v, want ErrTooManyUsers", err)
			}
		}},
		{"bob removed", func(t *testing.T) {
			ctx := testContext(t)
			info, err := e.admin.Device(ctx, d.id)
			if err != nil {
				t.Fatal(err)
			}
			var sid string
			for _, o := range info.Owners {
				if o.UPN == upn(bob) {
					sid = o.SID
				}
			}
			if err := e.admin.RemoveOwner(ctx, d.id, sid, "left the team"); err != nil {
				t.Fatal(err)
			}
			slots := d.keyslots(t)
			if _, err := signIn(t, d.Device, bob, password); !errors.Is(err, keyserver.ErrUserRemoved) {
				t.Errorf("SignIn(removed bob) = %v, want ErrUserRemoved", err)
			}
			users, _ := d.Users()
			for _, u := range users {
				if u.UPN == upn(bob) {
					t.Errorf("bob's key file is still on the ESP")
				}
			}
			if got := d.keyslots(t); got != slots-1 {
				t.Errorf("keyslots after bob's removal: %d, want %d", got, slots-1)
			}
			if _, err := signIn(t, d.offline, bob, password); !errors.Is(err, ErrUnknownUser) {
				t.Errorf("SignIn(removed bob, offline) = %v, want ErrUnknownUser", err)
			}
		}},
		{"disabled account", func(t *testing.T) {
			disable(t, e.dc, carol)
			_, err := signIn(t, d.Device, carol, password)
			if ad.ReasonOf(err) != ad.AccountDisabled || !strings.Contains(Sentence(err), "disabled") {
				t.Errorf("SignIn(disabled carol) = %v (%q), want the directory's disabled account", err, Sentence(err))
			}
		}},
		{"recovery key", func(t *testing.T) {
			ctx := testContext(t)
			keys, err := e.admin.Recovery(ctx, d.id, "alice forgot her password")
			if err != nil {
				t.Fatal(err)
			}
			var rk keyfile.RecoveryKey
			for _, k := range keys {
				if k.UPN == upn(alice) {
					rk, err = keyfile.ParseRecoveryKey(k.Key)
				}
				k.Key.Wipe()
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.offline.Recover(ctx, keyfile.NewRecoveryKey()); !errors.Is(err, ErrWrongRecoveryKey) {
				t.Errorf("Recover(another key) = %v, want ErrWrongRecoveryKey", err)
			}
			res, err := d.offline.Recover(ctx, rk)
			if err != nil || res.KeyFile.Header().UPN != upn(alice) {
				t.Fatalf("Recover = %+v, %v; want alice's key file", res, err)
			}
			res.KeyFile.Close()
			if _, err := signIn(t, d.Device, alice, password); err != nil {
				t.Fatalf("SignIn(alice, online after the recovery) = %v", err)
			}
			es := e.events(t)
			last := es[len(es)-1]
			if last.Kind != "recovery-used" || last.Detail["key_file"] != res.KeyFile.Header().ID.String() {
				t.Errorf("last event %+v, want alice's recovery-key use", last)
			}
		}},
		{"password changed in AD", func(t *testing.T) {
			const changed = "N3w-battery-staple"
			before, _ := signIn(t, d.offline, alice, password) // the generation before
			setPassword(t, e.dc, alice, changed)
			res, err := signIn(t, d.Device, alice, changed)
			if err != nil || !res.Reprotected {
				t.Fatalf("SignIn(alice, changed password) = %+v, %v; want her key file re-protected", res, err)
			}
			if g, was := res.KeyFile.Header().Generation, before.KeyFile.Header().Generation; g <= was {
				t.Errorf("generation %d after re-protection, want more than %d", g, was)
			}
			if _, err := signIn(t, d.offline, alice, changed); err != nil {
				t.Errorf("SignIn(offline, new password) = %v", err)
			}
			if _, err := signIn(t, d.offline, alice, password); !errors.Is(err, keyfile.ErrWrongPassword) {
				t.Errorf("SignIn(offline, old password) = %v, want ErrWrongPassword", err)
			}
		}},
		{"device lost", func(t *testing.T) {
			if err := e.admin.SetDeviceState(testContext(t), d.id, store.DeviceLost, "stolen"); err != nil {
				t.Fatal(err)
			}
			_, err := signIn(t, d.Device, alice, "N3w-battery-staple")
			if !errors.Is(err, keyserver.ErrDeviceLost) || !strings.Contains(Sentence(err), "blocked") {
				t.Errorf("SignIn(lost device) = %v (%q), want ErrDeviceLost", err, Sentence(err))
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			t.Fatalf("step %q failed: the steps after it build on it", st.name)
		}
	}
}
