package initramfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Kernel is an installed kernel: its image and its modules.
type Kernel struct {
	Version string // the release, as uname -r prints it: 6.1.0-57-amd64
	Image   string // the bootable image, /boot/vmlinuz-VERSION
	Modules string // the modules directory, /lib/modules/VERSION
	Initrd  string // the distribution's own initramfs, if there is one
}

// ErrNoKernel is returned by FindKernel when no kernel is installed, or not
// the one asked for.
var ErrNoKernel = errors.New("no installed kernel")

// FindKernel returns the installed kernel of the given version, or, when
// version is empty, the newest one that has both an image in /boot and a
// modules directory (Debian's linux-image-amd64 installs both).
func FindKernel(version string) (Kernel, error) {
	if version == "" {
		images, _ := filepath.Glob("/boot/vmlinuz-*")
		var versions []string
		for _, img := range images {
			v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
			if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
				versions = append(versions, v)
			}
		}
		if len(versions) == 0 {
			return Kernel{}, fmt.Errorf("finding the kernel: %w (install linux-image-amd64)", ErrNoKernel)
		}
		// TODO: compare versions numerically, as dpkg does: with two
		// kernels installed, 6.1.0-9 would win over 6.1.0-57 here.
		slices.Sort(versions)
		version = versions[len(versions)-1]
	}

	k := Kernel{
		Version: version,
		Image:   filepath.Join("/boot", "vmlinuz-"+version),
		Modules: filepath.Join("/lib/modules", version),
	}
	for _, p := range []string{k.Image, filepath.Join(k.Modules, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, fmt.Errorf("finding kernel %s: %w: %w", version, ErrNoKernel, err)
		}
	}
	if initrd := filepath.Join("/boot", "initrd.img-"+version); fileExists(initrd) {
		k.Initrd = initrd
	}
	return k, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
