package qemu

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/pbn-project/pbn/internal/netns"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// The use cases' laptop in the shared enterprise: its group and its
// accounts. uc-admin, an administrator account of the group's policy,
// installs it; uc-alice becomes its primary user and uc-bob a further
// one; uc-helpdesk is another administrator account of the policy.
const (
	ucGroup     = "usecases"
	ucAdmin     = "uc-admin"
	ucHelpdesk  = "uc-helpdesk"
	ucAlice     = "uc-alice"
	ucBob       = "uc-bob"
	ucLimitDays = 7
)

// ucWrongPassword is a password none of the accounts has.
const ucWrongPassword = "Wr0ng-horse-9"

// The agent's debug lines that say why a sign-in went offline.
const (
	dcUnreachableRE = `msg="directory unreachable: offline sign-in"`
	ksUnreachableRE = `msg="key server unreachable: offline sign-in"`
)

// TestUseCases tells the use cases of the two-stage model on one laptop,
// a boot per scenario, each building on the state the ones before left:
// an administrator installs the laptop with their own account and gets an
// administrator's key file, but no ownership; the first user to sign in
// afterwards becomes its primary user; a further user is added with a key
// file and a keyslot of his own; he is removed on the server and refused
// at the next boot even with the right password, which also removes his
// key file and keyslot, and another administrator account of the package
// then signs in on the primary user's laptop and gets a key file; the
// domain controller down, with the key server up, leaves the key file to
// decide within the policy's offline limit; the key server down, with the
// DC up, likewise, and a provisioned laptop does not boot unattended.
//
// What it does not prove: that a removed user's copy of his key file
// taken before the removal no longer opens the disk offline (its keyslot
// is gone, which readVolumeState shows, but only a guest could try it);
// that the offline limit counts from the last contact rather than the key
// file's making (pbn/signin's TestDeployed moves the clock by days); that
// a DC that answers slowly rather than not at all behaves the same.
func TestUseCases(t *testing.T) {
	e, image := sharedEnterprise(t)
	k, _, _, _ := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	upn := map[string]string{}
	p := store.DefaultPolicy(ucGroup)
	p.UsersPerDevice, p.OfflineLimit = 2, ucLimitDays*24*time.Hour
	for _, name := range []string{ucAdmin, ucHelpdesk, ucAlice, ucBob} {
		u, err := e.AddUser(ctx, name, labPassword)
		if err != nil {
			t.Fatalf("AddUser(%s) = %v", name, err)
		}
		upn[name] = u
	}
	p.Administrators = []string{upn[ucAdmin], upn[ucHelpdesk]}
	if err := e.Admin.SetPolicy(ctx, p); err != nil {
		t.Fatalf("SetPolicy = %v", err)
	}
	dev, err := e.Provision(ctx, "uc", ProvisionOptions{Template: pbnFixture.spec, Group: ucGroup})
	if err != nil {
		t.Fatalf("Provision = %v", err)
	}
	l := &depLaptop{e: e, kernel: k.Image, image: image, dev: dev, name: "uc"}
	uc := &ucState{t: t, e: e, dev: dev}
	signedIn := func(name, how string) string {
		return `pbn: signed in as ` + regexp.QuoteMeta(upn[name]) + ` \(` + how + `\)`
	}

	steps := []struct {
		name string
		run  func(t *testing.T, ctx context.Context)
	}{
		{"administrator installs", func(t *testing.T, ctx context.Context) {
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			signIn(t, ctx, m, ucAdmin, labPassword)
			expect(t, ctx, m, `pbn: secure moment: `+regexp.QuoteMeta(upn[ucAdmin])+
				` installed this computer; the first user to sign in becomes its owner\n`, tinyOSRE)
			if err := m.Wait(ctx); err != nil {
				t.Errorf("Wait = %v, want the tiny OS to power off", err)
			}
			st := uc.volume(ctx, 1, 0, 1)
			uc.admin = st.files[keyfile.KindAdministrator][0]
			uc.owners(ctx)
			claims := events(t, ctx, e, dev, "claim")
			if n := len(claims); n == 0 || claims[n-1].Detail["kind"] != "administrator" ||
				claims[n-1].Detail["primary"] != "false" {
				t.Errorf("claim events %+v, want the last an administrator's, not primary", claims)
			}
			revoked := slices.ContainsFunc(events(t, ctx, e, dev, "revoke"), func(ev store.Event) bool {
				return ev.Detail["binding"] == dev.Binding.String()
			})
			if !revoked {
				t.Errorf("the key server recorded no revocation of binding %s", dev.Binding)
			}
		}},
		{"first user becomes the primary user", func(t *testing.T, ctx context.Context) {
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			expect(t, ctx, m, usersRE, `  1\. `+regexp.QuoteMeta(upn[ucAdmin])+`\n`)
			l.mustSignIn(t, ctx, m, ucAlice, labPassword)
			expect(t, ctx, m, signedIn(ucAlice, "confirmed online"))
			if s, _ := session(t, ctx, m); s.Kind != keyfile.KindUser || !s.Online {
				t.Errorf("session %+v, want a user's, online", s)
			}
			st := uc.volume(ctx, 2, 1, 1)
			uc.alice = st.files[keyfile.KindUser][0]
			uc.owners(ctx, upn[ucAlice])
			uc.signedIn(ctx, upn[ucAlice], uc.alice, "primary")
		}},
		{"a further user", func(t *testing.T, ctx context.Context) {
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			l.mustSignIn(t, ctx, m, ucBob, labPassword)
			expect(t, ctx, m, signedIn(ucBob, "confirmed online"))
			session(t, ctx, m)
			st := uc.volume(ctx, 3, 2, 1)
			for _, id := range st.files[keyfile.KindUser] {
				if id != uc.alice {
					uc.bob = id
				}
			}
			uc.owners(ctx, upn[ucAlice], upn[ucBob])
			uc.signedIn(ctx, upn[ucBob], uc.bob, "added")
		}},
		{"user removed, then an administrator account", func(t *testing.T, ctx context.Context) {
			info, err := e.Admin.Device(ctx, dev.ID)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(info.Owners, func(o store.Owner) bool { return o.UPN == upn[ucBob] })
			if i < 0 {
				t.Fatalf("owners %+v, want uc-bob among them", info.Owners)
			}
			if err := e.Admin.RemoveOwner(ctx, dev.ID, info.Owners[i].SID, "left the team"); err != nil {
				t.Fatal(err)
			}
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			l.mustSignIn(t, ctx, m, ucBob, labPassword)
			expect(t, ctx, m, regexp.QuoteMeta(keyserver.Sentence(keyserver.ErrUserRemoved)))
			l.mustSignIn(t, ctx, m, ucHelpdesk, labPassword)
			expect(t, ctx, m, signedIn(ucHelpdesk, "confirmed online"))
			if s, _ := session(t, ctx, m); s.Kind != keyfile.KindAdministrator {
				t.Errorf("session %+v, want an administrator's", s)
			}
			st := uc.volume(ctx, 3, 1, 2)
			if got := st.files[keyfile.KindUser]; got[0] != uc.alice {
				t.Errorf("user key files %v, want uc-alice's %s alone", got, uc.alice)
			}
			if slices.Contains(slices.Collect(maps.Values(st.tags)), uc.bob) {
				t.Errorf("keyslot tags %v, want none of uc-bob's key file %s", st.tags, uc.bob)
			}
			var helpdesk keyfile.ID
			for _, id := range st.files[keyfile.KindAdministrator] {
				if id != uc.admin {
					helpdesk = id
				}
			}
			uc.owners(ctx, upn[ucAlice])
			uc.signedIn(ctx, upn[ucHelpdesk], helpdesk, "")
		}},
		{"directory down", func(t *testing.T, ctx context.Context) {
			up := dcDown(t, ctx, e)
			defer up()
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			l.mustSignIn(t, ctx, m, ucAlice, ucWrongPassword)
			expect(t, ctx, m, dcUnreachableRE, `The password is wrong\. You have \d+ more tries before the TPM locks itself`)
			l.mustSignIn(t, ctx, m, ucAlice, labPassword)
			expect(t, ctx, m, dcUnreachableRE, signedIn(ucAlice, "offline"))
			if s, _ := session(t, ctx, m); s.Online || s.Stage != handoff.StageDeployed {
				t.Errorf("session %+v, want offline, deployed", s)
			}

			m = l.mustLaptop(t, ctx, LaptopOptions{RTC: "2040-01-01T00:00:00"})
			l.mustSignIn(t, ctx, m, ucAlice, labPassword)
			expect(t, ctx, m, dcUnreachableRE, `This device has been offline for too long\.`, signInRE)
			noShell(t, m)
		}},
		{"key server down", func(t *testing.T, ctx context.Context) {
			fresh, err := e.Provision(ctx, "uc-fresh", ProvisionOptions{Template: pbnFixture.spec, Group: ucGroup})
			if err != nil {
				t.Fatalf("Provision = %v", err)
			}
			pause(t, running(t, e.Lab, "pbnd"))
			m := l.mustLaptop(t, ctx, LaptopOptions{})
			l.mustSignIn(t, ctx, m, ucAlice, labPassword)
			expect(t, ctx, m, ksUnreachableRE, signedIn(ucAlice, "offline"))
			if s, _ := session(t, ctx, m); s.Online {
				t.Errorf("session %+v, want offline", s)
			}

			m = startProvisioned(t, ctx, e.Lab, image, fresh, LaptopOptions{})
			expect(t, ctx, m, networkRE, regexp.QuoteMeta("This computer cannot reach the company's key server"),
				accountRE)
			if err := m.PowerCut(); err != nil {
				t.Fatal(err)
			}
			if out := m.Console.Output(); regexp.MustCompile(countdownRE).MatchString(out) {
				t.Error("the laptop counted down to an unattended boot with the key server down")
			}
		}},
	}
	for _, st := range steps {
		ok := t.Run(st.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), secureMomentTimeout)
			defer cancel()
			uc.t = t
			st.run(t, ctx)
		})
		if !ok {
			t.Fatalf("step %q failed: the steps after it build on it", st.name)
		}
	}
}

