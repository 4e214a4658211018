package keyserver

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// provisioningFile makes d's provisioning key file, with one network
// protector in PBN mode, and returns it encoded with its FDE secret.
func provisioningFile(t *testing.T, d *testDevice) ([]byte, secret.Bytes) {
	t.Helper()
	h := keyfile.Header{ID: d.binding, Kind: keyfile.KindProvisioning, DeviceID: d.id,
		Created: time.Now(), Server: d.prov.Server}
	fde := secret.Random(32)
	f, err := keyfile.New(h, &keyfile.Keyring{FDE: fde.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.AddProtector(t.Context(), "network", d.factor()); err != nil {
		t.Fatalf("AddProtector(network, PBN mode) = %v", err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b, fde
}

func (d *testDevice) factor() tang.Factor {
	return tang.Factor{Curve: PBNCurve, Transport: &Transport{Key: d.key}}
}

// open opens the key file b with factor f and checks the FDE secret.
func open(t *testing.T, b []byte, f keyfile.Factor, fde secret.Bytes) error {
	t.Helper()
	return openWith(t, t.Context(), b, f, fde)
}

// openWith is open under ctx.
func openWith(t *testing.T, ctx context.Context, b []byte, f keyfile.Factor, fde secret.Bytes) error {
	t.Helper()
	kf, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()
	if err := kf.Open(ctx, f); err != nil {
		return err
	}
	if !kf.Keyring().FDE.Equal(fde) {
		t.Errorf("the network protector opened a keyring with another FDE secret")
	}
	return nil
}

// TestUnlock runs PBN-mode network unlock through the key file's network
// protector: it opens while the device and its binding are in good
// standing, and is refused, with the reason, when they are not. It does
// not prove that a copy of the key file and the device key together are
// refused: they are the device, as far as the server can tell.
func TestUnlock(t *testing.T) {
	ts := startServer(t, nil, nil)
	ctx := t.Context()
	d := ts.enroll(t, "laptop-1", "laptops")
	if d.prov.ExchangeKey.Curve != PBNCurve {
		t.Fatalf("Enroll: exchange key %+v, want one on %s", d.prov.ExchangeKey, PBNCurve)
	}
	b, fde := provisioningFile(t, d)

	if err := open(t, b, d.factor(), fde); err != nil {
		t.Fatalf("Open(network) = %v", err)
	}
	es := ts.events(t)
	last := es[len(es)-1]
	if last.Kind != "unlock" || last.Device != d.id.String() || last.Remote == "" ||
		last.Detail["binding"] != d.binding.String() {
		t.Errorf("last event %+v, want the unlock with device, address and binding", last)
	}

	// Another device holding a copy of the key file is refused.
	thief := &testDevice{key: newKey(t)}
	spki, _ := PublicKey(thief.key)
	if _, err := ts.admin.Enroll(ctx, store.Device{ID: keyfile.NewID(), Hostname: "thief",
		Group: "laptops", Key: spki}, keyfile.NewID()); err != nil {
		t.Fatal(err)
	}
	if err := open(t, b, thief.factor(), fde); !errors.Is(err, ErrBindingRevoked) {
		t.Errorf("Open(network) by another device = %v, want ErrBindingRevoked", err)
	}

	if err := ts.admin.SetDeviceState(ctx, d.id, store.DeviceLost, "reported stolen"); err != nil {
		t.Fatal(err)
	}
	err := open(t, b, d.factor(), fde)
	if !errors.Is(err, ErrDeviceLost) {
		t.Errorf("Open(network) on a lost device = %v, want ErrDeviceLost", err)
	}
	if got := Sentence(err); !bytes.Contains([]byte(got), []byte("blocked")) {
		t.Errorf("Sentence(lost) = %q, want it to say the device is blocked", got)
	}
	if err := ts.admin.SetDeviceState(ctx, d.id, store.DeviceActive, "found"); err != nil {
		t.Fatal(err)
	}
	if err := open(t, b, d.factor(), fde); err != nil {
		t.Errorf("Open(network) on a found device = %v, want nil", err)
	}

	p := store.DefaultPolicy("laptops")
	p.Autoboot = false
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := open(t, b, d.factor(), fde); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("Open(network) without autoboot = %v, want ErrNotAllowed", err)
	}
	p.Autoboot = true
	if err := ts.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}

	if err := d.c.Revoke(ctx, d.binding); err != nil {
		t.Fatal(err)
	}
	if err := open(t, b, d.factor(), fde); !errors.Is(err, ErrBindingRevoked) {
		t.Errorf("Open(network) after revocation = %v, want ErrBindingRevoked", err)
	}

	var unlocks int
	for _, e := range ts.events(t) {
		if e.Kind == "unlock" {
			unlocks++
		}
	}
	if unlocks != 2 {
		t.Errorf("%d unlocks in the audit trail, want 2 (the refused ones are not unlocks)", unlocks)
	}
}

// TestUnlockPinned checks that the network protector refuses a server
// other than the pinned one at the same URL: a key file pinning another
// TLS key. It does not prove anything about a server that holds the
// pinned key.
func TestUnlockPinned(t *testing.T) {
	ts := startServer(t, nil, nil)
	d := ts.enroll(t, "laptop-1", "laptops")
	h := &keyfile.Header{ID: d.binding, Server: d.prov.Server}
	h.Server.PublicKey, _ = PublicKey(newKey(t))
	tr := &Transport{Key: d.key}
	if _, err := tr.Exchange(t.Context(), h, h.Server, d.prov.ExchangeKey.ID,
		d.prov.ExchangeKey.Point); !errors.Is(err, tang.ErrUntrusted) {
		t.Errorf("Exchange with a wrong pin = %v, want tang.ErrUntrusted", err)
	}
	if _, err := tr.ExchangeKey(t.Context(), h, h.Server, PBNCurve); !errors.Is(err, tang.ErrUntrusted) {
		t.Errorf("ExchangeKey with a wrong pin = %v, want tang.ErrUntrusted", err)
	}
}

func TestUnlockBadExchange(t *testing.T) {
	ts := startServer(t, nil, nil)
	d := ts.enroll(t, "laptop-1", "laptops")
	key := d.prov.ExchangeKey
	offCurve := bytes.Clone(key.Point)
	offCurve[len(offCurve)-1] ^= 1

	tests := []struct {
		name string
		kid  string
		x    []byte
		want string
	}{
		{"point not on the curve", key.ID, offCurve, codeBadRequest.name},
		{"point at infinity", key.ID, []byte{0}, codeBadRequest.name},
		{"too long", key.ID, make([]byte, maxPoint+1), codeBadRequest.name},
		{"unknown exchange key", "AAAA", key.Point, codeUnknownExchangeKey.name},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.c.Unlock(context.Background(), d.binding, tt.kid, tt.x)
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.want {
				t.Errorf("Unlock = %v, want a refusal %s", err, tt.want)
			}
		})
	}
	_, err := d.c.Unlock(context.Background(), d.binding, "AAAA", key.Point)
	if !errors.Is(err, tang.ErrUnknownKey) {
		t.Errorf("Unlock(unknown kid) = %v, want tang.ErrUnknownKey", err)
	}
}
