package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultModules are the kernel modules an image carries unless Config
// names others: what a laptop or a QEMU guest needs to reach its network and
// its disk, open a LUKS2 volume and read the ESP. Their dependencies come
// from modules.dep and modules.softdep. A name the kernel has built in is
// accepted and adds nothing.
var DefaultModules = []string{
	// Wired network: QEMU, Intel, Realtek, Broadcom, Atheros, Aquantia, and
	// the USB adapters laptops without a port use.
	"virtio_net", "e1000", "e1000e", "igb", "igc", "r8169", "tg3", "alx",
	"atlantic", "r8152", "cdc_ether", "ax88179_178a",
	// Storage: virtio, NVMe (behind Intel VMD too), SATA, USB, eMMC.
	"virtio_pci", "virtio_blk", "virtio_scsi", "nvme", "vmd", "ahci", "sd_mod",
	"usb_storage", "uas", "xhci_pci", "xhci_hcd", "ehci_pci", "sdhci_pci",
	"mmc_block",
	// Keyboards on USB and I2C.
	"usbhid", "hid_generic", "i2c_hid_acpi",
	// LUKS2: device-mapper, dm-crypt and the ciphers of aes-xts-plain64 and
	// its key derivation; cryptsetup reaches them through AF_ALG too.
	"dm_mod", "dm_crypt", "aesni_intel", "aes_generic", "xts", "sha256_ssse3",
	"sha256_generic", "sha512_generic", "essiv", "af_alg", "algif_skcipher",
	"algif_hash",
	// File systems: the root (ext4), the ESP (vfat and its code pages) and
	// EFI variables.
	"ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_iso8859_1",
	"nls_ascii", "efivarfs",
	// TPM 2.0 over TIS and CRB.
	"tpm_tis", "tpm_crb",
}

// moduleIndex is what a kernel's /lib/modules/KVER says about its modules,
// read from the files depmod(8) writes.
type moduleIndex struct {
	dep     map[string][]string // path of a module -> paths of its dependencies
	byName  map[string]string   // module name -> path
	softdep map[string][]string // module name -> names loaded before or after it
	builtin map[string]bool     // names built into the kernel
	alias   map[string][]string // plain alias (no pattern) -> module names
}

// moduleName returns the name of the module at path p: its base name without
// the .ko suffix (and any compression suffix), with dashes as underscores, as
// the kernel names modules.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// parseModulesDep parses modules.dep: one line a module, "path: dep dep...",
// paths relative to /lib/modules/KVER.
func parseModulesDep(r io.Reader) (map[string][]string, error) {
	dep := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok || mod == "" || !validModulePath(mod) {
			return nil, fmt.Errorf("modules.dep line %d: not a module path followed by a colon", n)
		}
		fields := strings.Fields(deps)
		for _, d := range fields {
			if !validModulePath(d) {
				return nil, fmt.Errorf("modules.dep line %d: bad dependency path", n)
			}
		}
		dep[mod] = fields
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return dep, nil
}

// validModulePath reports whether p is a relative path below the modules
// directory naming a .ko file.
func validModulePath(p string) bool {
	return filepath.IsLocal(p) && path.Clean(p) == p && strings.Contains(path.Base(p), ".ko") &&
		!strings.ContainsAny(p, " \t:")
}

// parseSoftdep parses modules.softdep: "softdep NAME pre: A B post: C".
func parseSoftdep(r io.Reader) (map[string][]string, error) {
	soft := map[string][]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "softdep" || strings.HasSuffix(f[1], ":") {
			continue
		}
		name := strings.ReplaceAll(f[1], "-", "_")
		for _, w := range f[2:] {
			if w == "pre:" || w == "post:" {
				continue
			}
			soft[name] = append(soft[name], strings.ReplaceAll(w, "-", "_"))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.softdep: %w", err)
	}
	return soft, nil
}