// ucState is what TestUseCases's steps learn of the laptop and check it
// against: its key files' IDs as they are made.
type ucState struct {
	t                 *testing.T // the current step's
	e                 *Enterprise
	dev               *Device
	admin, alice, bob keyfile.ID
}

// volume checks the laptop's disk: slots keyslots, each tagged with a key
// file on the ESP, and users and admins key files of a user's and an
// administrator's kind, no provisioning one.
func (s *ucState) volume(ctx context.Context, slots, users, admins int) volumeState {
	t := s.t
	t.Helper()
	st := readVolumeState(t, ctx, s.dev.Disk)
	u, a := st.files[keyfile.KindUser], st.files[keyfile.KindAdministrator]
	if len(u) != users || len(a) != admins || len(st.files[keyfile.KindProvisioning]) != 0 {
		t.Fatalf("key files on the ESP %v, want %d users', %d administrators' and no provisioning one",
			st.files, users, admins)
	}
	byID := func(x, y keyfile.ID) int { return bytes.Compare(x[:], y[:]) }
	tagged := slices.SortedFunc(maps.Values(st.tags), byID)
	files := slices.SortedFunc(slices.Values(append(slices.Clone(u), a...)), byID)
	if st.slots != slots || !slices.Equal(tagged, files) {
		t.Errorf("LUKS2 volume: %d keyslots tagged %v; want %d, tagged with the key files %v",
			st.slots, st.tags, slots, files)
	}
	return st
}

