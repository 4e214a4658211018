package provisioning

import (
	"bytes"
	"context"
	"crypto"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/kstest"
	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

// The user of every test; the password meets the domain's rules. newHire
// must change it at the first sign-in, through changeAccount.
const (
	user          = "carol"
	password      = "Corr3ct-horse"
	newHire       = "dave"
	changeAccount = "pbn-change"
)

// testTimeout bounds each test's work with the real components.
const testTimeout = 3 * time.Minute

var (
	dcOnce sync.Once
	dcErr  error
)

// sharedDC returns the package's Samba AD DC with the user in it.
func sharedDC(t *testing.T) *samba.DC {
	t.Helper()
	dc := samba.Shared(t)
	dcOnce.Do(func() {
		for _, u := range []samba.User{{Name: user, Password: password},
			{Name: newHire, Password: password, State: samba.MustChange},
			{Name: changeAccount, Password: password}} {
			if _, dcErr = dc.AddUser(context.Background(), u); dcErr != nil {
				return
			}
		}
	})
	if dcErr != nil {
		t.Fatalf("DC fixture: %v", dcErr)
	}
	return dc
}

// env is one test's enterprise and device: a key server on loopback with
// SQLite and Tang keys and the shared DC behind it, a swtpm, and a device
// enrolled with it whose ESP is a directory and whose LUKS2 volume is an
// image file with one keyslot, the provisioning key file's.
type env struct {
	dc      *samba.DC
	ad      *ad.Client
	admin   *keyserver.Client
	device  keyfile.ID
	stop    func() // stops the key server
	tpm     *tpm.TPM
	keyDir  string
	volume  disk.Keyslots
	network keyfile.Factor
	server  *keyserver.Client // the device's
	prov    string            // the provisioning key file's path
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{dc: sharedDC(t), keyDir: filepath.Join(t.TempDir(), disk.KeyDir)}
	cryptsetup := testenv.Command(t, "cryptsetup")
	var err error
	e.ad, err = ad.New(ad.Config{Domain: e.dc.DNSDomain, DCs: []string{e.dc.LDAPS()}, CA: e.dc.CA.PEM})
	if err != nil {
		t.Fatal(err)
	}
	url, pin := e.startServer(t)

	sim := swtpm.Start(t)
	if e.tpm, err = tpm.Open(context.Background(), sim.Path(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tpm.Close() })
	key, err := e.tpm.DeviceKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e.server, err = keyserver.NewClient(url, pin, key); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.server.CloseIdleConnections)
	e.network = tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: key}}
	fde := e.provision(t, key)
	defer fde.Wipe()

	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file=-", img)
	cmd.Stdin = bytes.NewReader(fde)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}
	e.volume = disk.Keyslots{Cryptsetup: cryptsetup, Dev: img}
	return e
}

// startServer starts the key server on loopback with an administrator,
// and returns its URL and pinned key.
func (e *env) startServer(t *testing.T) (string, []byte) {
	t.Helper()
	srv := kstest.Start(t, keyserver.AD(e.ad))
	e.stop, e.admin = srv.Stop, srv.Admin
	return srv.URL, srv.Pin
}

// provision enrolls the device with its TPM's device key and stores its
// provisioning key file, and returns the key file's FDE secret.
func (e *env) provision(t *testing.T, key crypto.Signer) secret.Bytes {
	t.Helper()
	ctx := context.Background()
	spki, _ := keyserver.PublicKey(key)
	id := keyfile.NewID()
	e.device = keyfile.NewID()
	p, err := e.admin.Enroll(ctx, store.Device{ID: e.device, Hostname: "laptop", Group: "laptops",
		EK: []byte("ek"), SRK: []byte("srk"), Key: spki}, id)
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	fde := secret.Random(securemoment.FDESize)
	f, err := keyfile.New(keyfile.Header{ID: id, Kind: keyfile.KindProvisioning, DeviceID: e.device,
		Server: p.Server}, &keyfile.Keyring{FDE: fde.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.AddProtector(ctx, "network", e.network); err != nil {
		t.Fatalf("AddProtector(network) = %v", err)
	}
	if err := os.MkdirAll(e.keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.prov = filepath.Join(e.keyDir, "provisioning"+keyfile.Ext)
	if err := keyfile.Replace(keyfile.OSFS{}, e.prov, f); err != nil {
		t.Fatal(err)
	}
	return fde
}

// session is a person at a console made of pipes: what the stage says is
// in out, and what the person types goes into type.
type session struct {
	out  *syncBuffer
	in   *os.File // the person's end
	term *Terminal
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newSession(t *testing.T) *session {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	out := &syncBuffer{}
	return &session{out: out, in: w, term: &Terminal{Console: console.New(r, out), In: r}}
}

// typeIn types s; a pipe's buffer holds a few lines.
func (s *session) typeIn(t *testing.T, text string) {
	t.Helper()
	if _, err := s.in.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// stage returns the device's provisioning stage on the session, reading
// the provisioning key file afresh, with a secure moment against dir.
func (e *env) stage(t *testing.T, s *session, dir securemoment.Directory, steps *[]StepEvent) *Stage {
	t.Helper()
	f, err := keyfile.Load(keyfile.OSFS{}, e.prov)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	log := slog.New(StepReporter(slog.DiscardHandler, func(ev StepEvent) {
		if steps != nil {
			*steps = append(*steps, ev)
		}
	}))
	return &Stage{Provisioning: f, Network: e.network, Countdown: time.Second, Prompt: s.term,
		Logger: slog.New(slog.NewTextHandler(testLog{t}, nil)),
		SecureMoment: &securemoment.Device{ESP: keyfile.OSFS{}, KeyDir: e.keyDir, Volume: e.volume,
			TPM: e.tpm, Directory: dir, Server: e.server, Network: e.network,
			Argon2: keyfile.FloorArgon2, Logger: log}}
}

// testLog writes a log to the test's output.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Logf("%s", bytes.TrimSpace(p))
	return len(p), nil
}
