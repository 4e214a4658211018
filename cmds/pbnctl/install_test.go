package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
)

// installSystem is a system in use for pbnctl install: a LUKS2 volume in
// an image file with one keyslot, its passphrase in a file, an ESP
// directory, an initramfs, the PBN image and its configuration.
type installSystem struct {
	volume     disk.Keyslots
	passphrase string // the file
	esp        string
	initramfs  string
	image      string
	config     string
}

func newInstallSystem(t *testing.T, caFile string, dcConfig config.AD) *installSystem {
	t.Helper()
	dir := t.TempDir()
	s := &installSystem{volume: disk.Keyslots{Cryptsetup: testenv.Command(t, "cryptsetup"),
		Dev: filepath.Join(dir, "luks.img")}, passphrase: filepath.Join(dir, "passphrase"),
		esp: filepath.Join(dir, "esp"), initramfs: filepath.Join(dir, "initrd.img"),
		image: filepath.Join(dir, "pbn.img"), config: filepath.Join(dir, "etc-pbn")}
	files := map[string]string{s.passphrase: "old passphrase\n", s.initramfs: "the distribution's initramfs",
		s.image: "the PBN image", s.volume.Dev: ""}
	for _, d := range []string{s.esp, s.config} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// install wants the ESP mounted: a tmpfs of the test's own stands in.
	testenv.Root(t)
	if err := unix.Mount("tmpfs", s.esp, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount the ESP: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(s.esp, 0) })
	conf, _ := json.Marshal(config.Config{Version: config.Version, AD: dcConfig})
	files[filepath.Join(s.config, config.ConfigFile)] = string(conf)
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	files[filepath.Join(s.config, config.CAFile)] = string(ca)
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(s.volume.Dev, 20<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(s.volume.Cryptsetup, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", s.passphrase, s.volume.Dev).CombinedOutput()
	if err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}
	return s
}

// args returns pbnctl install's arguments for this system, and more.
func (s *installSystem) args(admin, tpmPath string, more ...string) []string {
	return append([]string{"install", "--admin", admin, "--tpm", tpmPath, "--device", s.volume.Dev,
		"--esp", s.esp, "--image", s.image, "--initramfs", s.initramfs, "--config", s.config,
		"--group", "laptops", "--hostname", "in-use", "--password-stdin", fast}, more...)
}

// TestInstall runs pbnctl install as a deployment tool does, with the real
// DC, a key server on loopback, swtpm and cryptsetup on an image file:
// refused for an ESP not mounted, a wrong passphrase and a wrong password,
// then through, then again, which changes nothing, and refused for a
// second user, whom the default policy does not allow. It does not prove that the installed image
// boots (package qemu's TestInstallInUse does) nor that the TPM binds the
// key file to the boot chain (pbn/tpm's tests do).
func TestInstall(t *testing.T) {
	dc, caFile := adFixture(t)
	adClient, err := ad.New(ad.Config{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}, CA: dc.CA.PEM})
	if err != nil {
		t.Fatal(err)
	}
	admin, _, c := keyServerWith(t, keyserver.AD(adClient))
	tpmPath := swtpm.Start(t).Path()
	s := newInstallSystem(t, caFile, config.AD{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}})
	wrongFile := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrongFile, []byte("not the passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := adPassword + "\n"

	steps := []struct {
		name      string
		stdin     string
		args      []string
		code      int
		want      string // a regular expression
		installed bool
	}{
		{"no device", pw, []string{"install", "--image", s.image, "--group", "laptops", "alice"}, exitUsage,
			"--device, --image and --group are required", false},
		{"ESP not mounted", pw, s.args(admin, tpmPath, "--esp", s.config, "--passphrase-file", s.passphrase,
			"alice"), exitUsage, "not a mounted file system", false},
		{"wrong passphrase", pw, s.args(admin, tpmPath, "--passphrase-file", wrongFile, "alice"),
			exitWrongPassphrase, "no keyslot", false},
		{"wrong password", "Wr0ng-horse\n", s.args(admin, tpmPath, "--passphrase-file", s.passphrase, "alice"),
			exitSignInRefused, "authenticate", false},
		{"through", pw, s.args(admin, tpmPath, "--passphrase-file", s.passphrase, "alice"), exitOK,
			`kernel command line: rd\.luks\.uuid=[0-9a-f-]{36}\n`, true},
		{"again", pw, s.args(admin, tpmPath, "--passphrase-file", s.passphrase, "alice"), exitOK,
			"the passphrase still opens keyslot 0", true},
		{"another user", pw, s.args(admin, tpmPath, "--passphrase-file", s.passphrase, "nomember"),
			exitClaimRefused, "too-many-users", true},
	}
	for _, st := range steps {
		out, code := pbnctl(t, st.stdin, st.args...)
		if code != st.code || !regexp.MustCompile(st.want).MatchString(out) {
			t.Errorf("%s: install = %d: %s\nwant %d and %q", st.name, code, out, st.code, st.want)
		}
		if strings.Contains(out, adPassword) || strings.Contains(out, "old passphrase") {
			t.Errorf("%s: install printed a secret: %s", st.name, out)
		}
		s.check(t, st.name, st.installed)
	}

	devs, err := c.Devices(t.Context())
	if err != nil || len(devs) != 1 {
		t.Fatalf("Devices = %v, %v; want the one device", devs, err)
	}
	info, err := c.Device(t.Context(), devs[0].ID)
	if err != nil || len(info.Owners) != 1 || !strings.HasPrefix(info.Owners[0].UPN, "alice@") {
		t.Errorf("Device = %+v, %v; want alice its one owner", info, err)
	}
}

// check checks what install left on the system: with installed, the one
// key file on the ESP, its tagged keyslot, the passphrase's keyslot kept
// and the image installed with the old initramfs kept beside it; without,
// no key file, one keyslot and the old initramfs.
func (s *installSystem) check(t *testing.T, what string, installed bool) {
	t.Helper()
	ctx := t.Context()
	paths, _ := keyfile.List(keyfile.OSFS{}, filepath.Join(s.esp, disk.KeyDir))
	tags, err := s.volume.Tags(ctx)
	if err != nil {
		t.Fatalf("%s: Tags = %v", what, err)
	}
	passphrase, _ := os.ReadFile(s.passphrase)
	if slot, err := s.volume.Find(ctx, secret.Bytes(passphrase)); err != nil || slot != 0 {
		t.Errorf("%s: the passphrase opens keyslot %d, %v; want 0", what, slot, err)
	}
	img, _ := os.ReadFile(s.initramfs)
	if !installed {
		if len(paths) != 0 || len(tags) != 0 || string(img) != "the distribution's initramfs" {
			t.Errorf("%s: key files %v, tags %v, initramfs %q; want none, none, the old one", what, paths, tags, img)
		}
		return
	}
	if len(paths) != 1 {
		t.Fatalf("%s: key files %v, want one", what, paths)
	}
	f, err := keyfile.Load(keyfile.OSFS{}, paths[0])
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer f.Close()
	var tagged []keyfile.ID
	for slot, id := range tags {
		if slot != 0 {
			tagged = append(tagged, id)
		}
	}
	if len(tags) != 1 || len(tagged) != 1 || tagged[0] != f.Header().ID {
		t.Errorf("%s: tags %v, want one keyslot besides 0 tagged %s", what, tags, f.Header().ID)
	}
	old, _ := os.ReadFile(s.initramfs + imageSuffix)
	if !bytes.Equal(img, []byte("the PBN image")) || string(old) != "the distribution's initramfs" {
		t.Errorf("%s: initramfs %q, kept %q; want the PBN image and the old one kept", what, img, old)
	}
}
