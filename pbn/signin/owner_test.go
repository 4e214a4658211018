package signin

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/internal/kstest"
	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/enroll"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// olivia is the owner an administrator assigns to a device before its
// imaging.
const olivia = "olivia"

var oliviaOnce sync.Once

// ownedDevice is a device enrolled with its owner known in advance: the
// owner's key file on its ESP, its LUKS2 volume in an image file, its
// swtpm reached through a transport of the test's own, so that the test
// can extend its PCRs as another boot would measure.
type ownedDevice struct {
	online, offline *Device
	sim             *swtpm.Sim
	tr              transport.TPMCloser
	srv             *kstest.Server
	path            string // the owner's key file
}

// newOwnedDevice starts a key server whose directory can look accounts
// up (with the DC's Administrator as the lookup account), enrolls a
// device owned by olivia with enroll.EnrollOwned, and stores her key file
// and a keyslot of its FDE secret as imaging does.
func newOwnedDevice(t *testing.T) *ownedDevice {
	t.Helper()
	ctx := testContext(t)
	dc := sharedDC(t)
	oliviaOnce.Do(func() {
		if _, err := dc.AddUser(ctx, samba.User{Name: olivia, Password: password}); err != nil {
			t.Fatalf("add %s: %v", olivia, err)
		}
	})
	cfg := ad.Config{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}, CA: dc.CA.PEM}
	login, err := ad.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LookupAccount, cfg.LookupAccountPassword = "Administrator@"+dc.DNSDomain, secret.Bytes(dc.AdminPassword)
	lookup, err := ad.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := &ownedDevice{srv: kstest.Start(t, keyserver.AD(lookup)), sim: swtpm.Start(t)}
	c, err := net.Dial("unix", strings.TrimPrefix(o.sim.Path(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	o.tr = transport.FromReadWriteCloser(c)
	t.Cleanup(func() { o.tr.Close() })
	tp := tpm.New(o.tr, nil)
	t.Cleanup(func() { tp.Close() })

	f, err := enroll.EnrollOwned(ctx, tp, o.srv.Admin, enroll.Device{Hostname: "owned", Group: "laptops"}, olivia)
	if err != nil {
		t.Fatalf("EnrollOwned(%s) = %v", olivia, err)
	}
	defer f.Close()
	esp := espFS{faultfs.New(nil)}
	o.path = filepath.Join(keyDir, f.Header().SID+keyfile.Ext)
	if err := keyfile.Replace(esp, o.path, f); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 20<<20); err != nil {
		t.Fatal(err)
	}
	cs := testenv.Command(t, "cryptsetup")
	cmd := exec.Command(cs, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file=-", img)
	cmd.Stdin = bytes.NewReader(f.Keyring().FDE)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}

	key, err := tp.DeviceKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	server := o.srv.Client(t, key)
	o.online = &Device{ESP: esp, KeyDir: keyDir, Volume: disk.Keyslots{Cryptsetup: cs, Dev: img}, TPM: tp,
		Directory: login, Server: server, Argon2: keyfile.FloorArgon2}
	off := *o.online
	off.Directory, off.Server = nil, nil
	o.offline = &off
	return o
}

// reload reads the owner's key file from the ESP, unopened.
func (o *ownedDevice) reload(t *testing.T) *keyfile.KeyFile {
	t.Helper()
	f, err := keyfile.Load(o.online.ESP, o.path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// lastSignIn returns the server's last sign-in event.
func (o *ownedDevice) lastSignIn(t *testing.T) store.Event {
	t.Helper()
	var last store.Event
	err := o.srv.Admin.Audit(testContext(t), keyserver.AuditQuery{}, func(e store.Event) error {
		if e.Kind == "signin" {
			last = e
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return last
}

// TestOwnerKnownInAdvance walks a device whose owner was assigned before
// imaging through its first sign-ins, against the real DC, key server and
// TPM: the owner's key file made at enrolment opens with nothing but the
// server's escrow; offline, her first sign-in is refused with the
// sentence; online, the key file is sealed to the TPM and her password;
// then a boot that measures otherwise (a PCR extended, as the first PBN
// boot after pbnctl install may) is refused offline and sealed again
// online. Each step builds on the state the ones before left.
//
// What it does not prove: that the device key asking for the escrow runs
// in the measured agent (it is not PCR-bound; see reseal.go), or that the
// prompt of cmds/pbn shows these sentences (the lab's tests do).
func TestOwnerKnownInAdvance(t *testing.T) {
	o := newOwnedDevice(t)
	upn := olivia + "@" + sharedDC(t).DNSDomain

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"owner's key file made at enrolment", func(t *testing.T) {
			f := o.reload(t)
			h, ps := f.Header(), f.Protectors()
			if h.Kind != keyfile.KindUser || h.UPN != upn || !AwaitsFirstSignIn(f) || len(ps) != 1 ||
				ps[0].Label != securemoment.LabelRecovery {
				t.Errorf("key file %+v with protectors %+v; want %s's, a recovery protector alone", h, ps, upn)
			}
			info, err := o.srv.Admin.Device(testContext(t), h.DeviceID)
			if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != upn || !info.Owners[0].Primary {
				t.Errorf("Device = %+v, %v; want %s as its primary owner", info, err, upn)
			}
		}},
		{"first sign-in offline", func(t *testing.T) {
			_, err := signIn(t, o.offline, olivia, password)
			if !errors.Is(err, ErrFirstSignIn) || !strings.Contains(Sentence(err), "company network") {
				t.Errorf("SignIn(offline, first) = %v (%q), want ErrFirstSignIn", err, Sentence(err))
			}
		}},
		{"first sign-in with a wrong password", func(t *testing.T) {
			if _, err := signIn(t, o.online, olivia, "Wr0ng-horse"); !WrongPassword(err) {
				t.Errorf("SignIn(wrong password) = %v, want a wrong password", err)
			}
			if !AwaitsFirstSignIn(o.reload(t)) {
				t.Errorf("the key file was sealed after a wrong password")
			}
		}},
		{"first sign-in online", func(t *testing.T) {
			res, err := signIn(t, o.online, olivia, password)
			if err != nil || !res.Reprotected || !res.Online {
				t.Fatalf("SignIn(online, first) = %+v, %v; want her key file sealed", res, err)
			}
			f := o.reload(t)
			if AwaitsFirstSignIn(f) || !slices.ContainsFunc(f.Protectors(), func(p keyfile.ProtectorInfo) bool {
				return p.Label == securemoment.LabelPasswordTPM && slices.Contains(p.Factors, keyfile.FactorTPM)
			}) || f.Header().Generation < 2 {
				t.Errorf("key file after the first sign-in: protectors %+v, generation %d; want a TPM and "+
					"password protector in a later generation", f.Protectors(), f.Header().Generation)
			}
			if e := o.lastSignIn(t); e.Detail["reason"] != keyserver.ResealFirstSignIn {
				t.Errorf("last sign-in event %+v, want the reason %s", e, keyserver.ResealFirstSignIn)
			}
			if _, err := signIn(t, o.offline, olivia, password); err != nil {
				t.Errorf("SignIn(offline, after the first) = %v", err)
			}
		}},
		{"boot changed offline", func(t *testing.T) {
			swtpm.ExtendOn(t, o.tr, 4, "another initramfs")
			_, err := signIn(t, o.offline, olivia, password)
			if !errors.Is(err, ErrBootChanged) || !errors.Is(err, tpm.ErrPCRMismatch) ||
				!strings.Contains(Sentence(err), "company network") {
				t.Errorf("SignIn(offline, PCR 4 extended) = %v (%q), want ErrBootChanged", err, Sentence(err))
			}
		}},
		{"boot changed online", func(t *testing.T) {
			res, err := signIn(t, o.online, olivia, password)
			if err != nil || !res.Reprotected {
				t.Fatalf("SignIn(online, PCR 4 extended) = %+v, %v; want her key file sealed again", res, err)
			}
			if e := o.lastSignIn(t); e.Detail["reason"] != keyserver.ResealTPMRefused {
				t.Errorf("last sign-in event %+v, want the reason %s", e, keyserver.ResealTPMRefused)
			}
			if _, err := signIn(t, o.offline, olivia, password); err != nil {
				t.Errorf("SignIn(offline, after the reseal) = %v", err)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			t.Fatalf("step %q failed: the steps after it build on it", st.name)
		}
	}
}
