package qemu

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/u-root/mkuimage/cpio"

	"github.com/pbn-project/pbn/pbn/secret"
)

// A laptop disk's layout: a GPT with an EFI system partition and a LUKS2
// partition, aligned to 1 MiB. The ESP is FAT, made with mkfs.vfat and
// filled with mtools, so neither needs a mount.
const (
	mib         = 1 << 20
	espStart    = 1 * mib
	gptReserve  = 1 * mib // the backup GPT at the end
	luksOffset  = 2 * mib // LUKS2 header and keyslots before the data
	espTypeGUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	// luksTypeGUID is the Discoverable Partitions Specification's type
	// for LUKS.
	luksTypeGUID = "CA7D7CCB-63ED-4C53-861C-1742536059CC"
)

// DiskSpec describes a laptop disk for MakeDisk.
type DiskSpec struct {
	Path     string
	ESPMiB   int               // the ESP's size; at least 2
	ESPFiles map[string][]byte // path in the ESP ("EFI/PBN/keys/a.pbk") -> content
	LUKSMiB  int               // the LUKS2 partition's size, header included; at least 4
	LUKSUUID string            // the volume's UUID, for rd.luks.uuid=
	// LUKSKey is the keyslot's passphrase: the FDE secret of a key file.
	LUKSKey secret.Bytes
}

// MakeDisk makes the disk spec describes on the host: the partition table,
// the ESP with its files and the LUKS2 header (formatting a file needs no
// device-mapper). The LUKS volume's contents are random until a guest
// writes them (Lab.FillLUKS): the host cannot open it.
//
// The keyslot uses PBKDF2 with few iterations: its passphrase is a random
// FDE secret, not a password, and a guest under TCG opens it in well under
// a second; Argon2id at cryptsetup's defaults takes many seconds there.
func MakeDisk(ctx context.Context, spec DiskSpec) error {
	if spec.ESPMiB < 2 || spec.LUKSMiB < 4 {
		return fmt.Errorf("disk %s: ESP of %d MiB and LUKS of %d MiB too small", spec.Path, spec.ESPMiB, spec.LUKSMiB)
	}
	dir, err := os.MkdirTemp("", "pbn-disk-")
	if err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	defer os.RemoveAll(dir)
	esp, luks := filepath.Join(dir, "esp.img"), filepath.Join(dir, "luks.img")
	if err := makeESP(ctx, esp, spec.ESPMiB, spec.ESPFiles); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	if err := makeLUKS(ctx, luks, spec.LUKSMiB, spec.LUKSUUID, spec.LUKSKey); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}

	size := int64(espStart + spec.ESPMiB*mib + spec.LUKSMiB*mib + gptReserve)
	if err := truncate(spec.Path, size); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	espEnd := espStart/512 + spec.ESPMiB*mib/512 - 1
	if err := run(ctx, "sgdisk", "--clear",
		fmt.Sprintf("--new=1:%d:%d", espStart/512, espEnd), "--typecode=1:"+espTypeGUID, "--change-name=1:ESP",
		fmt.Sprintf("--new=2:%d:%d", espEnd+1, espEnd+spec.LUKSMiB*mib/512), "--typecode=2:"+luksTypeGUID,
		"--change-name=2:root", spec.Path); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	if err := copyInto(spec.Path, esp, espStart); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	if err := copyInto(spec.Path, luks, int64(espStart+spec.ESPMiB*mib)); err != nil {
		return fmt.Errorf("disk %s: %w", spec.Path, err)
	}
	return nil
}

// makeESP makes a FAT file system image labelled ESP holding files.
func makeESP(ctx context.Context, img string, sizeMiB int, files map[string][]byte) error {
	if err := run(ctx, "mkfs.vfat", "-C", "-n", "ESP", img, fmt.Sprint(sizeMiB*1024)); err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(files))
	made := map[string]bool{}
	for _, name := range names {
		for d := path.Dir(name); d != "." && !made[d]; d = path.Dir(d) {
			made[d] = true
		}
	}
	dirs := slices.Sorted(maps.Keys(made))
	for _, d := range dirs { // sorted: parents before children
		if err := run(ctx, "mmd", "-i", img, "::"+d); err != nil {
			return err
		}
	}
	for _, name := range names {
		src := filepath.Join(filepath.Dir(img), "esp-file")
		if err := os.WriteFile(src, files[name], 0o600); err != nil {
			return err
		}
		if err := run(ctx, "mcopy", "-o", "-i", img, src, "::"+name); err != nil {
			return err
		}
	}
	return nil
}

// makeLUKS formats a LUKS2 volume of sizeMiB with the UUID uuid and one
// keyslot for key on the image file img.
func makeLUKS(ctx context.Context, img string, sizeMiB int, uuid string, key secret.Bytes) error {
	if err := truncate(img, int64(sizeMiB*mib)); err != nil {
		return err
	}
	cryptsetup, err := lookSbin("cryptsetup")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, cryptsetup, "luksFormat", "--batch-mode", "--type", "luks2",
		"--uuid", uuid, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1m",
		"--offset", fmt.Sprint(luksOffset/512), "--key-file", "-", img)
	cmd.Stdin = bytes.NewReader(key)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cryptsetup luksFormat: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// DataVolume is a LUKS2 partition of a disk that MakeDataDisk makes.
type DataVolume struct {
	MiB  int          // the partition's size, header included; at least 4
	UUID string       // the volume's UUID, for rd.luks.uuid=
	Key  secret.Bytes // its keyslot's passphrase
}

