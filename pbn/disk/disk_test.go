package disk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/secret"
)

const (
	luksUUID = "2d1f8b4e-5c6a-4f3e-9b7d-1a2b3c4d5e6f"
	extUUID  = "8a9b0c1d-2e3f-4a5b-8c7d-9e0f1a2b3c4d"
	partUUID = "5f4e3d2c-1b0a-4987-8654-3210fedcba98"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(testenv.Command(t, name), args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func image(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func open(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestProbe probes volumes made by the real tools: mkfs.ext4, mkfs.vfat
// and cryptsetup (which writes a LUKS2 header into a file without
// device-mapper).
func TestProbe(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, p string)
		want Superblock
	}{
		{"ext4", func(t *testing.T, p string) {
			run(t, "mkfs.ext4", "-q", "-F", "-U", extUUID, "-L", "root", p)
		}, Superblock{TypeExt4, extUUID, "root"}},
		{"vfat", func(t *testing.T, p string) {
			run(t, "mkfs.vfat", "-i", "DEADBEEF", "-n", "ESP", p)
		}, Superblock{TypeVFAT, "dead-beef", "ESP"}},
		{"fat32 without label", func(t *testing.T, p string) {
			run(t, "mkfs.vfat", "-F", "32", "-i", "0123ABCD", p)
		}, Superblock{TypeVFAT, "0123-abcd", ""}},
		{"luks2", func(t *testing.T, p string) {
			key := filepath.Join(t.TempDir(), "key")
			os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600)
			run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--uuid", luksUUID, "--label", "pbn",
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, p)
		}, Superblock{TypeLUKS, luksUUID, "pbn"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := image(t, 40<<20)
			tt.make(t, p)
			got, err := Probe(open(t, p))
			if err != nil || got != tt.want {
				t.Errorf("Probe() = %+v, %v, want %+v", got, err, tt.want)
			}
		})
	}
	if _, err := Probe(open(t, image(t, 1<<20))); !errors.Is(err, ErrUnknownFS) {
		t.Errorf("Probe(zeros) = %v, want ErrUnknownFS", err)
	}
}

// gptImage makes a disk image with an ESP and a LUKS partition, as sgdisk
// lays them out.
func gptImage(t *testing.T) string {
	p := image(t, 32<<20)
	run(t, "sgdisk", "-n", "1:2048:+8M", "-t", "1:ef00", "-c", "1:EFI system",
		"-n", "2:0:0", "-t", "2:8309", "-u", "2:"+partUUID, "-c", "2:root", p)
	return p
}

func TestReadGPT(t *testing.T) {
	p := gptImage(t)
	parts, err := ReadGPT(open(t, p))
	if err != nil {
		t.Fatalf("ReadGPT() = %v", err)
	}
	if len(parts) != 2 {
		t.Fatalf("ReadGPT() = %+v, want 2 partitions", parts)
	}
	if got := parts[0]; got.Number != 1 || got.Type != ESPType || got.Name != "EFI system" || got.FirstLBA != 2048 {
		t.Errorf("partition 1 = %+v, want the ESP from LBA 2048", got)
	}
	if got := parts[1]; got.Number != 2 || got.GUID != partUUID || got.Type != "ca7d7ccb-63ed-4c53-861c-1742536059cc" {
		t.Errorf("partition 2 = %+v, want PARTUUID %s of type Linux LUKS", got, partUUID)
	}

	// A flipped bit in the entries fails their checksum.
	b, _ := os.ReadFile(p)
	b[2*512+100] ^= 1
	if _, err := ReadGPT(bytes.NewReader(b)); !errors.Is(err, ErrNoGPT) {
		t.Errorf("ReadGPT(corrupt entries) = %v, want ErrNoGPT", err)
	}
}

func FuzzReadGPT(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "disk.img")
	if fh, err := os.Create(p); err == nil {
		fh.Truncate(4 << 20)
		fh.Close()
	}
	if sg, err := exec.LookPath("sgdisk"); err == nil {
		exec.Command(sg, "-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:0", p).Run()
	} else if sg, err := exec.LookPath("/usr/sbin/sgdisk"); err == nil {
		exec.Command(sg, "-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:0", p).Run()
	}
	b, _ := os.ReadFile(p)
	f.Add(b[:34*512])
	f.Fuzz(func(t *testing.T, b []byte) {
		parts, err := ReadGPT(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, p := range parts {
			if p.Number < 1 || p.Number > gptMaxEntries || len(p.Type) != 36 {
				t.Errorf("ReadGPT() gave %+v", p)
			}
		}
	})
}

func FuzzProbe(f *testing.F) {
	fat := make([]byte, 512)
	copy(fat[0x52:], "FAT32")
	fat[0x42], fat[510], fat[511] = 0x29, 0x55, 0xaa
	f.Add(fat)
	f.Add(append([]byte("LUKS\xba\xbe\x00\x02"), make([]byte, 600)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := Probe(bytes.NewReader(b))
		if err == nil && sb.Type == "" {
			t.Errorf("Probe() = %+v with no type", sb)
		}
	})
}

