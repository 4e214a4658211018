package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/pgtest"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// A backend is a kind of database. start readies it for a test and returns
// a function that makes a fresh, empty database and returns its DSN.
type backend struct {
	name  string
	start func(t *testing.T) func(t *testing.T) string
}

// backends are SQLite and a real PostgreSQL that the test starts: the
// store's suite runs against both.
var backends = []backend{
	{"sqlite", func(*testing.T) func(*testing.T) string {
		return func(t *testing.T) string { return filepath.Join(t.TempDir(), "pbnd.db") }
	}},
	{"postgres", func(t *testing.T) func(*testing.T) string {
		return pgtest.Start(t).NewDatabase
	}},
}

func TestStore(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, dsn string)
	}{
		{"devices", testDevices},
		{"lost device not enrolled again", testLostDevice},
		{"bindings", testBindings},
		{"owners", testOwners},
		{"escrow sealed", testEscrow},
		{"owner removed, escrow of one key file", testSignIn},
		{"server keys shared", testServerKeys},
		{"policy", testPolicy},
		{"audit append-only", testAudit},
		{"concurrent appends", testConcurrentAppends},
		{"concurrent open", testConcurrentOpen},
		{"administrators and their roles", testAdmins},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			newDB := b.start(t)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { tt.run(t, newDB(t)) })
			}
		})
	}
}

var testMasterKey = secret.Bytes(bytes.Repeat([]byte{7}, MasterKeySize))

