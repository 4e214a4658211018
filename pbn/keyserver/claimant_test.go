package keyserver

import (
	"errors"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// TestAdministratorInstalls is the use case of an administrator who
// installs a device with their own account: eve, an administrator account
// of the policy outside its allowed groups, claims the device and gets an
// administrator's key file without becoming an owner; the first user who
// signs in afterwards, alice, becomes the primary user within one user per
// device, and the audit trail says so; bob finds the device full.
//
// It does not prove that the device makes eve's key file of the kind the
// server says (pbn/signin's TestAdministratorInstalls does, with the real
// secure moment).
func TestAdministratorInstalls(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	p := store.DefaultPolicy("laptops") // one user per device
	p.Administrators = []string{"EVE@example.test"}
	p.AllowedGroups = []string{staff.SID}
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	d := ts.enroll(t, "laptop-1", "laptops")

	eve, eveKF, err := claimAs(d, "eve@example.test", "eve pw")
	if err != nil {
		t.Fatalf("Claim(eve) = %v", err)
	}
	eve.Wipe()
	if eve.Kind != keyfile.KindAdministrator || eve.Primary || len(eve.Enterprise) != enterpriseKeySize {
		t.Errorf("Claim(eve) = %+v, want an administrator's keys, not the primary user", eve)
	}
	// A claim repeated after a power cut stays an administrator's.
	again, _, err := claimAs(d, "eve@example.test", "eve pw")
	if err != nil {
		t.Fatalf("Claim(eve again) = %v", err)
	}
	again.Wipe()
	if again.Kind != keyfile.KindAdministrator || again.Primary {
		t.Errorf("Claim(eve again) = %+v, want an administrator's", again)
	}
	if info, err := ts.admin.Device(ctx, d.id); err != nil || len(info.Owners) != 0 {
		t.Errorf("Device after eve's claim = %+v, %v; want no owners", info, err)
	}

	alice, err := signIn(d, SignInRequest{Account: "alice@example.test", NewKeyFile: keyfile.NewID(),
		RecoveryKey: secret.Bytes("alice's recovery key"), Open: eveKF})
	if err != nil {
		t.Fatalf("SignIn(alice, new key file) = %v", err)
	}
	alice.Wipe()
	if alice.Kind != keyfile.KindUser {
		t.Errorf("SignIn(alice, new key file) = %+v, want a user's", alice)
	}
	info, err := ts.admin.Device(ctx, d.id)
	if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != "alice@example.test" || !info.Owners[0].Primary {
		t.Errorf("Device after alice's sign-in = %+v, %v; want alice, primary", info, err)
	}
	_, err = signIn(d, SignInRequest{Account: "bob@example.test", NewKeyFile: keyfile.NewID(),
		RecoveryKey: secret.Bytes("bob's recovery key"), Open: eveKF})
	if !errors.Is(err, ErrTooManyUsers) {
		t.Errorf("SignIn(bob, new key file) = %v, want ErrTooManyUsers", err)
	}

	es := ts.events(t)
	if got, want := kinds(es), []string{"policy", "enroll", "claim", "claim", "signin"}; !slices.Equal(got, want) {
		t.Fatalf("audit trail %v, want %v", got, want)
	}
	if c := es[2].Detail; c["kind"] != "administrator" || c["primary"] != "false" || c["upn"] != "eve@example.test" {
		t.Errorf("eve's claim event %v, want an administrator's, not primary", c)
	}
	if s := es[4].Detail; s["owner"] != "primary" || s["upn"] != "alice@example.test" {
		t.Errorf("alice's sign-in event %v, want her added as the primary user", s)
	}
}
