// Package handoff does what an init does around the agent's work: the
// early mounts of /proc, /sys, /dev and /run, and the switch to the real
// root (switch_root), which moves those mounts into it, empties the
// initramfs and executes the real init. It also hands the OS what the
// agent leaves it: who signed in (WriteSession, in a file under /run) and
// the user's group keys and enterprise key (PutKeys, in the kernel
// keyring, never on a disk), so that the user signs in once.
package handoff

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// mount is one early mount.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// early are the file systems the agent needs before anything else.
var early = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// moved are the mounts that SwitchRoot carries into the new root, as
// systemd and dracut expect: /run keeps what the agent leaves for the OS
// (its timing file).
var moved = []string{"/dev", "/proc", "/sys", "/run"}

// devLinks are the links that udev makes in /dev and devtmpfs does not:
// programs the agent runs pass secrets to cryptsetup as /dev/fd/N.
var devLinks = map[string]string{"/dev/fd": "/proc/self/fd"}

// MountEarly mounts /proc, /sys, /dev (devtmpfs) and /run (tmpfs), and
// makes /dev/fd. One already mounted (by the kernel, for devtmpfs) is left
// as it is.
func MountEarly() error {
	for _, m := range early {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", m.target, err)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	for link, target := range devLinks {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("link %s: %w", link, err)
		}
	}
	return nil
}

// Inits are the places the real init is looked for when init= names none.
var Inits = []string{"/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd", "/etc/init", "/bin/init"}

// FindInit returns the real init under newRoot: given (init=) if set, or
// the first of Inits that is an executable file there. Symbolic links are
// resolved inside newRoot.
func FindInit(newRoot, given string) (string, error) {
	candidates := Inits
	if given != "" {
		candidates = []string{given}
	}
	for _, c := range candidates {
		if isExecutable(newRoot, c) {
			return c, nil
		}
	}
	return "", fmt.Errorf("no init found in the new root (tried %v)", candidates)
}

// isExecutable follows symbolic links within root, at most 16 of them.
func isExecutable(root, path string) bool {
	for range 16 {
		full := filepath.Join(root, path)
		fi, err := os.Lstat(full)
		if err != nil {
			return false
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
		}
		target, err := os.Readlink(full)
		if err != nil {
			return false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = target
	}
	return false
}

// ErrNotInitramfs says the running root is not an initramfs (ramfs or
// tmpfs), so SwitchRoot refuses to empty it.
var ErrNotInitramfs = errors.New("the root is not an initramfs")

// SwitchRoot moves /dev, /proc, /sys and /run into newRoot, deletes the
// initramfs's files, makes newRoot the root and executes init there with
// args (args[0] is the program's name). It returns only on failure;
// before it empties the initramfs it checks that / is a ramfs or tmpfs and
// that newRoot is a mount of its own.
func SwitchRoot(newRoot, init string, args []string) error {
	if err := checkRoots(newRoot); err != nil {
		return err
	}
	for _, m := range moved {
		if err := moveMount(m, filepath.Join(newRoot, m)); err != nil {
			return err
		}
	}
	newDev, err := device(newRoot)
	if err != nil {
		return err
	}
	rootDev, err := device("/")
	if err != nil {
		return err
	}
	Empty("/", rootDev, newDev)

	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch_root: move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch_root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	stdio()
	if err := unix.Exec(init, args, os.Environ()); err != nil {
		return fmt.Errorf("switch_root: exec %s: %w", init, err)
	}
	return nil
}

// stdio gives the real init a standard input, output and error on
// /dev/console where it has none: the kernel opens them only when the
// initramfs has a /dev/console node of its own.
func stdio() {
	var st unix.Stat_t
	console := -1
	for fd := 0; fd <= 2; fd++ {
		if unix.Fstat(fd, &st) == nil {
			continue
		}
		if console < 0 {
			c, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				return
			}
			console = c
		}
		unix.Dup3(console, fd, 0)
	}
	if console > 2 {
		unix.Close(console)
	}
}

func checkRoots(newRoot string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return ErrNotInitramfs
	}
	a, err := device("/")
	if err != nil {
		return err
	}
	b, err := device(newRoot)
	if err != nil {
		return err
	}
	if a == b {
		return fmt.Errorf("switch_root: %s is not a mount point", newRoot)
	}
	return nil
}

func moveMount(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	if err := unix.Mount(from, to, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch_root: move %s to %s: %w", from, to, err)
	}
	return nil
}

func device(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return 0, fmt.Errorf("switch_root: %w", err)
	}
	return st.Dev, nil
}

// Empty deletes what is under dir on the file system dev, without
// crossing into other mounts, and never into the file system skip (the new
// root). It is best effort: what cannot be deleted stays, and the memory
// it holds with it.
func Empty(dir string, dev, skip uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev || st.Dev == skip {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			Empty(p, dev, skip)
			unix.Rmdir(p)
			continue
		}
		unix.Unlink(p)
	}
}
