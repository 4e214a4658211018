package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/secret"
)

// cryptsetupPaths are where the image and Debian put cryptsetup.
var cryptsetupPaths = []string{"/usr/sbin/cryptsetup", "/sbin/cryptsetup", "/usr/bin/cryptsetup", "/bin/cryptsetup"}

// Cryptsetup returns the path of the cryptsetup program.
func Cryptsetup() (string, error) {
	if p, err := exec.LookPath("cryptsetup"); err == nil {
		return p, nil
	}
	for _, p := range cryptsetupPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("cryptsetup not found")
}

// ErrWrongKey says the LUKS2 volume has no keyslot for the key file's FDE
// secret. [OpenLUKS] returns it.
var ErrWrongKey = errors.New("no keyslot of the volume opens with this key")

// OpenLUKS opens the LUKS2 volume at dev as /dev/mapper/<name> with key,
// which cryptsetup reads from its standard input: the key is never on a
// command line or in a file. cryptsetup's exit code 2 (no key available
// with this passphrase) becomes ErrWrongKey.
func OpenLUKS(ctx context.Context, cryptsetup, dev, name string, key secret.Bytes) error {
	stdin, err := keyPipe(key)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer stdin.Close()
	cmd := exec.CommandContext(ctx, cryptsetup, "open", "--type", "luks2", "--key-file=-", dev, name)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return fmt.Errorf("open %s: %w", dev, ErrWrongKey)
	}
	if err != nil {
		return fmt.Errorf("open %s: cryptsetup: %w: %s", dev, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// maxKey bounds the key that keyPipe writes: a pipe holds 64 KiB
// (pipe(7)), so the write completes before anyone reads.
const maxKey = 64 << 10

// keyPipe returns the read end of a pipe that holds key and then ends. The
// key goes from its own slice into the kernel's pipe buffer: handing
// os/exec a reader instead would copy it through a buffer that nothing
// wipes.
func keyPipe(key secret.Bytes) (*os.File, error) {
	if len(key) == 0 || len(key) > maxKey {
		return nil, fmt.Errorf("key of %d bytes: want 1 to %d", len(key), maxKey)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = w.Write(key)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("key pipe: %w", err)
	}
	return r, nil
}

// mountFlags are the rootflags= words that are mount(2) flags; the rest go
// to the file system as its options.
var mountFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
	"noexec": unix.MS_NOEXEC, "sync": unix.MS_SYNCHRONOUS, "noatime": unix.MS_NOATIME,
	"nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME, "lazytime": unix.MS_LAZYTIME,
}

// MountOptions splits rootflags= into mount(2) flags and file system
// options, and adds MS_RDONLY unless rw.
func MountOptions(rootflags string, rw bool) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, w := range strings.Split(rootflags, ",") {
		switch f, ok := mountFlags[w]; {
		case w == "" || w == "rw":
		case ok:
			flags |= f
		default:
			data = append(data, w)
		}
	}
	if !rw {
		flags |= unix.MS_RDONLY
	}
	return flags, strings.Join(data, ",")
}

// MountRoot mounts the root file system at target, creating target. An
// empty fstype is taken from the device's superblock.
func MountRoot(dev *Device, target, fstype, rootflags string, rw bool) error {
	if fstype == "" {
		fstype = dev.Super.Type
	}
	if fstype == "" || fstype == TypeLUKS {
		return fmt.Errorf("mount root %s: unknown file system (give rootfstype=)", dev.Path)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount root: %w", err)
	}
	flags, data := MountOptions(rootflags, rw)
	if err := unix.Mount(dev.Path, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount root %s (%s) on %s: %w", dev.Path, fstype, target, err)
	}
	return nil
}

// Mapper returns the device-mapper node of an opened volume.
func Mapper(name string) string { return filepath.Join("/dev/mapper", name) }