// readModuleIndex reads the depmod files of the modules directory dir.
func readModuleIndex(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{byName: map[string]string{}, builtin: map[string]bool{}, alias: map[string][]string{}}
	b, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	if idx.dep, err = parseModulesDep(bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	for p := range idx.dep {
		idx.byName[moduleName(p)] = p
	}
	if b, err = os.ReadFile(filepath.Join(dir, "modules.softdep")); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	if idx.softdep, err = parseSoftdep(bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	if b, err = os.ReadFile(filepath.Join(dir, "modules.builtin")); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	for _, p := range strings.Fields(string(b)) {
		idx.builtin[moduleName(p)] = true
	}
	if b, err = os.ReadFile(filepath.Join(dir, "modules.alias")); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			name := strings.ReplaceAll(f[1], "-", "_")
			idx.alias[name] = append(idx.alias[name], strings.ReplaceAll(f[2], "-", "_"))
		}
	}
	return idx, nil
}

// closure returns the sorted paths of the named modules and of everything
// they depend on, hard (modules.dep) or soft (modules.softdep). A name may
// be a plain alias (crypto-crc32c), which brings every module it names. A
// name that is neither a module, an alias nor built in is an error; a soft
// dependency that is missing is not, as modprobe(8) also ignores it.
func (idx *moduleIndex) closure(names []string) ([]string, error) {
	seen := map[string]bool{}
	var add func(name string, soft bool) error
	add = func(name string, soft bool) error {
		name = strings.ReplaceAll(name, "-", "_")
		p, ok := idx.byName[name]
		if targets := idx.alias[name]; !ok && len(targets) > 0 {
			for _, t := range targets {
				if err := add(t, true); err != nil {
					return err
				}
			}
			return nil
		}
		switch {
		case !ok && (idx.builtin[name] || soft):
			return nil
		case !ok:
			return fmt.Errorf("kernel module %s: neither in modules.dep nor built in", name)
		case seen[p]:
			return nil
		}
		seen[p] = true
		for _, d := range idx.dep[p] {
			if err := add(moduleName(d), false); err != nil {
				return err
			}
		}
		for _, s := range idx.softdep[name] {
			if err := add(s, true); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		if err := add(n, false); err != nil {
			return nil, err
		}
	}
	paths := make([]string, 0, len(seen))
	for p := range seen {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths, nil
}

// indexFiles returns the depmod files for an image holding only the modules
// at paths: modules.dep, modules.softdep and modules.alias cut down to them,
// and modules.builtin and modules.builtin.modinfo whole, so that a loader
// can tell a built-in module from a missing one. The alias file is what a
// coldplug matches a device's modalias against.
func indexFiles(dir string, paths []string) (map[string][]byte, error) {
	idx, err := readModuleIndex(dir)
	if err != nil {
		return nil, err
	}
	in := map[string]bool{}
	for _, p := range paths {
		in[moduleName(p)] = true
	}

	var dep bytes.Buffer
	for _, p := range paths {
		fmt.Fprintf(&dep, "%s:", p)
		for _, d := range idx.dep[p] {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteByte('\n')
	}
	alias, err := filterLines(filepath.Join(dir, "modules.alias"), 2, in)
	if err != nil {
		return nil, err
	}
	softdep, err := filterLines(filepath.Join(dir, "modules.softdep"), 1, in)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"modules.dep": dep.Bytes(), "modules.alias": alias, "modules.softdep": softdep}
	for _, name := range []string{"modules.builtin", "modules.builtin.modinfo"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("reading the module index: %w", err)
		}
		files[name] = b
	}
	return files, nil
}

// filterLines returns the lines of the file at p whose field number field
// (counted from 0) names a module in keep.
func filterLines(p string, field int, keep map[string]bool) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading the module index: %w", err)
	}
	var out bytes.Buffer
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > field && keep[strings.ReplaceAll(f[field], "-", "_")] {
			out.WriteString(line)
		}
	}
	return out.Bytes(), nil
}
