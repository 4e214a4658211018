package enroll

import (
	"context"
	"errors"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
)

// TestEnrollOwnedRefused enrolls a device owned in advance with a key
// server that cannot look accounts up: the enrolment is refused, and the
// server records no device. pbn/signin's TestOwnerKnownInAdvance enrolls
// one against the real DC and follows its owner's first sign-ins.
func TestEnrollOwnedRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	admin := server(t)
	id := keyfile.NewID()
	f, err := EnrollOwned(ctx, openTPM(t), admin, Device{ID: id, Hostname: "laptop-1", Group: "laptops"},
		"alice@example.test")
	if !errors.Is(err, keyserver.ErrUnavailable) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("EnrollOwned(no directory) = %v, want ErrUnavailable", err)
	}
	if _, err := admin.Device(ctx, id); !errors.Is(err, keyserver.ErrNotFound) {
		t.Errorf("Device after the refusal = %v, want ErrNotFound", err)
	}
	if _, err := EnrollOwned(ctx, nil, admin, Device{}, "alice@example.test"); err == nil {
		t.Errorf("EnrollOwned(no hostname or group) = nil, want an error")
	}
}
