package securemoment

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// existingSteps are the steps a start from an existing key has work in.
var existingSteps = Steps[:StepKeyslot]

// newInUse returns a device in use: enrolled as enroll.EnrollDevice
// enrolls it (its one binding revoked at once), an empty ESP, and a LUKS2
// volume whose one keyslot is a passphrase, which Existing names.
func (e *env) newInUse(t testing.TB) *testDevice {
	t.Helper()
	ctx := testContext(t)
	key := newKey(t)
	spki, _ := keyserver.PublicKey(key)
	devID, binding := keyfile.NewID(), keyfile.NewID()
	p, err := e.admin.Enroll(ctx, store.Device{ID: devID, Hostname: "in-use", Group: "laptops",
		EK: []byte("ek"), SRK: []byte("srk"), Key: spki}, binding)
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	if err := e.admin.RevokeBinding(ctx, binding); err != nil {
		t.Fatalf("RevokeBinding = %v", err)
	}

	d := &testDevice{esp: faultfs.New(nil), img: filepath.Join(t.TempDir(), "disk.img")}
	passphrase := secret.Bytes("the old passphrase")
	if err := os.Truncate(createFile(t, d.img), 20<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file=-", d.img)
	cmd.Stdin = bytes.NewReader(passphrase)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}
	d.Device = &Device{ESP: espFS{d.esp}, KeyDir: keyDir,
		Volume: disk.Keyslots{Cryptsetup: e.cryptsetup, Dev: d.img}, TPM: e.tpm, Directory: e.ad,
		Server: e.client(t, key), Argon2: keyfile.FloorArgon2,
		Existing: &Existing{Key: passphrase, DeviceID: devID, Server: p.Server}}
	return d
}

func createFile(t testing.TB, p string) string {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkInstalled checks a device in use whose secure moment finished: the
// user's key file, the only one, opens the volume through its tagged
// keyslot, and the passphrase still opens its own.
func (d *testDevice) checkInstalled(t *testing.T, res *Result) {
	t.Helper()
	ctx := testContext(t)
	if paths, _ := keyfile.List(d.ESP, keyDir); !slices.Equal(paths, []string{res.Path}) {
		t.Errorf("key files %v, want only %s", paths, res.Path)
	}
	userOpens, _, fde := d.opens(t)
	if !userOpens {
		t.Fatalf("the user's key file does not open the volume")
	}
	if slot, err := d.Volume.Find(ctx, fde); err != nil || slot != res.Slot {
		t.Errorf("the user's keyslot = %d, %v, want %d", slot, err, res.Slot)
	}
	if tags, err := d.Volume.Tags(ctx); err != nil || tags[res.Slot] != res.KeyFile.Header().ID {
		t.Errorf("Tags = %v, %v, want keyslot %d tagged %s", tags, err, res.Slot, res.KeyFile.Header().ID)
	}
	d.checkPassphrase(t, "after the secure moment")
	if n := d.keyslots(t); n != 2 {
		t.Errorf("%d keyslots, want 2: the passphrase's and the user's", n)
	}
	h := res.KeyFile.Header()
	if h.DeviceID != d.Existing.DeviceID || h.Server.URL != d.Existing.Server.URL ||
		!bytes.Equal(h.Server.PublicKey, d.Existing.Server.PublicKey) {
		t.Errorf("key file header %+v, want device %s on %s", h, d.Existing.DeviceID, d.Existing.Server.URL)
	}
}

// checkPassphrase checks that the passphrase still opens the volume.
func (d *testDevice) checkPassphrase(t *testing.T, what string) {
	t.Helper()
	if _, err := d.Volume.Find(testContext(t), d.Existing.Key); err != nil {
		t.Errorf("%s: the passphrase: Find = %v, want its keyslot", what, err)
	}
}

// TestRunExisting runs the secure moment of a device in use, from its
// passphrase: the user's key file is made, stored and given a tagged
// keyslot, and the passphrase's keyslot is left alone. It does not prove
// that pbnctl install passes the right key (cmds/pbnctl's tests do).
func TestRunExisting(t *testing.T) {
	e := newEnv(t)
	d := e.newInUse(t)
	ctx := testContext(t)

	res, err := d.Run(ctx, user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	defer res.KeyFile.Close()
	if !slices.Equal(res.Did, existingSteps) {
		t.Errorf("Run did %v, want %v", res.Did, existingSteps)
	}
	d.checkInstalled(t, res)

	again, err := d.Run(ctx, user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run again = %v", err)
	}
	defer again.KeyFile.Close()
	if want := []Step{StepAuthenticate}; !slices.Equal(again.Did, want) {
		t.Errorf("Run again did %v, want %v", again.Did, want)
	}
	d.checkInstalled(t, again)
}

// TestExistingPowerCut cuts the power after each step of a start from an
// existing key and runs the secure moment again: the passphrase opens
// the volume throughout, and the run again finishes. Cuts inside the
// steps' ESP operations are TestPowerCut's: the steps are the same.
func TestExistingPowerCut(t *testing.T) {
	e := newEnv(t)
	for _, s := range existingSteps[:len(existingSteps)-1] {
		t.Run("after "+s.String(), func(t *testing.T) {
			d := e.newInUse(t)
			d.afterStep = func(done Step) error {
				if done == s {
					return faultfs.ErrPowerCut
				}
				return nil
			}
			if _, err := d.Run(testContext(t), user, secret.Bytes(password)); !errors.Is(err, faultfs.ErrPowerCut) {
				t.Fatalf("Run = %v, want the power cut", err)
			}
			again := d.after(d.esp.Durable())
			again.checkPassphrase(t, "after the cut")
			res, err := again.Run(testContext(t), user, secret.Bytes(password))
			if err != nil {
				t.Fatalf("Run after the cut = %v", err)
			}
			defer res.KeyFile.Close()
			again.checkInstalled(t, res)
		})
	}
}

// TestExistingWithProvisioning checks that a device holding a provisioning
// key file does not start from an existing key as well: which of the two
// should be retired is the administrator's call, not the secure moment's.
func TestExistingWithProvisioning(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(t)
	d.Existing = &Existing{Key: d.provFDE, DeviceID: keyfile.NewID()}
	before := d.esp.Ops
	_, err := d.Run(testContext(t), user, secret.Bytes(password))
	if !isStep(err, StepAuthenticate) || errors.Is(err, ErrNotProvisioned) {
		t.Fatalf("Run = %v, want the two starts refused", err)
	}
	if d.esp.Ops != before || d.keyslots(t) != 1 {
		t.Errorf("a refused start changed the device: %v, %d keyslots", d.esp.Trace[before:], d.keyslots(t))
	}
}

// TestExistingNothing checks that a device with no key file and no
// existing key has nothing to start from.
func TestExistingNothing(t *testing.T) {
	e := newEnv(t)
	d := e.newInUse(t)
	d.Existing = nil
	if _, err := d.Run(testContext(t), user, secret.Bytes(password)); !errors.Is(err, ErrNotProvisioned) {
		t.Errorf("Run with no start = %v, want ErrNotProvisioned", err)
	}
}