func TestMountOptions(t *testing.T) {
	tests := []struct {
		flags    string
		rw       bool
		wantRO   bool
		wantData string
	}{
		{"", false, true, ""},
		{"", true, false, ""},
		{"noatime,discard,errors=remount-ro", true, false, "discard,errors=remount-ro"},
		{"ro", true, true, ""},
	}
	for _, tt := range tests {
		flags, data := MountOptions(tt.flags, tt.rw)
		if ro := flags&1 != 0; ro != tt.wantRO || data != tt.wantData {
			t.Errorf("MountOptions(%q, %v) = %#x, %q; want ro %v, %q", tt.flags, tt.rw, flags, data, tt.wantRO, tt.wantData)
		}
	}
}

// fastArgon2 keeps the tests quick; the floor is what a real file uses at
// least, and still takes tens of milliseconds.
var fastArgon2 = keyfile.FloorArgon2

func newKeyFile(t *testing.T, upn string, pw string) []byte {
	t.Helper()
	h := keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindUser, DeviceID: keyfile.NewID(), UPN: upn}
	f, err := keyfile.New(h, &keyfile.Keyring{FDE: secret.Random(64)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if pw != "" {
		if _, err := f.AddProtector(context.Background(), "password", keyfile.PasswordWith(secret.Bytes(pw), fastArgon2)); err != nil {
			t.Fatal(err)
		}
	} else if _, err := f.AddProtector(context.Background(), "recovery", keyfile.Recovery(keyfile.NewRecoveryKey())); err != nil {
		t.Fatal(err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parse(t *testing.T, b []byte) *keyfile.KeyFile {
	t.Helper()
	f, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPasswordUnlock(t *testing.T) {
	alice := newKeyFile(t, "alice@example.test", "alice's password")
	bob := newKeyFile(t, "bob@example.test", "bob's password")
	recoveryOnly := newKeyFile(t, "carol@example.test", "")
	tests := []struct {
		name       string
		files      [][]byte
		typed      string
		wantUPN    string
		wantErr    error
		wantPrompt string
	}{
		{"right password", [][]byte{alice}, "alice's password\r", "alice@example.test", nil,
			"Enter password for alice@example.test: "},
		{"second file, second try", [][]byte{alice, bob}, "nope\rbob's password\r", "bob@example.test", nil,
			"Enter password: "},
		{"limit of tries", [][]byte{alice}, "a\rb\rc\ralice's password\r", "", console.ErrTooManyTries, ""},
		{"no password protector", [][]byte{recoveryOnly}, "x\r", "", ErrNoUnlocker, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []*keyfile.KeyFile
			for _, b := range tt.files {
				files = append(files, parse(t, b))
			}
			var out bytes.Buffer
			var typed time.Duration
			u := &PasswordUnlocker{Console: console.New(strings.NewReader(tt.typed), &out), Tries: 3,
				Typed: func(d time.Duration) { typed += d }}
			f, err := Unlock(context.Background(), []Unlocker{u}, files)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Unlock() = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				return
			}
			if got := f.Header().UPN; got != tt.wantUPN || f.Keyring() == nil || len(f.Keyring().FDE) != 64 {
				t.Errorf("Unlock() opened %q (keyring %v), want %q open", got, f.Keyring() != nil, tt.wantUPN)
			}
			if !strings.HasPrefix(out.String(), tt.wantPrompt) {
				t.Errorf("console shows %q, want the prompt %q", out.String(), tt.wantPrompt)
			}
		})
	}
}

// TestKeyFilesCorrupt checks that a damaged key file is reported, not
// opened, and that a good one beside it still loads.
func TestKeyFilesCorrupt(t *testing.T) {
	esp := t.TempDir()
	dir := filepath.Join(esp, KeyDir)
	os.MkdirAll(dir, 0o755)
	good := newKeyFile(t, "alice@example.test", "pw")
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0x40
	os.WriteFile(filepath.Join(dir, "bad"+keyfile.Ext), bad, 0o600)

	if _, damaged, err := KeyFiles(esp); !errors.Is(err, ErrNoKeyFiles) || len(damaged) != 1 {
		t.Errorf("KeyFiles(only a damaged one) = %v, %d damaged; want ErrNoKeyFiles, 1", err, len(damaged))
	}
	os.WriteFile(filepath.Join(dir, "good"+keyfile.Ext), good, 0o600)
	files, damaged, err := KeyFiles(esp)
	if err != nil || len(files) != 1 || len(damaged) != 1 {
		t.Errorf("KeyFiles() = %d files, %d damaged, %v; want 1, 1, nil", len(files), len(damaged), err)
	}
	if _, _, err := KeyFiles(t.TempDir()); !errors.Is(err, ErrNoKeyFiles) {
		t.Errorf("KeyFiles(empty ESP) = %v, want ErrNoKeyFiles", err)
	}
}

// TestScanLoop attaches volumes to loop devices, as real disks, and checks
// that Scan finds the ESP by its label and the LUKS volume by its UUID,
// and that the ESP mounts read-only and its key file loads. What this does
// not prove: finding partitions by GPT type and PARTUUID through sysfs
// (loop devices here do not scan partitions; ReadGPT is tested on an
// image, the rest in the QEMU boot tests).
func TestScanLoop(t *testing.T) {
	testenv.Root(t)
	espImg, luksImg := image(t, 40<<20), image(t, 32<<20)
	run(t, "mkfs.vfat", "-i", "CAFEF00D", "-n", "ESP", espImg)
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--uuid", luksUUID, "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", key, luksImg)
	kf := filepath.Join(t.TempDir(), "alice"+keyfile.Ext)
	os.WriteFile(kf, newKeyFile(t, "alice@example.test", "pw"), 0o600)
	run(t, "mmd", "-i", espImg, "::EFI", "::EFI/PBN", "::"+KeyDir)
	run(t, "mcopy", "-i", espImg, kf, "::"+KeyDir+"/")
	esp, luks := attach(t, espImg), attach(t, luksImg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, err := Wait(ctx, Sysfs{}, "the ESP", func(d *Device) bool { return d.Path == esp && d.IsESP() })
	if err != nil {
		t.Fatalf("Wait(ESP) = %v", err)
	}
	if dev.Super.UUID != "cafe-f00d" {
		t.Errorf("ESP = %+v, want serial cafe-f00d", dev)
	}
	want := cmdline.Device{Kind: cmdline.DeviceUUID, Value: luksUUID}
	d, err := Wait(ctx, Sysfs{}, want.String(), func(d *Device) bool { return d.Matches(want) })
	if err != nil || d.Path != luks || d.Super.Type != TypeLUKS {
		t.Errorf("Wait(%v) = %+v, %v; want LUKS on %s", want, d, err, luks)
	}

	if fs, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fs), "\tvfat\n") {
		// The host's kernel may lack vfat, and the tests load no modules
		// into it; the QEMU boot tests mount the ESP in the guest.
		t.Log("the kernel has no vfat: MountESP not tried")
		return
	}
	mnt := t.TempDir()
	if err := MountESP(dev, mnt); err != nil {
		t.Fatalf("MountESP() = %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	files, _, err := KeyFiles(mnt)
	if err != nil || len(files) != 1 || files[0].Header().UPN != "alice@example.test" {
		t.Errorf("KeyFiles() = %d files, %v; want alice's", len(files), err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o600); err == nil {
		t.Errorf("the ESP is mounted writable, want read-only")
	}
}

// attach puts an image on a free loop device until the test ends.
func attach(t *testing.T, img string) string {
	t.Helper()
	losetup := testenv.Command(t, "losetup")
	out, err := exec.Command(losetup, "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", dev).Run() })
	return dev
}

func TestNotFoundSentence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Wait(ctx, Sysfs{Block: t.TempDir()}, "UUID="+extUUID, func(*Device) bool { return true })
	var nf *NotFoundError
	if !errors.As(err, &nf) || !strings.Contains(nf.Sentence(), "UUID="+extUUID) {
		t.Errorf("Wait() = %v, want a NotFoundError naming the device", err)
	}
}

// TestOpenLUKSKeyOnStdin runs OpenLUKS with a stand-in for cryptsetup, a
// shell script that records its arguments and standard input: the host has
// no device-mapper to open a volume with. It checks that the key arrives on
// standard input whole and never on the command line, and that exit code 2
// (no keyslot for the key) becomes ErrWrongKey.
func TestOpenLUKSKeyOnStdin(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "cryptsetup")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$@\" > \""+dir+"/args\"\ncat > \""+dir+"/stdin\"\nexit $CODE\n"), 0o755)
	key := secret.Bytes("\x00binary\nkey\xff with every byte")

	t.Setenv("CODE", "0")
	if err := OpenLUKS(context.Background(), script, "/dev/vda2", "root", key); err != nil {
		t.Fatalf("OpenLUKS() = %v", err)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	stdin, _ := os.ReadFile(filepath.Join(dir, "stdin"))
	if got, want := string(args), "open --type luks2 --key-file=- /dev/vda2 root\n"; got != want {
		t.Errorf("cryptsetup arguments = %q, want %q", got, want)
	}
	if !bytes.Equal(stdin, key) {
		t.Errorf("cryptsetup read %q on stdin, want the key", stdin)
	}

	t.Setenv("CODE", "2")
	if err := OpenLUKS(context.Background(), script, "/dev/vda2", "root", key); !errors.Is(err, ErrWrongKey) {
		t.Errorf("OpenLUKS() with exit code 2 = %v, want ErrWrongKey", err)
	}
}
