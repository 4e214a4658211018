package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/ldd"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
)

// The user of the laptop in use, and the address its running OS takes on
// the LAN (outside the DHCP server's range).
const (
	inUseUser     = "carol"
	inUsePassword = "Inst4ll-horse"
	inUseAddr     = "10.99.0.50"
)

// legacyInit stands in for the distribution's initramfs of a laptop in
// use: it opens the LUKS2 root with its passphrase (typed by a person on
// a real laptop; here a file on the boot disk) and switch_roots into the
// tiny OS there, which runs the boot disk's /running.sh instead of its own
// init. It boots the PBN image, with busybox on top, only for the kernel
// modules and cryptsetup that image carries; the agent does not run.
const legacyInit = `#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /run/cryptsetup /boot /newroot
for m in virtio_pci virtio_blk virtio_net dm_mod dm_crypt aesni_intel xts sha256_generic crc32c_generic ext4 vfat \
	nls_cp437 nls_iso8859_1 nls_ascii tpm_tis; do $bb modprobe $m; done
n=0
while [ ! -b /dev/vda2 ] || [ ! -b /dev/vdb ]; do
	n=$((n+1)); [ $n -gt 100 ] && break; $bb sleep 0.1
done
$bb mount -t ext4 /dev/vdb /boot &&
	/sbin/cryptsetup open --type luks2 --key-file /boot/passphrase /dev/vda2 root &&
	$bb mount -t ext4 /dev/mapper/root /newroot || { echo "legacy: failed"; $bb poweroff -f; }
for d in dev proc sys; do $bb mount --move /$d /newroot/$d; done
$bb mount --move /boot /newroot/mnt
echo "legacy: root opened with the passphrase"
exec $bb switch_root /newroot /bin/busybox sh /mnt/running.sh
`

// runningScript is what the laptop in use runs from its tiny OS: its
// network up, the ESP mounted, and pbnctl install as a deployment tool
// runs it, with no person at the keyboard.
var runningScript = `#!/bin/busybox sh
bb=/bin/busybox
$bb ln -sf /proc/self/fd /dev/fd
$bb mkdir -p /run/esp /run/cryptsetup /tmp
$bb mount -t vfat /dev/vda1 /run/esp
$bb ip link set lo up
$bb ip link set eth0 up
$bb ip addr add ` + inUseAddr + `/24 dev eth0
echo "running: tiny OS up, $($bb ls /sys/class/tpm)"
/mnt/pbnctl install --admin /mnt/admin.json --tpm /dev/tpmrm0 --device /dev/vda2 --esp /run/esp \
	--image /mnt/pbn.img --initramfs /mnt/initrd.img --config /mnt/etc-pbn --cryptsetup /mnt/cryptsetup \
	--group laptops --hostname inuse1 --password-stdin --passphrase-file /mnt/passphrase ` + inUseUser + ` \
	</mnt/password
echo "running: install exit $?"
$bb umount /run/esp
# The script runs from /mnt: read-only, its journal is flushed for the
# host's debugfs, which does not replay it.
$bb mount -o remount,ro /mnt
$bb poweroff -f
`

// cryptsetupWrapper runs the host's cryptsetup from the boot disk with its
// own libraries and dynamic loader: the tiny OS has none.
const cryptsetupWrapper = `#!/bin/busybox sh
exec /mnt/lib/%s --library-path /mnt/lib /mnt/cryptsetup.bin "$@"
`

