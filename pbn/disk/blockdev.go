package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/cmdline"
)

// Device is a block device as the kernel shows it in sysfs, with what its
// GPT entry and superblock say.
type Device struct {
	// Name is the kernel's name ("vda1", "nvme0n1p2").
	Name string
	// Path is the device node ("/dev/vda1").
	Path string
	// Disk is the name of the disk a partition is on; empty for a disk.
	Disk string
	// Part is the partition's GPT entry, when it is on a GPT disk.
	Part *Partition
	// Super is the superblock found on it; its Type is empty when Probe
	// knew none.
	Super Superblock
}

// Sysfs says where Scan looks: the sysfs block class and the device nodes.
type Sysfs struct {
	// Block is /sys/class/block by default.
	Block string
	// Dev is /dev by default.
	Dev string
}

func (s Sysfs) withDefaults() Sysfs {
	if s.Block == "" {
		s.Block = "/sys/class/block"
	}
	if s.Dev == "" {
		s.Dev = "/dev"
	}
	return s
}

// Scan lists the block devices with a size, reads the GPT of each disk
// and probes each device's superblock. A device that cannot be read is
// listed without a superblock.
func Scan(s Sysfs) ([]Device, error) {
	s = s.withDefaults()
	entries, err := os.ReadDir(s.Block)
	if err != nil {
		return nil, fmt.Errorf("block devices: %w", err)
	}
	var devs []Device
	gpts := map[string][]Partition{}
	for _, e := range entries {
		d, ok := scanOne(s, e.Name())
		if !ok {
			continue
		}
		if d.Disk != "" {
			if _, done := gpts[d.Disk]; !done {
				gpts[d.Disk] = readGPTOf(filepath.Join(s.Dev, d.Disk))
			}
			d.Part = entry(gpts[d.Disk], partNumber(s, d.Name))
		}
		devs = append(devs, d)
	}
	return devs, nil
}

func scanOne(s Sysfs, name string) (Device, bool) {
	sys := filepath.Join(s.Block, name)
	if size, err := readInt(filepath.Join(sys, "size")); err != nil || size == 0 {
		return Device{}, false
	}
	d := Device{Name: name, Path: filepath.Join(s.Dev, name)}
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		if real, err := filepath.EvalSymlinks(sys); err == nil {
			d.Disk = filepath.Base(filepath.Dir(real))
		}
	}
	if f, err := os.Open(d.Path); err == nil {
		d.Super, _ = Probe(f)
		f.Close()
	}
	return d, true
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func partNumber(s Sysfs, name string) int {
	n, _ := readInt(filepath.Join(s.Block, name, "partition"))
	return n
}

func readGPTOf(path string) []Partition {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	parts, _ := ReadGPT(f)
	return parts
}

func entry(parts []Partition, n int) *Partition {
	for i := range parts {
		if parts[i].Number == n {
			return &parts[i]
		}
	}
	return nil
}

// Matches reports whether the device is the one root= names.
func (d *Device) Matches(spec cmdline.Device) bool {
	switch spec.Kind {
	case cmdline.DeviceUUID:
		return d.Super.UUID == spec.Value
	case cmdline.DevicePARTUUID:
		return d.Part != nil && d.Part.GUID == spec.Value
	case cmdline.DeviceLabel:
		return d.Super.Label == spec.Value
	case cmdline.DevicePath:
		return d.Path == spec.Value || sameNode(d.Path, spec.Value)
	}
	return false
}

// sameNode reports whether two paths are the same device node, as
// /dev/mapper/root and /dev/dm-0 are.
func sameNode(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Mode&unix.S_IFMT == unix.S_IFBLK && sb.Mode&unix.S_IFMT == unix.S_IFBLK && sa.Rdev == sb.Rdev
}

// IsESP reports whether the device is an EFI system partition: by its GPT
// type, or, on a disk without GPT, a FAT volume labelled ESP or EFI.
func (d *Device) IsESP() bool {
	if d.Part != nil {
		return d.Part.Type == ESPType && d.Super.Type == TypeVFAT
	}
	return d.Super.Type == TypeVFAT && (d.Super.Label == "ESP" || d.Super.Label == "EFI")
}

// NotFoundError says a device did not appear in time. [Wait] returns it.
type NotFoundError struct {
	// What names the device sought: "the EFI system partition",
	// "UUID=...".
	What string
	// Waited is how long Wait looked.
	Waited time.Duration
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s not found after %v", e.What, e.Waited.Round(time.Millisecond))
}

// Sentence returns the console's line.
func (e *NotFoundError) Sentence() string {
	return fmt.Sprintf("The disk could not be found (%s). Check that it is connected, "+
		"or ask your administrator.", e.What)
}

// ScanPoll is how often Wait scans again.
const ScanPoll = 50 * time.Millisecond

// Wait scans until a device satisfies want and returns it, or returns a
// *NotFoundError when ctx ends first. what names the device for the error.
func Wait(ctx context.Context, s Sysfs, what string, want func(*Device) bool) (*Device, error) {
	start := time.Now()
	for {
		devs, err := Scan(s)
		if err != nil {
			return nil, err
		}
		for i := range devs {
			if want(&devs[i]) {
				return &devs[i], nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, &NotFoundError{What: what, Waited: time.Since(start)}
		case <-time.After(ScanPoll):
		}
	}
}
