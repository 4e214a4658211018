package keyserver

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// directory is a table of accounts that satisfies Directory.
//
// It stands in for pbn/ad, whose Samba AD DC harness is on another branch:
// these tests prove the server's policy, ownership, escrow and audit around
// a Login, not how a real directory answers.
// TODO: run the claim tests against the Samba AD DC of internal/samba once
// branch ad is merged; until then nothing here proves that pbn/ad's Login
// fits this interface in practice.
type directory map[string]struct {
	password string
	id       Identity
}

func (d directory) Login(ctx context.Context, account string, password secret.Bytes) (*Identity, error) {
	u, ok := d[account]
	if !ok || !password.Equal(secret.Bytes(u.password)) {
		return nil, errors.New("invalid credentials")
	}
	return &u.id, nil
}

var (
	staff = Group{SID: "S-1-5-21-7-1100", Name: "staff"}
	sales = Group{SID: "S-1-5-21-7-1101", Name: "sales"}
)

var testDirectory = directory{
	"alice@example.test": {"alice pw", Identity{UPN: "alice@example.test", SID: "S-1-5-21-7-2001",
		Groups: []Group{staff, sales}}},
	"bob@example.test": {"bob pw", Identity{UPN: "bob@example.test", SID: "S-1-5-21-7-2002",
		Groups: []Group{staff}}},
	"eve@example.test": {"eve pw", Identity{UPN: "eve@example.test", SID: "S-1-5-21-7-2003"}},
}

func claimAs(d *testDevice, account, password string) (*Claim, keyfile.ID, error) {
	kf := keyfile.NewID()
	c, err := d.c.Claim(context.Background(), ClaimRequest{Binding: d.binding, Account: account,
		Password: secret.Bytes(password), KeyFile: kf,
		RecoveryKey: secret.Bytes("recovery key of " + account)})
	return c, kf, err
}

func TestClaim(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	d1 := ts.enroll(t, "laptop-1", "laptops")
	d2 := ts.enroll(t, "laptop-2", "laptops")

	alice, aliceKF, err := claimAs(d1, "alice@example.test", "alice pw")
	if err != nil {
		t.Fatalf("Claim(alice) = %v", err)
	}
	defer alice.Wipe()
	if alice.UPN != "alice@example.test" || !alice.Primary || len(alice.Groups) != 2 ||
		len(alice.Enterprise) != enterpriseKeySize {
		t.Errorf("Claim(alice) = %+v, want alice, primary, 2 group keys and the enterprise key", alice)
	}
	bob, _, err := claimAs(d2, "bob@example.test", "bob pw")
	if err != nil {
		t.Fatalf("Claim(bob) = %v", err)
	}
	defer bob.Wipe()
	if !bob.Enterprise.Equal(alice.Enterprise) || !bob.Groups[0].Key.Equal(alice.Groups[0].Key) {
		t.Errorf("alice and bob got different enterprise or staff keys")
	}
	if alice.Groups[0].Key.Equal(alice.Groups[1].Key) {
		t.Errorf("staff and sales got the same key")
	}

	// One user per device by default; the owner may claim again.
	if _, _, err := claimAs(d1, "bob@example.test", "bob pw"); !errors.Is(err, ErrTooManyUsers) {
		t.Errorf("Claim(bob on alice's device) = %v, want ErrTooManyUsers", err)
	}
	if again, _, err := claimAs(d1, "alice@example.test", "alice pw"); err != nil || !again.Primary {
		t.Errorf("Claim(alice again) = %v, want her primary ownership", err)
	}

	info, err := ts.admin.Device(ctx, d1.id)
	if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != "alice@example.test" {
		t.Errorf("Device(laptop-1) = %+v, %v, want alice as owner", info, err)
	}

	keys, err := ts.admin.Recovery(ctx, d1.id, "ticket 42: user forgot password")
	if err != nil || len(keys) == 0 {
		t.Fatalf("Recovery = %v, %v", keys, err)
	}
	var found bool
	for _, k := range keys {
		found = found || k.KeyFileID == aliceKF && k.Key.Equal(secret.Bytes("recovery key of alice@example.test"))
		k.Key.Wipe()
	}
	if !found {
		t.Errorf("Recovery did not return alice's escrowed key")
	}
	if _, err := ts.admin.Recovery(ctx, d1.id, ""); err == nil {
		t.Errorf("Recovery without a reason = nil, want an error")
	}

	es := ts.events(t)
	want := []string{"enroll", "enroll", "claim", "claim", "claim", "recovery"}
	if got := kinds(es); !slices.Equal(got, want) {
		t.Fatalf("audit trail %v, want %v", got, want)
	}
	last := es[len(es)-1]
	if last.Detail["reason"] != "ticket 42: user forgot password" || last.Actor != "test-admin" ||
		last.Device != d1.id.String() {
		t.Errorf("recovery event %+v, want reason, administrator and device", last)
	}
	if es[2].Detail["upn"] != "alice@example.test" || es[2].Remote == "" {
		t.Errorf("claim event %+v, want alice and the device's address", es[2])
	}
}

