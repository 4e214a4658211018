package store

import (
	"context"
	"errors"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

func testSignIn(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := context.Background()
	d := testDevice("laptop")
	if err := s.PutDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	for _, sid := range []string{"S-1-5-21-1-2-3-1101", "S-1-5-21-1-2-3-1102"} {
		if _, err := s.AddOwner(ctx, Owner{DeviceID: d.ID, UPN: sid + "@x", SID: sid}, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveOwner(ctx, d.ID, "S-1-5-21-1-2-3-1101"); err != nil {
		t.Fatalf("RemoveOwner = %v", err)
	}
	owners, err := s.Owners(ctx, d.ID)
	if err != nil || len(owners) != 1 || owners[0].SID != "S-1-5-21-1-2-3-1102" {
		t.Errorf("Owners after RemoveOwner = %v, %v; want only ...-1102", owners, err)
	}
	if err := s.RemoveOwner(ctx, d.ID, "S-1-5-21-1-2-3-1101"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveOwner(removed) = %v, want ErrNotFound", err)
	}

	kf, other := keyfile.NewID(), keyfile.NewID()
	key := secret.Bytes("111111-222222")
	if err := s.PutEscrow(ctx, Escrow{DeviceID: d.ID, KeyFileID: kf, UPN: "alice@x", Key: key}); err != nil {
		t.Fatal(err)
	}
	e, err := s.EscrowOf(ctx, d.ID, kf)
	if err != nil || !e.Key.Equal(key) || e.UPN != "alice@x" {
		t.Errorf("EscrowOf = %+v, %v; want alice's key", e, err)
	}
	if _, err := s.EscrowOf(ctx, d.ID, other); !errors.Is(err, ErrNotFound) {
		t.Errorf("EscrowOf(unknown key file) = %v, want ErrNotFound", err)
	}
	if _, err := s.EscrowOf(ctx, keyfile.NewID(), kf); !errors.Is(err, ErrNotFound) {
		t.Errorf("EscrowOf(another device) = %v, want ErrNotFound", err)
	}
}