func open(t *testing.T, dsn string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn, testMasterKey, Options{})
	if err != nil {
		t.Fatalf("Open(%s) = %v", dsn, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testDevice(host string) Device {
	return Device{
		ID: keyfile.NewID(), Hostname: host, Group: "laptops",
		EK: []byte("ek " + host), SRK: []byte("srk " + host), Key: []byte("key " + host),
	}
}

func enroll(t *testing.T, s *Store, host string) Device {
	t.Helper()
	d := testDevice(host)
	if err := s.PutDevice(t.Context(), d); err != nil {
		t.Fatalf("PutDevice(%s) = %v", host, err)
	}
	return d
}

func testDevices(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	b := enroll(t, s, "b")
	a := enroll(t, s, "a")

	got, err := s.DeviceByKey(ctx, a.Key)
	if err != nil || got.ID != a.ID || got.State != DeviceActive || !bytes.Equal(got.SRK, a.SRK) {
		t.Errorf("DeviceByKey(a) = %+v, %v, want device a, active", got, err)
	}
	list, err := s.Devices(ctx)
	if err != nil || len(list) != 2 || list[0].ID != a.ID || list[1].ID != b.ID {
		t.Errorf("Devices() = %+v, %v, want a then b", list, err)
	}
	if err := s.SetDeviceState(ctx, b.ID, DeviceRetired); err != nil {
		t.Fatalf("SetDeviceState(b, retired) = %v", err)
	}
	if got, _ := s.Device(ctx, b.ID); got.State != DeviceRetired {
		t.Errorf("Device(b).State = %s, want retired", got.State)
	}
	if _, err := s.Device(ctx, keyfile.NewID()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Device(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.SetDeviceState(ctx, keyfile.NewID(), DeviceLost); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetDeviceState(unknown) = %v, want ErrNotFound", err)
	}
}

func testLostDevice(t *testing.T, dsn string) {
	s := open(t, dsn)
	d := enroll(t, s, "lost")
	if err := s.SetDeviceState(t.Context(), d.ID, DeviceLost); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(t.Context(), d); !errors.Is(err, ErrDeviceLost) {
		t.Errorf("PutDevice(lost device) = %v, want ErrDeviceLost", err)
	}
}

func testBindings(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	d := enroll(t, s, "host")
	kf := keyfile.NewID()
	if err := s.AddBinding(ctx, kf, d.ID); err != nil {
		t.Fatalf("AddBinding = %v", err)
	}
	if b, err := s.Binding(ctx, kf); err != nil || b.State != BindingActive || b.DeviceID != d.ID {
		t.Errorf("Binding = %+v, %v, want active for the device", b, err)
	}
	if err := s.RevokeBinding(ctx, kf); err != nil {
		t.Fatalf("RevokeBinding = %v", err)
	}
	b, err := s.Binding(ctx, kf)
	if err != nil || b.State != BindingRevoked || b.Revoked.IsZero() {
		t.Errorf("Binding after revoke = %+v, %v, want revoked with a time", b, err)
	}
	if err := s.RevokeBinding(ctx, keyfile.NewID()); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeBinding(unknown) = %v, want ErrNotFound", err)
	}

	// Enrolling the device again (re-imaging) revokes what it had and
	// forgets its users.
	kf2 := keyfile.NewID()
	if err := s.AddBinding(ctx, kf2, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddOwner(ctx, Owner{DeviceID: d.ID, UPN: "a@x", SID: "S-1-5-21-1"}, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Binding(ctx, kf2); b.State != BindingRevoked {
		t.Errorf("binding after enrolling again: %s, want revoked", b.State)
	}
	if owners, _ := s.Owners(ctx, d.ID); len(owners) != 0 {
		t.Errorf("owners after enrolling again: %+v, want none", owners)
	}
}

func testOwners(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	d := enroll(t, s, "host")
	alice := Owner{DeviceID: d.ID, UPN: "alice@example.test", SID: "S-1-5-21-1-1001"}
	bob := Owner{DeviceID: d.ID, UPN: "bob@example.test", SID: "S-1-5-21-1-1002"}

	got, err := s.AddOwner(ctx, alice, 1)
	if err != nil || !got.Primary {
		t.Fatalf("AddOwner(alice) = %+v, %v, want primary", got, err)
	}
	if _, err := s.AddOwner(ctx, alice, 1); err != nil {
		t.Errorf("AddOwner(alice again) = %v, want nil", err)
	}
	if _, err := s.AddOwner(ctx, bob, 1); !errors.Is(err, ErrTooManyUsers) {
		t.Errorf("AddOwner(bob, limit 1) = %v, want ErrTooManyUsers", err)
	}
	if got, err := s.AddOwner(ctx, bob, 2); err != nil || got.Primary {
		t.Errorf("AddOwner(bob, limit 2) = %+v, %v, want a second user", got, err)
	}
	owners, err := s.Owners(ctx, d.ID)
	if err != nil || len(owners) != 2 || owners[0].SID != alice.SID {
		t.Errorf("Owners = %+v, %v, want alice then bob", owners, err)
	}
	if _, err := s.AddOwner(ctx, Owner{DeviceID: keyfile.NewID(), SID: "x"}, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddOwner(unknown device) = %v, want ErrNotFound", err)
	}
}

// testEscrow checks that a recovery key is not in the database in the clear
// and does not open under another master key. It does not prove that the
// sealing is strong: that rests on XChaCha20-Poly1305.
func testEscrow(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	d := enroll(t, s, "host")
	key := secret.Bytes("123456-234567-345678-456789-567890-678901-789012-890123")
	e := Escrow{DeviceID: d.ID, KeyFileID: keyfile.NewID(), UPN: "alice@example.test", Key: key.Clone()}
	if err := s.PutEscrow(ctx, e); err != nil {
		t.Fatalf("PutEscrow = %v", err)
	}
	got, err := s.Escrowed(ctx, d.ID)
	if err != nil || len(got) != 1 || !got[0].Key.Equal(key) || got[0].KeyFileID != e.KeyFileID {
		t.Fatalf("Escrowed = %d keys, %v, want the key put", len(got), err)
	}

	var sealed []byte
	if err := s.db.QueryRowContext(ctx, `SELECT sealed FROM escrow`).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, key[:20]) {
		t.Errorf("the escrow table holds the recovery key in the clear")
	}

	other, err := Open(ctx, dsn, secret.Bytes(bytes.Repeat([]byte{8}, MasterKeySize)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Escrowed(ctx, d.ID); !errors.Is(err, ErrSealed) {
		t.Errorf("Escrowed under another master key = %v, want ErrSealed", err)
	}
}

// testServerKeys opens the database twice, as two pbnd processes would, and
// checks that both get the same enterprise key.
func testServerKeys(t *testing.T, dsn string) {
	s1, s2 := open(t, dsn), open(t, dsn)
	ctx := t.Context()
	k1, err := s1.ServerKey(ctx, "enterprise", 32)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := s2.ServerKey(ctx, "enterprise", 32)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != 32 || !k1.Equal(k2) {
		t.Errorf("two stores got different enterprise keys")
	}
	g, err := s1.ServerKey(ctx, "group S-1-5-21-1-513", 32)
	if err != nil || g.Equal(k1) {
		t.Errorf("ServerKey(group) = %v, want a key of its own", err)
	}
}

func testPolicy(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	got, err := s.Policy(ctx, "laptops")
	if err != nil || !slices.Equal(got.PCRs, DefaultPolicy("laptops").PCRs) {
		t.Errorf("Policy(unset) = %+v, %v, want the default", got, err)
	}
	want := Policy{
		Group: "laptops", Autoboot: false, OfflineLimit: time.Hour,
		Administrators: []string{"admin@example.test"}, PCRs: []int{7},
		UsersPerDevice: 3, AllowedGroups: []string{"S-1-5-21-1-513"},
	}
	if err := s.SetPolicy(ctx, want); err != nil {
		t.Fatalf("SetPolicy = %v", err)
	}
	got, err = s.Policy(ctx, "laptops")
	if err != nil || got.OfflineLimit != time.Hour || got.UsersPerDevice != 3 ||
		!slices.Equal(got.Administrators, want.Administrators) || got.Autoboot {
		t.Errorf("Policy = %+v, %v, want %+v", got, err, want)
	}

	bad := []Policy{
		{Group: "", PCRs: []int{7}, UsersPerDevice: 1},
		{Group: "g", PCRs: nil, UsersPerDevice: 1},
		{Group: "g", PCRs: []int{7, 7}, UsersPerDevice: 1},
		{Group: "g", PCRs: []int{24}, UsersPerDevice: 1},
		{Group: "g", PCRs: []int{7}, UsersPerDevice: 0},
		{Group: "g", PCRs: []int{7}, UsersPerDevice: 1, OfflineLimit: -1},
	}
	for _, p := range bad {
		if err := s.SetPolicy(ctx, p); err == nil {
			t.Errorf("SetPolicy(%+v) = nil, want an error", p)
		}
	}
}

// testAudit checks that events come back in order and that the database
// itself refuses to change or remove one. It does not prove that a database
// administrator cannot drop the trigger.
func testAudit(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := t.Context()
	for _, kind := range []string{"enroll", "unlock", "claim"} {
		if _, err := s.Append(ctx, Event{Kind: kind, Device: "d", Actor: "device",
			Remote: "192.0.2.1:1", Detail: map[string]string{"k": kind}}); err != nil {
			t.Fatalf("Append(%s) = %v", kind, err)
		}
	}
	all, err := s.Events(ctx, 0, 10)
	if err != nil || len(all) != 3 || all[1].Kind != "unlock" || all[2].Detail["k"] != "claim" {
		t.Fatalf("Events = %+v, %v, want enroll, unlock, claim", all, err)
	}
	if all[0].Seq >= all[1].Seq {
		t.Errorf("Seq not growing: %d then %d", all[0].Seq, all[1].Seq)
	}
	if later, _ := s.Events(ctx, all[1].Seq, 10); len(later) != 1 || later[0].Kind != "claim" {
		t.Errorf("Events(after unlock) = %+v, want claim only", later)
	}
	if tail, _ := s.Tail(ctx, 2); len(tail) != 2 || tail[0].Kind != "unlock" {
		t.Errorf("Tail(2) = %+v, want unlock, claim", tail)
	}

	for _, q := range []string{`UPDATE audit SET kind = 'x'`, `DELETE FROM audit`} {
		if _, err := s.db.ExecContext(ctx, q); err == nil {
			t.Errorf("%s = nil, want the database to refuse", q)
		}
	}
	if s.dialect == postgresDB {
		if _, err := s.db.ExecContext(ctx, `TRUNCATE audit`); err == nil {
			t.Errorf("TRUNCATE audit = nil, want the database to refuse")
		}
	}
	if again, _ := s.Events(ctx, 0, 10); len(again) != 3 {
		t.Errorf("after the refused changes: %d events, want 3", len(again))
	}
}

// testConcurrentOpen starts several stores on one fresh database at once,
// as several pbnd processes starting together would: the migration runs
// once and every store opens.
func testConcurrentOpen(t *testing.T, dsn string) {
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			s, err := Open(t.Context(), dsn, testMasterKey, Options{})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open #%d = %v", i, err)
		}
	}
	s := open(t, dsn)
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM schema_version`).Scan(&n); err != nil || n != len(migrations) {
		t.Errorf("schema_version rows = %d, %v, want %d", n, err, len(migrations))
	}
}

// testConcurrentAppends appends from many goroutines at once (with
// SQLite, in batches that share a commit) and checks that every Append
// got its own event back, each readable under its Seq, and that Append
// after Close fails rather than losing the event silently.
func testConcurrentAppends(t *testing.T, dsn string) {
	s := open(t, dsn)
	const n = 200
	got := make([]Event, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			e, err := s.Append(t.Context(), Event{Kind: "unlock", Actor: "device",
				Detail: map[string]string{"i": strconv.Itoa(i)}})
			got[i] = e
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Append = %v", err)
		}
	}
	all, err := s.Events(t.Context(), 0, 2*n)
	if err != nil || len(all) != n {
		t.Fatalf("Events = %d events, %v; want %d", len(all), err, n)
	}
	bySeq := map[int64]string{}
	for _, e := range all {
		bySeq[e.Seq] = e.Detail["i"]
	}
	for i, e := range got {
		if bySeq[e.Seq] != strconv.Itoa(i) {
			t.Fatalf("Append %d returned Seq %d, which holds event %q", i, e.Seq, bySeq[e.Seq])
		}
	}

	if _, err := s.Append(t.Context(), Event{Kind: "cancelled", Actor: "device"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Append(ctx, Event{Kind: "cancelled", Actor: "device"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled context = %v, want context.Canceled", err)
	}
	s.Close()
	if _, err := s.Append(t.Context(), Event{Kind: "closed", Actor: "device"}); err == nil {
		t.Error("Append after Close = nil, want an error")
	}
}
