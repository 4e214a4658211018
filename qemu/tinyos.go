package qemu

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/u-root/mkuimage/cpio"
)

// The tiny OS is what the lab's laptops boot into after PBN: Debian's
// static busybox and an init that prints TinyOSBanner, shows the timing
// file the agent passed through switch_root between TimingBegin and
// TimingEnd (or NoTiming), the session file of the handover between
// SessionBegin and SessionEnd (or NoSession) and the kernel's keys that
// root can see (/proc/keys) between KeysBegin and KeysEnd, and powers off.
// Before the timing file it says the opened volumes: MapperLine and the
// names in /dev/mapper, on one line.
const (
	TinyOSBanner = "tinyos: up"
	TimingBegin  = "tinyos: timing file:"
	TimingEnd    = "tinyos: end of timing file"
	NoTiming     = "tinyos: no timing file"
	TimingFile   = "/run/pbn/timing"
	SessionBegin = "tinyos: session file:"
	SessionEnd   = "tinyos: end of session file"
	NoSession    = "tinyos: no session file"
	SessionFile  = "/run/pbn/session"
	KeysBegin    = "tinyos: keys:"
	KeysEnd      = "tinyos: end of keys"
	MapperLine   = "tinyos: mapper"
	tinyOSInit   = "sbin/init"
)

// DefaultBusybox is where Debian's busybox-static installs busybox.
const DefaultBusybox = "/bin/busybox"

// tinyInit is the tiny OS's init.
const tinyInit = `#!/bin/busybox sh
# The agent may have moved its /proc and /sys here already.
/bin/busybox mount -t proc proc /proc 2>/dev/null
/bin/busybox mount -t sysfs sysfs /sys 2>/dev/null
echo "` + TinyOSBanner + ` on $(/bin/busybox uname -r), root $(/bin/busybox awk '$2 == "/" {print $1}' /proc/mounts | /bin/busybox tail -n 1)"
echo "tinyos: tpm $(/bin/busybox ls /sys/class/tpm 2>/dev/null)"
echo "tinyos: clock $(/bin/busybox date -u +%Y-%m-%d)"
echo "` + MapperLine + `" $(/bin/busybox ls /dev/mapper 2>/dev/null)
if [ -r ` + TimingFile + ` ]; then
	echo "` + TimingBegin + `"
	/bin/busybox cat ` + TimingFile + `
	echo "` + TimingEnd + `"
else
	echo "` + NoTiming + `"
fi
if [ -r ` + SessionFile + ` ]; then
	echo "` + SessionBegin + `"
	/bin/busybox cat ` + SessionFile + `
	echo "` + SessionEnd + `"
else
	echo "` + NoSession + `"
fi
echo "` + KeysBegin + `"
/bin/busybox cat /proc/keys
echo "` + KeysEnd + `"
echo "tinyos: powering off"
/bin/busybox poweroff -f
`

// tinyDirs are the tiny OS's directories.
var tinyDirs = []string{"bin", "sbin", "dev", "proc", "sys", "run", "tmp", "mnt"}

// TinyOSRoot writes the tiny OS's root file system into dir.
func TinyOSRoot(dir string) error {
	busybox, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		return fmt.Errorf("tiny os: %w (install busybox-static)", err)
	}
	for _, d := range tinyDirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("tiny os: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), busybox, 0o755); err != nil {
		return fmt.Errorf("tiny os: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, tinyOSInit), []byte(tinyInit), 0o755); err != nil {
		return fmt.Errorf("tiny os: %w", err)
	}
	return nil
}

// TinyOSExt4 makes an ext4 file system image of sizeMiB at path holding the
// tiny OS, with mkfs.ext4 -d: no mount needed, no device-mapper. Its 4 KiB
// blocks fit a LUKS2 volume with 4 KiB sectors, which cryptsetup formats
// on image files.
func TinyOSExt4(ctx context.Context, path string, sizeMiB int) error {
	mkfs, err := lookSbin("mkfs.ext4")
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "pbn-tinyos-")
	if err != nil {
		return fmt.Errorf("tiny os: %w", err)
	}
	defer os.RemoveAll(root)
	if err := TinyOSRoot(root); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "tinyos", "-b", "4096", "-d", root,
		path, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tiny os: mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// TinyOSInitramfs writes the tiny OS as an uncompressed newc archive, for
// booting it directly: /init runs the same init.
func TinyOSInitramfs(w io.Writer) error {
	busybox, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		return fmt.Errorf("tiny os: %w (install busybox-static)", err)
	}
	var recs []cpio.Record
	for _, d := range tinyDirs {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	recs = append(recs,
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticFile("bin/busybox", string(busybox), 0o755),
		cpio.StaticFile(tinyOSInit, tinyInit, 0o755),
		cpio.Symlink("init", tinyOSInit))
	return writeArchive(w, recs)
}

// writeArchive writes recs as a newc archive with its trailer.
func writeArchive(w io.Writer, recs []cpio.Record) error {
	cw := cpio.Newc.Writer(w)
	for _, r := range recs {
		if err := cw.WriteRecord(cpio.MakeReproducible(r)); err != nil {
			return fmt.Errorf("writing an archive: %w", err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return fmt.Errorf("writing an archive: %w", err)
	}
	return nil
}
