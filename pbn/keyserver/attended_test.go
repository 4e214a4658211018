package keyserver

import (
	"context"
	"errors"
	"testing"

	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// TestUnlockAttended runs PBN-mode unlocks on devices whose group's policy
// turns autoboot off: the unattended unlock is refused before and after a
// claim; the unlock that carries the user at the prompt (WithSignIn) opens
// the key file only once that user has claimed this device, and is
// audited with the user's UPN. It does not prove anything about a device
// key and a user's password in an attacker's hands together: with both,
// the attacker is the device's owner signing in, as far as the server can
// tell.
func TestUnlockAttended(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	p := store.DefaultPolicy("kiosks")
	p.Autoboot, p.UsersPerDevice = false, 2
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	d1, d2 := ts.enroll(t, "kiosk-1", "kiosks"), ts.enroll(t, "kiosk-2", "kiosks")
	b, fde := provisioningFile(t, d1)
	as := func(account, password string) context.Context {
		return WithSignIn(ctx, account, secret.Bytes(password))
	}

	if _, _, err := claimAs(d2, "bob@example.test", "bob pw"); err != nil {
		t.Fatalf("Claim(bob, kiosk-2) = %v", err)
	}
	before := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"unattended", ctx, ErrNotAllowed},
		{"alice before her claim", as("alice@example.test", "alice pw"), ErrNotAllowed},
		{"bob, who claimed another device", as("bob@example.test", "bob pw"), ErrNotAllowed},
	}
	for _, tt := range before {
		if err := openWith(t, tt.ctx, b, d1.factor(), fde); !errors.Is(err, tt.want) {
			t.Errorf("Open(network), %s = %v, want %v", tt.name, err, tt.want)
		}
	}

	if _, _, err := claimAs(d1, "alice@example.test", "alice pw"); err != nil {
		t.Fatalf("Claim(alice, kiosk-1) = %v", err)
	}
	after := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"unattended", ctx, ErrNotAllowed},
		{"alice, wrong password", as("alice@example.test", "bob pw"), ErrLoginRefused},
		{"bob, who claimed another device", as("bob@example.test", "bob pw"), ErrNotAllowed},
		{"eve, who claimed nothing", as("eve@example.test", "eve pw"), ErrNotAllowed},
		{"alice", as("alice@example.test", "alice pw"), nil},
	}
	for _, tt := range after {
		if err := openWith(t, tt.ctx, b, d1.factor(), fde); !errors.Is(err, tt.want) {
			t.Errorf("Open(network) after alice's claim, %s = %v, want %v", tt.name, err, tt.want)
		}
	}

	var unlocks []store.Event
	for _, e := range ts.events(t) {
		if e.Kind == "unlock" {
			unlocks = append(unlocks, e)
		}
	}
	if len(unlocks) != 1 || unlocks[0].Device != d1.id.String() ||
		unlocks[0].Detail["upn"] != "alice@example.test" || unlocks[0].Detail["binding"] != d1.binding.String() {
		t.Errorf("unlock events %+v, want alice's one on kiosk-1 with its binding", unlocks)
	}
}

// TestUnlockSignInIgnoredWithAutoboot checks that where the policy allows
// autoboot, an unlock does not depend on the user at the prompt: the
// directory is not asked, so a wrong password does not stop it, and the
// audit trail names no user.
func TestUnlockSignInIgnoredWithAutoboot(t *testing.T) {
	ts := startServer(t, nil, nil)
	d := ts.enroll(t, "laptop-1", "laptops")
	b, fde := provisioningFile(t, d)
	ctx := WithSignIn(t.Context(), "alice@example.test", secret.Bytes("not alice's"))
	if err := openWith(t, ctx, b, d.factor(), fde); err != nil {
		t.Fatalf("Open(network) with a wrong password and autoboot = %v, want nil", err)
	}
	es := ts.events(t)
	if last := es[len(es)-1]; last.Kind != "unlock" || last.Detail["upn"] != "" {
		t.Errorf("last event %+v, want an unlock naming no user", last)
	}
}