// owners checks that the key server records the UPNs want as the
// device's users, the first of them primary.
func (s *ucState) owners(ctx context.Context, want ...string) {
	t := s.t
	t.Helper()
	info, err := s.e.Admin.Device(ctx, s.dev.ID)
	if err != nil {
		t.Fatalf("Device = %v", err)
	}
	var got []string
	for i, o := range info.Owners {
		if o.Primary != (i == 0) {
			t.Errorf("owner %s primary %v, want only the first primary", o.UPN, o.Primary)
		}
		got = append(got, o.UPN)
	}
	if !slices.Equal(got, want) {
		t.Errorf("owners %v, want %v", got, want)
	}
}

// signedIn checks the key server's last sign-in on the device: upn's,
// which made key file kf and added the user to the device as owner says
// ("primary", "added", or "" for not at all).
func (s *ucState) signedIn(ctx context.Context, upn string, kf keyfile.ID, owner string) {
	t := s.t
	t.Helper()
	ins := events(t, ctx, s.e, s.dev, "signin")
	if len(ins) == 0 {
		t.Fatal("the key server recorded no sign-in on the device")
	}
	d := ins[len(ins)-1].Detail
	if d["upn"] != upn || d["new_key_file"] != kf.String() || d["owner"] != owner {
		t.Errorf("last sign-in %v, want %s's, making key file %s, owner %q", d, upn, kf, owner)
	}
}

// running returns the lab's running process called name.
func running(t *testing.T, l *Lab, name string) *Process {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.procs {
		if p.Name == name && !p.Exited() {
			return p
		}
	}
	t.Fatalf("the lab runs no %s", name)
	return nil
}

// pause stops p with SIGSTOP, as a server that hangs, until the test ends.
func pause(t *testing.T, p *Process) {
	t.Helper()
	if err := syscall.Kill(p.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(p.Pid(), syscall.SIGCONT) })
}

// dcDown takes the domain controller off the LAN, as one that is down:
// its address leaves the bridge, so that neither the laptops nor pbnd
// reach it. The returned function, also called when the test ends, puts
// the address back and checks that the DC answers again.
func dcDown(t *testing.T, ctx context.Context, e *Enterprise) (up func()) {
	t.Helper()
	addr := fmt.Sprintf("%s/%d", DCAddr, Subnet.Bits())
	if err := ip(ctx, "-n", e.Lab.Name, "addr", "del", addr, "dev", "br0"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	up = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := ip(ctx, "-n", e.Lab.Name, "addr", "add", addr, "dev", "br0"); err != nil {
				t.Error(err)
				return
			}
			if err := asDCAdmin(e, func(*ldap.Conn) error { return nil }); err != nil {
				t.Errorf("the DC does not answer with its address back: %v", err)
			}
		})
	}
	t.Cleanup(up)
	return up
}

// asDCAdmin runs fn on a connection to the lab's DC over LDAPS, bound as
// its Administrator, from inside the lab.
func asDCAdmin(e *Enterprise, fn func(*ldap.Conn) error) error {
	return netns.Do(e.Lab.Name, func() error {
		c, err := ldap.DialURL(e.DC.LDAPS(), ldap.DialWithTLSConfig(e.DC.TLSConfig()))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Bind("Administrator@"+e.DC.DNSDomain, e.DC.AdminPassword); err != nil {
			return err
		}
		return fn(c)
	})
}
