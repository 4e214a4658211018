package signin

import (
	"context"
	"sync"
	"testing"

	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/store"
)

// installer is the administrator account of TestAdministratorInstalls,
// an account of its own: TestDeployed disables carol.
const installer = "erin"

var installerOnce struct {
	sync.Once
	err error
}

// addInstaller adds installer to the shared DC, once per test binary.
func addInstaller(t *testing.T, dc *samba.DC) {
	t.Helper()
	installerOnce.Do(func() {
		_, installerOnce.err = dc.AddUser(context.Background(), samba.User{Name: installer, Password: password})
	})
	if installerOnce.err != nil {
		t.Fatalf("AddUser(%s) = %v", installer, installerOnce.err)
	}
}

// TestAdministratorInstalls is the use case of an administrator who
// installs a device with their own account, against the real DC, key
// server and TPM: erin's secure moment leaves her key file of an
// administrator's kind and no owner on the server; alice, the first user
// to sign in afterwards, gets a key file and a keyslot of her own and
// becomes the primary user, within one user per device; erin still signs
// in with hers.
//
// It does not prove that the agent says so at the prompt (the lab's
// TestUseCases does).
func TestAdministratorInstalls(t *testing.T) {
	e := newEnv(t)
	addInstaller(t, e.dc)
	upn := func(name string) string { return name + "@" + e.dc.DNSDomain }
	p := store.DefaultPolicy("installed") // one user per device
	p.Administrators = []string{upn(installer)}
	d := e.newDeviceBy(t, p, installer)
	ctx := testContext(t)

	users, err := d.Users()
	if err != nil || len(users) != 1 || users[0].UPN != upn(installer) || users[0].Kind != keyfile.KindAdministrator {
		t.Fatalf("Users after erin's secure moment = %+v, %v; want her administrator's key file", users, err)
	}
	if info, err := e.admin.Device(ctx, d.id); err != nil || len(info.Owners) != 0 {
		t.Errorf("Device after erin's secure moment = %+v, %v; want no owners", info, err)
	}

	slots := d.keyslots(t)
	res, err := signIn(t, d.Device, alice, password)
	if err != nil {
		t.Fatalf("SignIn(alice) = %v", err)
	}
	if !res.Made || !res.Online || res.KeyFile.Header().Kind != keyfile.KindUser || d.keyslots(t) != slots+1 {
		t.Errorf("SignIn(alice) = %+v, keyslots %d; want a user's key file made online, keyslot %d added",
			res, d.keyslots(t), slots+1)
	}
	info, err := e.admin.Device(ctx, d.id)
	if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != upn(alice) || !info.Owners[0].Primary {
		t.Errorf("Device after alice's sign-in = %+v, %v; want alice, primary", info, err)
	}
	es := e.events(t)
	if last := es[len(es)-1]; last.Kind != "signin" || last.Detail["owner"] != "primary" {
		t.Errorf("last event %+v, want alice's sign-in that made her the primary user", last)
	}

	again, err := signIn(t, d.Device, installer, password)
	if err != nil || again.Made || again.KeyFile.Header().Kind != keyfile.KindAdministrator {
		t.Errorf("SignIn(erin) = %+v, %v; want her administrator's key file", again, err)
	}
}
