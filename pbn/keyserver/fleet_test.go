package keyserver

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/internal/pgtest"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// TestFleetOnPostgres runs two key servers on one real PostgreSQL
// database, with the same master key, TLS key and Tang keys, as two pbnd
// processes behind one name would: what one does, the other sees at once.
// It does not prove anything about replication or failover of PostgreSQL
// itself.
func TestFleetOnPostgres(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	master := secret.Random(store.MasterKeySize)
	openDB := func() *store.Store {
		st, err := store.Open(context.Background(), dsn, master, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	tlsKey, keys := newKey(t), tangKeys(t)
	withKeys := func(c *Config) { c.Exchange = keys }
	a := startServer(t, openDB(), tlsKey, withKeys)
	b := startServer(t, openDB(), tlsKey, withKeys)
	ctx := t.Context()

	d := a.enroll(t, "laptop-1", "laptops")
	file, fde := provisioningFile(t, d)
	onB := &testDevice{id: d.id, binding: d.binding, key: d.key, c: b.client(t, d.key), prov: d.prov}
	claim, _, err := claimAs(onB, "alice@example.test", "alice pw")
	if err != nil {
		t.Fatalf("Claim on the second server = %v", err)
	}
	claim.Wipe()
	if err := open(t, file, d.factor(), fde); err != nil {
		t.Fatalf("Open(network) = %v", err)
	}

	if err := b.admin.SetDeviceState(ctx, d.id, store.DeviceLost, "stolen"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := claimAs(d, "alice@example.test", "alice pw"); !errors.Is(err, ErrDeviceLost) {
		t.Errorf("Claim on the first server after the second marked the device lost = %v, want ErrDeviceLost", err)
	}
	if got, want := kinds(a.events(t)), []string{"enroll", "claim", "unlock", "device-state"}; !slices.Equal(got, want) {
		t.Errorf("audit trail on the first server %v, want %v", got, want)
	}
}