func TestClaimRefused(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	p := store.DefaultPolicy("sales")
	p.AllowedGroups = []string{sales.SID}
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	d := ts.enroll(t, "laptop-1", "sales")

	tests := []struct {
		name, account, password string
		want                    error
	}{
		{"wrong password", "alice@example.test", "wrong", ErrLoginRefused},
		{"unknown account", "mallory@example.test", "x", ErrLoginRefused},
		{"not in an allowed group", "bob@example.test", "bob pw", ErrNotAllowed},
		{"no groups", "eve@example.test", "eve pw", ErrNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := claimAs(d, tt.account, tt.password); !errors.Is(err, tt.want) {
				t.Errorf("Claim(%s) = %v, want %v", tt.account, err, tt.want)
			}
		})
	}
	if info, _ := ts.admin.Device(ctx, d.id); len(info.Owners) != 0 {
		t.Errorf("refused claims recorded owners %+v", info.Owners)
	}
}

// TestDeviceRefused checks that a lost or retired device and a revoked
// binding are refused. It does not prove that the device cannot open its
// disk some other way (a user's key file or a recovery key).
func TestDeviceRefused(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()

	lost := ts.enroll(t, "lost", "laptops")
	if err := ts.admin.SetDeviceState(ctx, lost.id, store.DeviceLost, "stolen from a car"); err != nil {
		t.Fatal(err)
	}
	retired := ts.enroll(t, "retired", "laptops")
	if err := ts.admin.SetDeviceState(ctx, retired.id, store.DeviceRetired, "end of life"); err != nil {
		t.Fatal(err)
	}
	revoked := ts.enroll(t, "revoked", "laptops")
	if err := revoked.c.Revoke(ctx, revoked.binding); err != nil {
		t.Fatalf("Revoke(own binding) = %v", err)
	}
	adminRevoked := ts.enroll(t, "admin-revoked", "laptops")
	if err := ts.admin.RevokeBinding(ctx, adminRevoked.binding); err != nil {
		t.Fatalf("RevokeBinding = %v", err)
	}
	other := ts.enroll(t, "other", "laptops")
	stranger := &testDevice{c: ts.client(t, newKey(t)), binding: other.binding}

	tests := []struct {
		name string
		d    *testDevice
		want error
	}{
		{"lost", lost, ErrDeviceLost},
		{"retired", retired, ErrDeviceRetired},
		{"binding revoked by the device", revoked, ErrBindingRevoked},
		{"binding revoked by an administrator", adminRevoked, ErrBindingRevoked},
		{"another device's binding", &testDevice{c: revoked.c, binding: other.binding}, ErrBindingRevoked},
		{"unknown key", stranger, ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := claimAs(tt.d, "alice@example.test", "alice pw")
			if !errors.Is(err, tt.want) {
				t.Errorf("Claim = %v, want %v", err, tt.want)
			}
			if _, err := tt.d.c.Unlock(ctx, tt.d.binding, "kid", []byte(`{}`)); !errors.Is(err, tt.want) {
				t.Errorf("Unlock = %v, want %v", err, tt.want)
			}
		})
	}
	if err := other.c.Revoke(ctx, lost.binding); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revoke(another device's binding) = %v, want ErrNotFound", err)
	}

	want := []string{"enroll", "device-state", "enroll", "device-state", "enroll", "revoke",
		"enroll", "revoke", "enroll"}
	if got := kinds(ts.events(t)); !slices.Equal(got, want) {
		t.Errorf("audit trail %v, want %v", got, want)
	}
}
