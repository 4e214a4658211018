package keyserver

import (
	"context"
	"errors"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// lookupDirectory is the test directory that also looks accounts up
// without their password, as AD does with a lookup account.
type lookupDirectory struct{ directory }

func (d lookupDirectory) Lookup(ctx context.Context, account string) (*Identity, error) {
	u, ok := d.directory[account]
	if !ok {
		return nil, errors.New("no such account")
	}
	return &u.id, nil
}

// enrollOwned enrolls a device owned by account from the start.
func (ts *testServer) enrollOwned(t testing.TB, host, account string) (*testDevice, keyfile.ID, *Provisioning, error) {
	t.Helper()
	d := &testDevice{id: keyfile.NewID(), key: newKey(t)}
	d.c = ts.client(t, d.key)
	spki, _ := PublicKey(d.key)
	kf := keyfile.NewID()
	p, err := ts.admin.EnrollOwned(t.Context(), store.Device{ID: d.id, Hostname: host, Group: "laptops",
		Key: spki}, Owner{Account: account, KeyFile: kf, RecoveryKey: secret.Bytes("recovery key of " + account)})
	return d, kf, p, err
}

// TestEnrollOwned assigns a device's owner at its enrolment: the server
// looks the account up, records the owner, escrows the recovery key and
// hands the owner's keys; the owner's first sign-in gets that escrowed key
// back, for the reason it gives, which the audit trail records.
//
// What it does not prove: that the device uses the key only to seal its
// key file to the TPM and the password (see the TODO at signIn).
func TestEnrollOwned(t *testing.T) {
	ts := startServer(t, nil, nil, func(c *Config) { c.Directory = lookupDirectory{testDirectory} })
	ctx := t.Context()
	d, kf, p, err := ts.enrollOwned(t, "laptop-1", "alice@example.test")
	if err != nil {
		t.Fatalf("EnrollOwned(alice) = %v", err)
	}
	defer p.Owner.Wipe()
	if o := p.Owner; o.UPN != "alice@example.test" || o.SID != "S-1-5-21-7-2001" || !o.Primary ||
		len(o.Groups) != 2 || len(o.Enterprise) != enterpriseKeySize || p.Server.URL != ts.url {
		t.Errorf("EnrollOwned(alice) = %+v, owner %+v; want alice, primary, with her keys", p, o)
	}
	info, err := ts.admin.Device(ctx, d.id)
	if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != "alice@example.test" {
		t.Errorf("Device = %+v, %v; want alice as its owner", info, err)
	}

	if _, err := signIn(d, SignInRequest{Account: "alice@example.test", KeyFile: kf, Open: kf}); err == nil {
		t.Errorf("SignIn(open her key file, no reason) = nil, want a bad request")
	}
	in, err := signIn(d, SignInRequest{Account: "alice@example.test", KeyFile: kf, Open: kf,
		Reason: ResealFirstSignIn})
	if err != nil || !in.RecoveryKey.Equal(secret.Bytes("recovery key of alice@example.test")) {
		t.Fatalf("SignIn(alice's first) = %v, want her escrowed recovery key", err)
	}
	es := ts.events(t)
	enroll, first := es[0], es[len(es)-1]
	if enroll.Kind != "enroll" || enroll.Detail["owner"] != "alice@example.test" ||
		enroll.Detail["key_file"] != kf.String() || enroll.Detail["binding"] != "" {
		t.Errorf("first event %+v, want the enrolment owned by alice", enroll)
	}
	if first.Kind != "signin" || first.Detail["reason"] != ResealFirstSignIn ||
		first.Detail["recovery_key_of"] != kf.String() {
		t.Errorf("last event %+v, want alice's first sign-in with its reason", first)
	}

	tests := []struct {
		name    string
		account string
		dir     Directory
		want    error
	}{
		{"unknown account", "mallory@example.test", lookupDirectory{testDirectory}, ErrUnknownAccount},
		{"no lookup", "alice@example.test", testDirectory, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, nil, nil, func(c *Config) { c.Directory = tt.dir })
			d, _, _, err := ts.enrollOwned(t, "laptop-2", tt.account)
			if !errors.Is(err, tt.want) {
				t.Errorf("EnrollOwned(%s) = %v, want %v", tt.account, err, tt.want)
			}
			if _, err := ts.admin.Device(ctx, d.id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Device after a refused enrolment = %v, want ErrNotFound", err)
			}
		})
	}
}
