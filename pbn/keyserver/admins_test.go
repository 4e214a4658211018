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

// enrollOnly adds an enrol-only administrator called name through ts's
// administrator and returns its client.
func (ts *testServer) enrollOnly(t *testing.T, name string) *Client {
	t.Helper()
	key := newKey(t)
	spki, _ := PublicKey(key)
	if err := ts.admin.AddAdmin(t.Context(), name, store.RoleEnroll, spki); err != nil {
		t.Fatalf("AddAdmin(%s, enroll) = %v", name, err)
	}
	return ts.client(t, key)
}

// TestEnrollOnlyAdmin checks that the imaging image's credential, an
// administrator of store.RoleEnroll, enrolls a device and is refused with
// ErrRoleRefused, and an audit record naming it, on every other
// administrator's endpoint; the refused calls change nothing.
//
// It does not prove that a copy of the credential is harmless: it still
// enrolls devices (which then go through the secure moment like any
// other) until an administrator removes its key.
func TestEnrollOnlyAdmin(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	imaging := ts.enrollOnly(t, "imaging")

	spki, _ := PublicKey(newKey(t))
	dev := store.Device{ID: keyfile.NewID(), Hostname: "pbn-1", Group: "laptops", Key: spki}
	binding := keyfile.NewID()
	if _, err := imaging.Enroll(ctx, dev, binding); err != nil {
		t.Fatalf("Enroll by the enrol-only administrator = %v", err)
	}

	policy := store.DefaultPolicy("laptops")
	policy.Autoboot = false
	other, _ := PublicKey(newKey(t))
	tests := []struct {
		route string
		call  func(ctx context.Context) error
	}{
		{"devices", func(ctx context.Context) error { _, err := imaging.Devices(ctx); return err }},
		{"device", func(ctx context.Context) error { _, err := imaging.Device(ctx, dev.ID); return err }},
		{"device-state", func(ctx context.Context) error {
			return imaging.SetDeviceState(ctx, dev.ID, store.DeviceLost, "test")
		}},
		{"owner-remove", func(ctx context.Context) error {
			return imaging.RemoveOwner(ctx, dev.ID, "S-1-5-21-1-2-3-1101", "test")
		}},
		{"admin-revoke", func(ctx context.Context) error { return imaging.RevokeBinding(ctx, binding) }},
		// Its answer would hold the owner's group keys and the enterprise key.
		{"enroll an owned device", func(ctx context.Context) error {
			owned := store.Device{ID: keyfile.NewID(), Hostname: "pbn-2", Group: "laptops", Key: other}
			_, err := imaging.EnrollOwned(ctx, owned, Owner{Account: "alice@example.test", KeyFile: keyfile.NewID(),
				RecoveryKey: secret.Bytes("111111-222222")})
			return err
		}},
		{"recovery", func(ctx context.Context) error { _, err := imaging.Recovery(ctx, dev.ID, "test"); return err }},
		{"audit", func(ctx context.Context) error {
			return imaging.Audit(ctx, AuditQuery{}, func(store.Event) error { return nil })
		}},
		{"policy", func(ctx context.Context) error { _, err := imaging.Policy(ctx, "laptops"); return err }},
		{"policy-set", func(ctx context.Context) error { return imaging.SetPolicy(ctx, policy) }},
		{"admin-add", func(ctx context.Context) error {
			return imaging.AddAdmin(ctx, "escalated", store.RoleAdmin, other)
		}},
		{"admins", func(ctx context.Context) error { _, err := imaging.Admins(ctx); return err }},
		{"admin-remove", func(ctx context.Context) error { return imaging.RemoveAdmin(ctx, "test-admin", "test") }},
	}
	for _, tt := range tests {
		t.Run(tt.route, func(t *testing.T) {
			if err := tt.call(ctx); !errors.Is(err, ErrRoleRefused) {
				t.Errorf("%s by the enrol-only administrator = %v, want ErrRoleRefused", tt.route, err)
			}
		})
	}

	var refused []string
	for _, e := range ts.events(t) {
		if e.Kind == "admin-refused" {
			if e.Actor != "imaging" || e.Detail["role"] != string(store.RoleEnroll) {
				t.Errorf("refusal %+v, want the actor imaging with the role enroll", e)
			}
			refused = append(refused, e.Detail["route"])
		}
	}
	var want []string
	for _, tt := range tests {
		want = append(want, tt.route)
	}
	if !slices.Equal(refused, want) {
		t.Errorf("refusals in the audit trail: %v, want %v", refused, want)
	}

	// Nothing the refused calls asked for happened.
	if d, err := ts.admin.Device(ctx, dev.ID); err != nil || d.State != store.DeviceActive {
		t.Errorf("Device = %+v, %v; want it active", d, err)
	}
	if b, err := ts.store.Binding(ctx, binding); err != nil || b.State != store.BindingActive {
		t.Errorf("Binding = %+v, %v; want it active", b, err)
	}
	if p, err := ts.admin.Policy(ctx, "laptops"); err != nil || !p.Autoboot {
		t.Errorf("Policy = %+v, %v; want autoboot still on", p, err)
	}
	if _, err := ts.store.Admin(ctx, other); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Admin(the key the enrol-only administrator added) = %v, want ErrNotFound", err)
	}

	// A copy of the image's credential is worthless once its key is
	// removed.
	if err := ts.admin.RemoveAdmin(ctx, "imaging", "the imaging image was rebuilt"); err != nil {
		t.Fatalf("RemoveAdmin(imaging) = %v", err)
	}
	if _, err := imaging.Enroll(ctx, store.Device{ID: keyfile.NewID(), Hostname: "pbn-2", Group: "laptops",
		Key: other}, keyfile.NewID()); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Enroll by the removed administrator = %v, want ErrUnknownKey", err)
	}
}

