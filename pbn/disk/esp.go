package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
)

// KeyDir is where the key files live on the ESP.
const KeyDir = "EFI/PBN/keys"

// ErrNoKeyFiles says the ESP holds no key file that parses. [KeyFiles]
// returns it, joined with the reasons of the files that did not parse.
var ErrNoKeyFiles = errors.New("no usable key file on the EFI system partition")

// MountESP mounts the ESP read-only at dir, creating dir.
// TODO: the secure moment writes the owner's key file: it will mount the
// ESP read-write for that step only.
func MountESP(dev *Device, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mount esp: %w", err)
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(dev.Path, dir, TypeVFAT, flags, "fmask=0177,dmask=0077"); err != nil {
		return fmt.Errorf("mount esp %s on %s: %w", dev.Path, dir, err)
	}
	return nil
}

// KeyFiles loads the key files in KeyDir under the ESP mounted at esp.
// Files that do not parse are skipped; when none parses, it returns
// ErrNoKeyFiles joined with their errors (keyfile.ErrDamaged,
// keyfile.ErrFormat). damaged lists the files skipped.
func KeyFiles(esp string) (files []*keyfile.KeyFile, damaged []error, err error) {
	dir := filepath.Join(esp, KeyDir)
	paths, err := keyfile.List(keyfile.OSFS{}, dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("key files in %s: %w", dir, err)
	}
	for _, p := range paths {
		f, err := keyfile.Load(keyfile.OSFS{}, p)
		if err != nil {
			damaged = append(damaged, err)
			continue
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, damaged, errors.Join(append([]error{ErrNoKeyFiles}, damaged...)...)
	}
	return files, damaged, nil
}
