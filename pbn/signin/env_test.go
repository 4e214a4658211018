package signin

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/go-ldap/ldap/v3"

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
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

// The accounts of the tests: alice owns the device (her secure moment),
// bob is a further user, carol an administrator account of the policy,
// dave an account the directory disables. Their password meets the
// domain's complexity rules.
const (
	alice    = "alice"
	bob      = "bob"
	carol    = "carol"
	dave     = "dave"
	password = "Corr3ct-horse"
	keyDir   = "/esp/EFI/PBN/keys"
)

// testTimeout bounds each test's work with the real components.
const testTimeout = 5 * time.Minute

var (
	dcOnce sync.Once
	dcErr  error
)

// sharedDC returns the package's Samba AD DC with the accounts of the
// tests, alice in the group pbn-staff so that her keys hold a group key.
func sharedDC(t testing.TB) *samba.DC {
	t.Helper()
	dc := samba.Shared(t)
	dcOnce.Do(func() {
		ctx := context.Background()
		var dn string
		dn, dcErr = dc.AddUser(ctx, samba.User{Name: alice, Password: password})
		if dcErr == nil {
			_, dcErr = dc.AddGroup("pbn-staff", dn)
		}
		for _, u := range []string{bob, carol, dave} {
			if dcErr == nil {
				_, dcErr = dc.AddUser(ctx, samba.User{Name: u, Password: password})
			}
		}
	})
	if dcErr != nil {
		t.Fatalf("DC fixture: %v", dcErr)
	}
	return dc
}

// adminLDAP returns a connection to the DC bound as its Administrator,
// to change accounts as an administrator would.
func adminLDAP(t testing.TB, dc *samba.DC) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(dc.LDAPS(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind("Administrator@"+dc.DNSDomain, dc.AdminPassword); err != nil {
		t.Fatal(err)
	}
	return c
}

func userDN(dc *samba.DC, name string) string { return "CN=" + name + ",CN=Users," + dc.BaseDN }

// setPassword resets an account's password, as a help desk does.
func setPassword(t testing.TB, dc *samba.DC, name, pw string) {
	t.Helper()
	var b []byte
	for _, u := range utf16.Encode([]rune(`"` + pw + `"`)) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	m := ldap.NewModifyRequest(userDN(dc, name), nil)
	m.Replace("unicodePwd", []string{string(b)})
	if err := adminLDAP(t, dc).Modify(m); err != nil {
		t.Fatalf("reset %s's password: %v", name, err)
	}
}

// disable disables an account (userAccountControl ACCOUNTDISABLE, MS-ADTS
// 2.2.16, on a normal account).
func disable(t testing.TB, dc *samba.DC, name string) {
	t.Helper()
	m := ldap.NewModifyRequest(userDN(dc, name), nil)
	m.Replace("userAccountControl", []string{fmt.Sprint(0x200 | 0x2)})
	if err := adminLDAP(t, dc).Modify(m); err != nil {
		t.Fatalf("disable %s: %v", name, err)
	}
}

// env is one test's enterprise: the DC, a key server on loopback with
// SQLite and Tang keys, and a swtpm.
type env struct {
	dc         *samba.DC
	ad         *ad.Client
	url        string
	pin        []byte
	admin      *keyserver.Client
	tpm        *tpm.TPM
	cryptsetup string
	// unreachable is a loopback address where nothing listens.
	unreachable string
}

func newKey(t testing.TB) crypto.Signer { return kstest.NewKey(t) }

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{cryptsetup: testenv.Command(t, "cryptsetup"), dc: sharedDC(t)}
	var err error
	e.ad, err = ad.New(ad.Config{Domain: e.dc.DNSDomain, DCs: []string{e.dc.LDAPS()}, CA: e.dc.CA.PEM})
	if err != nil {
		t.Fatal(err)
	}

	srv := kstest.Start(t, keyserver.AD(e.ad))
	e.url, e.pin, e.admin = srv.URL, srv.Pin, srv.Admin

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.unreachable = closed.Addr().String()
	closed.Close()

	sim := swtpm.Start(t)
	if e.tpm, err = tpm.Open(context.Background(), sim.Path(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tpm.Close() })
	return e
}