// TestAddAdmin checks that an administrator adds another, who acts under
// its own name, lists and removes it, each change audited; that a name is
// taken once and a role must be one of the roles; and that an
// administrator does not remove itself.
func TestAddAdmin(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	key := newKey(t)
	spki, _ := PublicKey(key)
	if err := ts.admin.AddAdmin(ctx, "helpdesk-2", store.RoleAdmin, spki); err != nil {
		t.Fatalf("AddAdmin = %v", err)
	}
	helpdesk := ts.client(t, key)
	if err := helpdesk.SetPolicy(ctx, store.DefaultPolicy("kiosks")); err != nil {
		t.Fatalf("SetPolicy by the new administrator = %v", err)
	}
	es := ts.events(t)
	if got := kinds(es); !slices.Equal(got, []string{"admin-add", "policy"}) {
		t.Fatalf("audit trail %v, want [admin-add policy]", got)
	}
	if es[0].Actor != "test-admin" || es[0].Detail["name"] != "helpdesk-2" || es[0].Detail["role"] != "admin" ||
		es[0].Detail["key"] != store.KeyHash(spki) {
		t.Errorf("admin-add event %+v, want test-admin adding helpdesk-2, admin, with its key's hash", es[0])
	}
	if es[1].Actor != "helpdesk-2" {
		t.Errorf("policy event's actor %q, want helpdesk-2", es[1].Actor)
	}

	as, err := ts.admin.Admins(ctx)
	if err != nil || len(as) != 2 || as[0].Name != "helpdesk-2" || as[1].Name != "test-admin" ||
		as[0].Role != store.RoleAdmin {
		t.Errorf("Admins = %+v, %v; want helpdesk-2 and test-admin, both admin", as, err)
	}
	if err := ts.admin.RemoveAdmin(ctx, "test-admin", "leaving"); err == nil {
		t.Error("RemoveAdmin(itself) = nil, want a refusal")
	}
	if err := ts.admin.RemoveAdmin(ctx, "nobody", "typo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveAdmin(nobody) = %v, want ErrNotFound", err)
	}
	if err := ts.admin.RemoveAdmin(ctx, "helpdesk-2", "left the company"); err != nil {
		t.Fatalf("RemoveAdmin(helpdesk-2) = %v", err)
	}
	if _, err := helpdesk.Policy(ctx, "kiosks"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Policy by the removed administrator = %v, want ErrUnknownKey", err)
	}
	if got := kinds(ts.events(t)); !slices.Equal(got, []string{"admin-add", "policy", "admin-remove"}) {
		t.Errorf("audit trail %v, want [admin-add policy admin-remove]", got)
	}

	again, _ := PublicKey(newKey(t))
	for _, tt := range []struct {
		name string
		role store.AdminRole
		key  []byte
	}{
		{"test-admin", store.RoleAdmin, again},
		{"root", "root", again},
		{"bad-key", store.RoleEnroll, []byte("not a key")},
	} {
		if err := ts.admin.AddAdmin(ctx, tt.name, tt.role, tt.key); err == nil {
			t.Errorf("AddAdmin(%s, %s) = nil, want a refusal", tt.name, tt.role)
		}
	}
}
