package keyserver

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

func signIn(d *testDevice, req SignInRequest) (*SignIn, error) {
	if req.Password == nil {
		req.Password = secret.Bytes(req.Account[:len(req.Account)-len("@example.test")] + " pw")
	}
	return d.c.SignIn(context.Background(), req)
}

// TestSignIn walks a device through its deployed stage on the server's
// side: alice's sign-ins, her password change, bob added, an
// administrator account of the policy, bob removed, recovery reports.
func TestSignIn(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	p := store.DefaultPolicy("laptops")
	p.UsersPerDevice, p.OfflineLimit = 2, 7*24*time.Hour
	p.Administrators = []string{"EVE@example.test"}
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	d := ts.enroll(t, "laptop-1", "laptops")
	_, aliceKF, err := claimAs(d, "alice@example.test", "alice pw")
	if err != nil {
		t.Fatalf("Claim(alice) = %v", err)
	}

	before := time.Now()
	in, err := signIn(d, SignInRequest{Account: "alice@example.test", KeyFile: aliceKF})
	if err != nil {
		t.Fatalf("SignIn(alice) = %v", err)
	}
	if in.UPN != "alice@example.test" || in.Kind != keyfile.KindUser || in.Policy.OfflineLimit != p.OfflineLimit ||
		in.Time.Before(before.Add(-time.Second)) || in.RecoveryKey != nil || in.Enterprise != nil {
		t.Errorf("SignIn(alice) = %+v, want alice as user, the policy's limit, the time and no keys", in)
	}

	// A password changed in the directory: the device asks for her
	// escrowed recovery key.
	in, err = signIn(d, SignInRequest{Account: "alice@example.test", KeyFile: aliceKF, Open: aliceKF,
		Reason: ResealPasswordChanged})
	if err != nil || !in.RecoveryKey.Equal(secret.Bytes("recovery key of alice@example.test")) {
		t.Errorf("SignIn(alice, open her key file) = %v, want her escrowed recovery key", err)
	}

	// bob, a further user: a new key file, authorized by alice's.
	bobKF := keyfile.NewID()
	bob, err := signIn(d, SignInRequest{Account: "bob@example.test", NewKeyFile: bobKF,
		RecoveryKey: secret.Bytes("bob's recovery key"), Open: aliceKF})
	if err != nil {
		t.Fatalf("SignIn(bob, new key file) = %v", err)
	}
	if bob.Kind != keyfile.KindUser || len(bob.Groups) != 1 || len(bob.Enterprise) != enterpriseKeySize ||
		!bob.RecoveryKey.Equal(secret.Bytes("recovery key of alice@example.test")) {
		t.Errorf("SignIn(bob, new key file) = %+v, want a user's keys and alice's recovery key", bob)
	}
	if _, err := signIn(d, SignInRequest{Account: "bob@example.test", KeyFile: bobKF}); err != nil {
		t.Errorf("SignIn(bob, his key file) = %v", err)
	}

	// eve is an administrator account of the policy: a key file on any
	// device of the group, beyond its users per device.
	eve, err := signIn(d, SignInRequest{Account: "eve@example.test", NewKeyFile: keyfile.NewID(),
		RecoveryKey: secret.Bytes("eve's recovery key"), Open: aliceKF})
	if err != nil || eve.Kind != keyfile.KindAdministrator {
		t.Errorf("SignIn(eve, new key file) = %+v, %v; want an administrator's", eve, err)
	}
	info, err := ts.admin.Device(ctx, d.id)
	if err != nil || len(info.Owners) != 2 {
		t.Errorf("Device = %+v, %v; want alice and bob as owners, not eve", info, err)
	}

	if err := ts.admin.RemoveOwner(ctx, d.id, bob.SID, "left the team"); err != nil {
		t.Fatalf("RemoveOwner(bob) = %v", err)
	}
	if err := ts.admin.RemoveOwner(ctx, d.id, bob.SID, "again"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveOwner(bob again) = %v, want ErrNotFound", err)
	}

	// alice reports a recovery-key use of her key file.
	at := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	if _, err := signIn(d, SignInRequest{Account: "alice@example.test", KeyFile: aliceKF,
		Recoveries: []RecoveryUse{{aliceKF, at}}}); err != nil {
		t.Errorf("SignIn(alice, with a recovery report) = %v", err)
	}
	es := ts.events(t)
	last := es[len(es)-1]
	if last.Kind != "recovery-used" || last.Detail["key_file"] != aliceKF.String() ||
		last.Detail["at"] != "2026-03-01T08:00:00Z" || last.Device != d.id.String() {
		t.Errorf("last event %+v, want alice's recovery-key use", last)
	}
	want := []string{"policy", "enroll", "claim", "signin", "signin", "signin", "signin", "signin",
		"owner-removed", "signin", "recovery-used"}
	if got := kinds(es); !slices.Equal(got, want) {
		t.Errorf("audit trail %v, want %v", got, want)
	}
}

// TestSignInRefused checks the refusals of a sign-in. It does not prove
// that a refused device cannot open its disk offline: that is the key
// file's offline limit, on the device.
func TestSignInRefused(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	d := ts.enroll(t, "laptop-1", "laptops") // one user per device
	_, aliceKF, err := claimAs(d, "alice@example.test", "alice pw")
	if err != nil {
		t.Fatalf("Claim(alice) = %v", err)
	}
	bobKF := keyfile.NewID()
	lost := ts.enroll(t, "lost", "laptops")
	_, lostKF, err := claimAs(lost, "alice@example.test", "alice pw")
	if err != nil {
		t.Fatalf("Claim(alice, lost) = %v", err)
	}
	if err := ts.admin.SetDeviceState(ctx, lost.id, store.DeviceLost, "left on a train"); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		d    *testDevice
		req  SignInRequest
		want error
	}{
		{"wrong password", d, SignInRequest{Account: "alice@example.test", Password: secret.Bytes("old"),
			KeyFile: aliceKF}, ErrLoginRefused},
		{"not a user of the device", d, SignInRequest{Account: "bob@example.test", KeyFile: bobKF},
			ErrUserRemoved},
		{"another user's key file", d, SignInRequest{Account: "alice@example.test", KeyFile: bobKF},
			ErrNotFound},
		{"too many users", d, SignInRequest{Account: "bob@example.test", NewKeyFile: bobKF,
			RecoveryKey: secret.Bytes("k"), Open: aliceKF}, ErrTooManyUsers},
		{"no recovery key to hand out", d, SignInRequest{Account: "alice@example.test", KeyFile: aliceKF,
			Open: bobKF}, errWire},
		{"device lost", lost, SignInRequest{Account: "alice@example.test", KeyFile: lostKF}, ErrDeviceLost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := signIn(tt.d, tt.req)
			if tt.want == errWire {
				var e *Error
				if !errors.As(err, &e) || e.Code != codeBadRequest.name {
					t.Errorf("SignIn = %v, want a bad request", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("SignIn(%s) = %v, want %v", tt.req.Account, err, tt.want)
			}
		})
	}
	if info, _ := ts.admin.Device(ctx, d.id); len(info.Owners) != 1 {
		t.Errorf("refused sign-ins changed the owners: %+v", info.Owners)
	}
}
