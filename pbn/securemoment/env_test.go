package securemoment

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/internal/kstest"
	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

// The user of every test, and another one; the password, theirs both,
// meets the domain's complexity rules.
const (
	user     = "alice"
	other    = "bob"
	password = "Corr3ct-horse"
	keyDir   = "/esp/EFI/PBN/keys"
)

// testTimeout bounds each test's work with the real components.
const testTimeout = 5 * time.Minute

var (
	dcOnce sync.Once
	dcErr  error
)

// sharedDC returns the package's Samba AD DC, with alice in the group
// pbn-staff, so that her claim carries a group key, and bob.
func sharedDC(t testing.TB) *samba.DC {
	t.Helper()
	dc := samba.Shared(t)
	dcOnce.Do(func() {
		var dn string
		dn, dcErr = dc.AddUser(context.Background(), samba.User{Name: user, Password: password})
		if dcErr == nil {
			_, dcErr = dc.AddGroup("pbn-staff", dn)
		}
		if dcErr == nil {
			_, dcErr = dc.AddUser(context.Background(), samba.User{Name: other, Password: password})
		}
	})
	if dcErr != nil {
		t.Fatalf("DC fixture: %v", dcErr)
	}
	return dc
}

// env is one test's enterprise: the DC, a key server on loopback with
// SQLite and Tang keys, and a swtpm.
type env struct {
	ad         *ad.Client
	srv        *kstest.Server
	admin      *keyserver.Client
	tpm        *tpm.TPM
	cryptsetup string
}

func newKey(t testing.TB) crypto.Signer { return kstest.NewKey(t) }

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{cryptsetup: testenv.Command(t, "cryptsetup")}
	dc := sharedDC(t)
	var err error
	e.ad, err = ad.New(ad.Config{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}, CA: dc.CA.PEM})
	if err != nil {
		t.Fatal(err)
	}

	srv := kstest.Start(t, keyserver.AD(e.ad))
	e.srv, e.admin = srv, srv.Admin

	sim := swtpm.Start(t)
	if e.tpm, err = tpm.Open(context.Background(), sim.Path(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tpm.Close() })
	return e
}

func (e *env) client(t testing.TB, key crypto.Signer) *keyserver.Client {
	t.Helper()
	return e.srv.Client(t, key)
}

// testDevice is a device in the provisioning stage: enrolled, with a
// provisioning key file on its ESP (a faultfs) and a LUKS2 volume in an
// image file with one keyslot, the provisioning key file's.
type testDevice struct {
	*Device
	esp     *faultfs.FS
	img     string
	prov    keyfile.ID
	provFDE secret.Bytes
}

// espFS adapts faultfs to keyfile.FS.
type espFS struct{ *faultfs.FS }

func (f espFS) Create(name string) (keyfile.File, error) {
	w, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (e *env) newDevice(t testing.TB) *testDevice {
	t.Helper()
	ctx := context.Background()
	key := newKey(t)
	spki, _ := keyserver.PublicKey(key)
	d := &testDevice{prov: keyfile.NewID(), provFDE: secret.Random(FDESize), esp: faultfs.New(nil),
		img: filepath.Join(t.TempDir(), "disk.img")}
	devID := keyfile.NewID()
	p, err := e.admin.Enroll(ctx, store.Device{ID: devID, Hostname: "laptop", Group: "laptops",
		EK: []byte("ek"), SRK: []byte("srk"), Key: spki}, d.prov)
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	network := tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: key}}
	f, err := keyfile.New(keyfile.Header{ID: d.prov, Kind: keyfile.KindProvisioning, DeviceID: devID,
		Server: p.Server}, &keyfile.Keyring{FDE: d.provFDE.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.AddProtector(ctx, "network", network); err != nil {
		t.Fatalf("AddProtector(network) = %v", err)
	}
	if err := keyfile.Replace(espFS{d.esp}, filepath.Join(keyDir, "provisioning"+keyfile.Ext), f); err != nil {
		t.Fatal(err)
	}
	d.esp = faultfs.New(d.esp.Durable()) // count only the secure moment's operations

	if err := os.WriteFile(d.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.img, 20<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file=-", d.img)
	cmd.Stdin = bytes.NewReader(d.provFDE)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}

	d.Device = &Device{ESP: espFS{d.esp}, KeyDir: keyDir,
		Volume: disk.Keyslots{Cryptsetup: e.cryptsetup, Dev: d.img}, TPM: e.tpm, Directory: e.ad,
		Server: e.client(t, key), Network: network, Argon2: keyfile.FloorArgon2}
	return d
}

// after returns the device as it boots after a power cut that left its
// ESP in state: the same volume, TPM and server.
func (d *testDevice) after(state map[string][]byte) *testDevice {
	n := *d
	dev := *d.Device
	n.esp = faultfs.New(state)
	dev.ESP, dev.afterStep = espFS{n.esp}, nil
	n.Device = &dev
	return &n
}

// keyslots returns the number of keyslots of the volume.
func (d *testDevice) keyslots(t testing.TB) int {
	t.Helper()
	out, err := exec.Command(d.Volume.(disk.Keyslots).Cryptsetup, "luksDump", "--dump-json-metadata",
		d.img).Output()
	if err != nil {
		t.Fatalf("luksDump: %v", err)
	}
	var m struct {
		Keyslots map[string]json.RawMessage `json:"keyslots"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("luksDump: %v", err)
	}
	return len(m.Keyslots)
}