// MakeDataDisk makes a laptop's second disk on the host: a GPT with one
// LUKS2 partition for each of vols, in order, aligned to 1 MiB, their
// headers made as MakeDisk makes its volume's (the same cheap PBKDF2).
// The volumes' contents are random: only a guest could write them.
func MakeDataDisk(ctx context.Context, path string, vols []DataVolume) error {
	dir, err := os.MkdirTemp("", "pbn-disk-")
	if err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	size := int64(espStart + gptReserve)
	for _, v := range vols {
		if v.MiB < 4 {
			return fmt.Errorf("disk %s: LUKS of %d MiB too small", path, v.MiB)
		}
		size += int64(v.MiB * mib)
	}
	if err := truncate(path, size); err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}

	args := []string{"--clear"}
	start := espStart / 512
	for i, v := range vols {
		n, end := i+1, start+v.MiB*mib/512-1
		args = append(args, fmt.Sprintf("--new=%d:%d:%d", n, start, end),
			fmt.Sprintf("--typecode=%d:%s", n, luksTypeGUID), fmt.Sprintf("--change-name=%d:data%d", n, n))
		luks := filepath.Join(dir, "luks.img")
		if err := makeLUKS(ctx, luks, v.MiB, v.UUID, v.Key); err != nil {
			return fmt.Errorf("disk %s: %w", path, err)
		}
		if err := copyInto(path, luks, int64(start)*512); err != nil {
			return fmt.Errorf("disk %s: %w", path, err)
		}
		start = end + 1
	}
	if err := run(ctx, "sgdisk", append(args, path)...); err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}
	return nil
}

// LUKSDataMiB is how much of a LUKS partition of sizeMiB holds data.
func LUKSDataMiB(sizeMiB int) int { return sizeMiB - luksOffset/mib }

// ESPOffset is where the ESP starts on a disk MakeDisk made, for mtools'
// image@@offset.
const ESPOffset = espStart

// writerInit is the init of the guest that copies a root file system into
// a LUKS2 volume: it boots the PBN image, whose modules and cryptsetup it
// uses through busybox.
const writerInit = `#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /run/cryptsetup
for m in virtio_pci virtio_blk dm_mod dm_crypt aesni_intel xts sha256_generic; do $bb modprobe $m; done
n=0
while [ ! -b /dev/vda2 ] || [ ! -b /dev/vdb ]; do
	n=$((n+1)); [ $n -gt 100 ] && break; $bb sleep 0.1
done
if /sbin/cryptsetup open --type luks2 --key-file /luks.key /dev/vda2 fill &&
	$bb dd if=/dev/vdb of=/dev/mapper/fill bs=1M 2>/dev/null && $bb sync &&
	/sbin/cryptsetup close fill; then
	echo "writer: done"
else
	echo "writer: failed"
fi
$bb poweroff -f
`

// FillLUKS writes the file system image root into the LUKS2 volume on the
// disk MakeDisk made, from inside a guest: the host has no device-mapper.
// The guest boots kernel with the PBN image initrd (it carries cryptsetup
// and the dm-crypt modules) and busybox on top. key opens the volume; it
// lives in the guest's initramfs, a file in the lab's directory, until the
// lab closes.
func (l *Lab) FillLUKS(ctx context.Context, kernel, initrd, disk, root string, key secret.Bytes) error {
	busybox, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		return fmt.Errorf("fill luks: %w (install busybox-static)", err)
	}
	both := filepath.Join(l.Dir, "writer.initrd")
	if err := appendArchive(both, initrd, []cpio.Record{
		cpio.Directory("bin", 0o755),
		cpio.StaticFile("bin/busybox", string(busybox), 0o755),
		cpio.StaticFile("writer", writerInit, 0o755),
		cpio.StaticFile("luks.key", string(key), 0o400),
	}); err != nil {
		return fmt.Errorf("fill luks: %w", err)
	}
	defer os.Remove(both)

	m, err := l.Laptop(ctx, "writer", LaptopOptions{Kernel: kernel, Initrd: both, NoTPM: true, NIC: "none",
		Append: "quiet rdinit=/writer", Disks: []string{disk, root}})
	if err != nil {
		return fmt.Errorf("fill luks: %w", err)
	}
	got, err := m.Console.Expect(ctx, regexp.MustCompile(`writer: (done|failed)`))
	if err != nil {
		return fmt.Errorf("fill luks: %w", err)
	}
	if got[1] != "done" {
		return fmt.Errorf("fill luks: the guest could not write the volume; last lines:\n\t%s",
			strings.Join(m.Console.Tail(DefaultTailLines), "\n\t"))
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return m.Wait(wctx)
}

// appendArchive writes to dst the initramfs initrd with a newc archive of
// recs after it. The kernel unpacks concatenated archives in turn, each
// starting at a multiple of 4 bytes, compressed or not, so recs add to the
// image and replace its files of the same names.
func appendArchive(dst, initrd string, recs []cpio.Record) error {
	var overlay bytes.Buffer
	if err := writeArchive(&overlay, recs); err != nil {
		return err
	}
	img, err := os.ReadFile(initrd)
	if err != nil {
		return err
	}
	img = append(img, make([]byte, (4-len(img)%4)%4)...)
	return os.WriteFile(dst, append(img, overlay.Bytes()...), 0o600)
}

// run runs a program found by lookSbin and reports its output on failure.
func run(ctx context.Context, name string, args ...string) error {
	p, err := lookSbin(name)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, p, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// truncate makes a sparse file of size bytes at p.
func truncate(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// copyInto writes the file src into the file dst at offset off.
func copyInto(dst, src string, off int64) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