func (e *env) client(t testing.TB, url string, key crypto.Signer) *keyserver.Client {
	t.Helper()
	c, err := keyserver.NewClient(url, e.pin, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
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

// testDevice is a device whose secure moment made alice its owner: her
// key file on its ESP (a faultfs), its LUKS2 volume in an image file.
type testDevice struct {
	*Device
	e   *env
	id  keyfile.ID
	img string
	// offline is the device with the directory and the key server
	// unreachable.
	offline *Device
}

// newDevice enrolls a device in group with policy p, and runs alice's
// secure moment on it.
func (e *env) newDevice(t testing.TB, p store.Policy) *testDevice {
	t.Helper()
	return e.newDeviceBy(t, p, alice)
}

// newDeviceBy enrolls a device in group with policy p, and runs the
// secure moment of account on it.
func (e *env) newDeviceBy(t testing.TB, p store.Policy, account string) *testDevice {
	t.Helper()
	ctx := testContext(t)
	if err := e.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	spki, _ := keyserver.PublicKey(key)
	d := &testDevice{e: e, id: keyfile.NewID(), img: filepath.Join(t.TempDir(), "disk.img")}
	binding, provFDE := keyfile.NewID(), secret.Random(securemoment.FDESize)
	prov, err := e.admin.Enroll(ctx, store.Device{ID: d.id, Hostname: "laptop", Group: p.Group,
		EK: []byte("ek"), SRK: []byte("srk"), Key: spki}, binding)
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	esp := espFS{faultfs.New(nil)}
	network := tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: key}}
	f, err := keyfile.New(keyfile.Header{ID: binding, Kind: keyfile.KindProvisioning, DeviceID: d.id,
		Server: prov.Server}, &keyfile.Keyring{FDE: provFDE.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.AddProtector(ctx, "network", network); err != nil {
		t.Fatalf("AddProtector(network) = %v", err)
	}
	if err := keyfile.Replace(esp, filepath.Join(keyDir, "provisioning"+keyfile.Ext), f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.img, 20<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file=-", d.img)
	cmd.Stdin = bytes.NewReader(provFDE)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}

	vol := disk.Keyslots{Cryptsetup: e.cryptsetup, Dev: d.img}
	server := e.client(t, e.url, key)
	sm := &securemoment.Device{ESP: esp, KeyDir: keyDir, Volume: vol, TPM: e.tpm, Directory: e.ad,
		Server: server, Network: network, Argon2: keyfile.FloorArgon2}
	res, err := sm.Run(ctx, account, secret.Bytes(password))
	if err != nil {
		t.Fatalf("%s's secure moment: %v", account, err)
	}
	res.KeyFile.Close()

	d.Device = &Device{ESP: esp, KeyDir: keyDir, Volume: vol, TPM: e.tpm, Directory: e.ad,
		Server: server, Argon2: keyfile.FloorArgon2}
	deadDC, err := ad.New(ad.Config{Domain: e.dc.DNSDomain, DCs: []string{"ldaps://" + e.unreachable},
		CA: e.dc.CA.PEM})
	if err != nil {
		t.Fatal(err)
	}
	off := *d.Device
	off.Directory, off.Server = deadDC, e.client(t, "https://"+e.unreachable, key)
	d.offline = &off
	return d
}

// keyslots returns the number of keyslots of the volume.
func (d *testDevice) keyslots(t testing.TB) int {
	t.Helper()
	out, err := exec.Command(d.e.cryptsetup, "luksDump", "--dump-json-metadata", d.img).Output()
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

// events returns the kinds and details of the server's audit trail.
func (e *env) events(t testing.TB) []store.Event {
	t.Helper()
	var es []store.Event
	err := e.admin.Audit(testContext(t), keyserver.AuditQuery{}, func(ev store.Event) error {
		es = append(es, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return es
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