// bootDisk makes the laptop's boot disk, an ext4 image at img: the
// system's initramfs (legacy, which install replaces), and what install
// needs that the tiny OS lacks: pbnctl (built static), cryptsetup with its
// libraries, the administrator's file, the PBN image and its
// configuration, the passphrase and the user's password.
func bootDisk(t *testing.T, ctx context.Context, e *Enterprise, img, legacy, image string, passphrase secret.Bytes) {
	t.Helper()
	dir := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, "pbnctl"), "./cmds/pbnctl")
	build.Dir, build.Env = "..", append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build pbnctl: %v\n%s", err, out)
	}
	conf, err := json.Marshal(e.Config())
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"running.sh": []byte(runningScript), "passphrase": passphrase,
		"password": []byte(inUsePassword + "\n"), "etc-pbn/" + config.ConfigFile: conf,
		"etc-pbn/" + config.CAFile: e.DC.CA.PEM}
	copies := map[string]string{"initrd.img": legacy, "pbn.img": image, "cryptsetup.bin": "/usr/sbin/cryptsetup",
		"admin.json": filepath.Join(e.Lab.Dir, "pbnd", "admin.json")}
	libs, err := ldd.FList("/usr/sbin/cryptsetup")
	if err != nil {
		t.Fatalf("ldd cryptsetup: %v", err)
	}
	loader := ""
	for _, l := range libs {
		copies["lib/"+filepath.Base(l)] = l
		if strings.HasPrefix(filepath.Base(l), "ld-linux") {
			loader = filepath.Base(l)
		}
	}
	files["cryptsetup"] = fmt.Appendf(nil, cryptsetupWrapper, loader)
	for name, src := range copies {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "boot", "-d", dir, img, "128M"); err != nil {
		t.Fatal(err)
	}
}

// readExt4File reads the file name from the ext4 image img, with
// debugfs: no mount needed.
func readExt4File(t *testing.T, ctx context.Context, img, name string) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), path.Base(name))
	if err := run(ctx, "debugfs", "-R", fmt.Sprintf("dump %s %s", name, dst), img); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatalf("debugfs dump %s: %v", name, err)
	}
	return b
}

