package initramfs

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
		slices.SortFunc(versions, compareVersions)
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

// compareVersions orders kernel releases by their runs of digits as
// numbers and the rest as text, so that 6.1.0-57 comes after 6.1.0-9.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ra, rb := leadingRun(a), leadingRun(b)
		na, errA := strconv.Atoi(ra)
		nb, errB := strconv.Atoi(rb)
		c := strings.Compare(ra, rb)
		if errA == nil && errB == nil {
			c = cmp.Compare(na, nb)
		}
		if c != 0 {
			return c
		}
		a, b = a[len(ra):], b[len(rb):]
	}
	return cmp.Compare(len(a), len(b))
}

// leadingRun returns the run of digits, or of other bytes, that s starts
// with.
func leadingRun(s string) string {
	digit := func(c byte) bool { return '0' <= c && c <= '9' }
	i := 1
	for i < len(s) && digit(s[i]) == digit(s[0]) {
		i++
	}
	return s[:i]
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