// TestInstallInUse sets up a laptop in use for PBN from its running OS:
// the laptop boots its distribution's initramfs, which opens the tiny OS's
// LUKS2 root with a passphrase, and the tiny OS runs pbnctl install with
// no person at the keyboard, on its own TPM and with the lab's DC and key
// server. Then the disk holds the user's key file and its tagged keyslot,
// the passphrase still opens the volume, the key server records the user
// as the device's owner, and the laptop boots through PBN with the image
// install put in place of the initramfs: the user signs in there, online,
// and the tiny OS boots. Afterwards the ESP holds her key file alone, sealed
// to the TPM (again, through the escrowed recovery key, when the TPM
// refused this boot's PCRs: the audit trail then says so), and the volume
// still has the passphrase's keyslot and hers, tagged.
//
// It does not prove that a firmware which measures the initramfs (PCR 9
// with an EFI stub, PCR 4 with a unified kernel image) makes the TPM
// refuse the first PBN boot: the lab's SeaBIOS direct boot may measure the
// two boots alike; pbn/signin's TestOwnerKnownInAdvance extends a PCR on
// the host to prove the reseal.
func TestInstallInUse(t *testing.T) {
	e, image := sharedEnterprise(t)
	k, _, _, uuid := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*bootTimeout)
	defer cancel()
	upn, err := e.AddUser(ctx, inUseUser, inUsePassword)
	if err != nil {
		t.Fatal(err)
	}

	// The laptop's disk: the shared one's tiny OS in LUKS2, its keyslot's
	// key the passphrase, and an empty ESP.
	dir := filepath.Join(e.Lab.Dir, "inuse1-disks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := pbnFixture.spec
	laptopDisk, boot := filepath.Join(dir, "disk.img"), filepath.Join(dir, "boot.ext4")
	if err := copyFile(laptopDisk, spec.Path); err != nil {
		t.Fatal(err)
	}
	esp := filepath.Join(dir, "esp.img")
	if err := makeESP(ctx, esp, spec.ESPMiB, map[string][]byte{"EFI/README": []byte("the OS's ESP\n")}); err != nil {
		t.Fatal(err)
	}
	if err := copyInto(laptopDisk, esp, espStart); err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(dir, "legacy.img")
	busybox, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := appendArchive(legacy, image, []cpio.Record{cpio.Directory("bin", 0o755),
		cpio.StaticFile("bin/busybox", string(busybox), 0o755),
		cpio.StaticFile("legacy", legacyInit, 0o755)}); err != nil {
		t.Fatal(err)
	}
	bootDisk(t, ctx, e, boot, legacy, image, spec.LUKSKey)
	tpmDir := filepath.Join(e.Lab.Dir, "inuse1-tpm")
	if err := os.MkdirAll(tpmDir, 0o700); err != nil {
		t.Fatal(err)
	}

	m, err := e.Lab.Laptop(ctx, "inuse1", LaptopOptions{Kernel: k.Image, Initrd: legacy,
		Disks: []string{laptopDisk, boot}, TPMState: tpmDir, Console: &testWriter{t: t, name: "inuse1"},
		Append: "quiet rdinit=/legacy"})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	got := expect(t, ctx, m, `legacy: root opened with the passphrase`, `running: tiny OS up, (\S+)`,
		`key file: /run/esp/(\S+) for `, `running: install exit (\d+)`)
	if got[3][1] != "0" {
		t.Fatalf("pbnctl install exited %s; last lines:\n%s", got[3][1], strings.Join(m.Console.Tail(20), "\n"))
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("the laptop did not power off: %v", err)
	}

	kf := checkInstalledDisk(t, ctx, laptopDisk, got[2][1], spec)
	if h := kf.Header(); h.Kind != keyfile.KindUser || h.UPN != upn {
		t.Errorf("key file header %+v, want %s's user key file", h, upn)
	}
	info, err := e.Admin.Device(ctx, kf.Header().DeviceID)
	if err != nil {
		t.Fatalf("Device(%s) = %v", kf.Header().DeviceID, err)
	}
	if info.Hostname != "inuse1" || len(info.Owners) != 1 || info.Owners[0].UPN != upn {
		t.Errorf("Device = %+v, want inuse1 owned by %s", info, upn)
	}
	installed := readExt4File(t, ctx, boot, "/initrd.img")
	kept := readExt4File(t, ctx, boot, "/initrd.img.pre-pbn")
	want, _ := os.ReadFile(image)
	old, _ := os.ReadFile(legacy)
	if !bytes.Equal(installed, want) || !bytes.Equal(kept, old) {
		t.Errorf("the boot disk's initramfs is the PBN image: %v, the old one kept: %v; want both",
			bytes.Equal(installed, want), bytes.Equal(kept, old))
	}

	// The reboot through PBN, with the image install put in place.
	pbnImage := filepath.Join(dir, "installed.img")
	if err := os.WriteFile(pbnImage, installed, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := e.Lab.Laptop(ctx, "inuse1-pbn", LaptopOptions{Kernel: k.Image, Initrd: pbnImage,
		Disks: []string{laptopDisk}, TPMState: tpmDir, Console: &testWriter{t: t, name: "inuse1 pbn"},
		Append: "quiet pbn.debug rd.luks.uuid=" + uuid})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	// The deployed stage lists carol; she signs in online, and her key
	// file, sealed at the boot that ran install, opens or is sealed again
	// to this boot.
	got = expect(t, ctx, p, `pbn: keyfiles: (\d+) on (\S+)`, usersRE, `  1\. `+regexp.QuoteMeta(upn)+`\n`,
		signInRE)
	if got[0][1] != "1" {
		t.Errorf("the agent found %s key files, want the user's", got[0][1])
	}
	p.Console.Type("1\n")
	expect(t, ctx, p, `Password for `+regexp.QuoteMeta(upn)+`: `)
	p.Console.Type(inUsePassword + "\n")
	expect(t, ctx, p, `pbn: signed in as `+regexp.QuoteMeta(upn)+` \(confirmed online\)`, tinyOSRE)
	if err := p.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	p.PowerCut() // the swtpm, which outlives QEMU
	checkFirstPBNBoot(t, ctx, e, laptopDisk, kf, spec)
}

// checkFirstPBNBoot checks the installed laptop's disk after its user's
// first sign-in through PBN: her key file is still the ESP's only one and
// the volume's tags unchanged (checkInstalledDisk); the key file has a TPM
// and password protector; and it is a later generation exactly when the
// key server handed its escrowed recovery key because the TPM refused.
func checkFirstPBNBoot(t *testing.T, ctx context.Context, e *Enterprise, img string, before *keyfile.KeyFile,
	spec DiskSpec) {
	t.Helper()
	h := before.Header()
	after := checkInstalledDisk(t, ctx, img, path.Join(disk.KeyDir, h.SID+keyfile.Ext), spec)
	if after.Header().ID != h.ID {
		t.Errorf("key file %s after the first PBN boot, want %s", after.Header().ID, h.ID)
	}
	if !slices.ContainsFunc(after.Protectors(), func(p keyfile.ProtectorInfo) bool {
		return slices.Contains(p.Factors, keyfile.FactorTPM) && slices.Contains(p.Factors, keyfile.FactorPassword)
	}) {
		t.Errorf("key file protectors %+v, want a TPM and password protector", after.Protectors())
	}
	resealed := false
	for _, ev := range events(t, ctx, e, &Device{ID: h.DeviceID}, "signin") {
		resealed = resealed || ev.Detail["reason"] == keyserver.ResealTPMRefused
	}
	if g, was := after.Header().Generation, h.Generation; (g > was) != resealed {
		t.Errorf("key file generation %d after the first PBN boot (%d before), sealed again for the TPM: %v; "+
			"want a later generation exactly when resealed", g, was, resealed)
	}
	t.Logf("first PBN boot: the TPM refused the key file's PCRs and it was sealed again: %v", resealed)
}

// checkInstalledDisk checks the laptop's disk after install: the key file
// at name on the ESP, the only one, has a keyslot tagged with its ID, and
// the passphrase still opens its own keyslot. It returns the key file.
func checkInstalledDisk(t *testing.T, ctx context.Context, img, name string, spec DiskSpec) *keyfile.KeyFile {
	t.Helper()
	if !strings.HasPrefix(name, disk.KeyDir+"/") {
		t.Fatalf("install stored the key file at %s, not under %s", name, disk.KeyDir)
	}
	b, err := readESPFile(ctx, img, name)
	if err != nil {
		t.Fatal(err)
	}
	kf, err := keyfile.Parse(b)
	if err != nil {
		t.Fatalf("the key file on the ESP: %v", err)
	}
	t.Cleanup(kf.Close)

	luks := filepath.Join(t.TempDir(), "luks.img")
	if err := copyOut(luks, img, int64(espStart+spec.ESPMiB*mib), int64(spec.LUKSMiB*mib)); err != nil {
		t.Fatal(err)
	}
	cryptsetup, err := lookSbin("cryptsetup")
	if err != nil {
		t.Fatal(err)
	}
	v := disk.Keyslots{Cryptsetup: cryptsetup, Dev: luks}
	tags, err := v.Tags(ctx)
	if err != nil {
		t.Fatalf("Tags = %v", err)
	}
	keep, err := v.Find(ctx, spec.LUKSKey)
	if err != nil {
		t.Errorf("the passphrase: Find = %v, want its keyslot", err)
	}
	if len(tags) != 1 {
		t.Fatalf("tags %v, want one keyslot tagged", tags)
	}
	for slot, id := range tags {
		if slot == keep || id != kf.Header().ID {
			t.Errorf("keyslot %d tagged %s; want a keyslot besides the passphrase's %d tagged %s",
				slot, id, keep, kf.Header().ID)
		}
	}
	return kf
}
