// Package imaging turns a blank disk into a PBN laptop's disk: the work of
// the agent's imaging mode (pbn.mode=image), which a PXE entry selects.
//
// An imaged disk has a GUID partition table with two partitions: an EFI
// system partition named ESPName, FAT, holding the boot files and the key
// files; and a LUKS2 volume named RootName, of the Discoverable Partitions
// Specification's LUKS type, holding the OS payload. The partition names
// and types are what marks a disk as PBN's (Inspect): a disk that has them
// but no key file on its ESP is an imaging that was cut off, and imaging
// it again starts from the beginning. The key file is written last.
//
// The package does the steps that can be tested on a host: laying out and
// writing the table, inspecting a disk and refusing one that holds data,
// streaming a payload over HTTPS with progress. The agent runs them on the
// disk with cryptsetup and mkfs.vfat in between.
package imaging

import (
	"crypto/rand"
	"fmt"
	"io"

	"github.com/pbn-project/pbn/pbn/disk"
)

// The names and types that mark a disk as PBN's.
const (
	ESPName  = "PBN ESP"
	RootName = "PBN root"
	// RootType is the partition type GUID of LUKS in the Discoverable
	// Partitions Specification.
	RootType = "ca7d7ccb-63ed-4c53-861c-1742536059cc"
)

// DefaultESPMiB is the ESP's size when the configuration gives none: room
// for a distribution kernel, the image and key files, with the FAT32
// minimum's margin.
const DefaultESPMiB = 256

// align is where partitions start and end: 1 MiB, as partitioning tools
// align for every sector size and SSD erase block.
const align = 1 << 20

// Layout is the partition table of an imaged disk.
type Layout struct {
	// Size is the disk's size in bytes; Sector its logical sector size.
	Size   int64
	Sector int
	// DiskGUID is the table's disk GUID.
	DiskGUID string
	// ESP and Root are the two partitions, numbered 1 and 2.
	ESP, Root disk.Partition
}

// Plan lays out a disk of size bytes with sectors of sector bytes: the ESP
// of espMiB MiB from the first MiB, the LUKS2 root over the rest up to the
// last whole MiB before the backup table. The GUIDs are new random ones.
func Plan(size int64, sector, espMiB int) (Layout, error) {
	if sector != 512 && sector != 4096 {
		return Layout{}, fmt.Errorf("imaging: %d-byte sectors, want 512 or 4096", sector)
	}
	perMiB := uint64(align / sector)
	usableEnd := uint64(size/int64(sector)) - disk.GPTReserved(sector) // one past the last usable
	rootEnd := usableEnd / perMiB * perMiB
	espStart := perMiB
	rootStart := espStart + uint64(espMiB)*perMiB
	if espMiB < 1 || rootEnd < rootStart+16*perMiB {
		return Layout{}, fmt.Errorf("imaging: a disk of %d MiB is too small for an ESP of %d MiB and a root",
			size>>20, espMiB)
	}
	return Layout{
		Size:     size,
		Sector:   sector,
		DiskGUID: newGUID(),
		ESP: disk.Partition{Number: 1, Type: disk.ESPType, GUID: newGUID(), Name: ESPName,
			FirstLBA: espStart, LastLBA: rootStart - 1},
		Root: disk.Partition{Number: 2, Type: RootType, GUID: newGUID(), Name: RootName,
			FirstLBA: rootStart, LastLBA: rootEnd - 1},
	}, nil
}

// Write writes the layout's partition table to the disk (disk.WriteGPT).
// The caller syncs the disk and has the kernel read the table again.
func (l Layout) Write(w io.WriterAt) error {
	return disk.WriteGPT(w, l.Size, l.Sector, l.DiskGUID, []disk.Partition{l.ESP, l.Root})
}

// RootBytes is the size of the root partition.
func (l Layout) RootBytes() int64 {
	return int64(l.Root.LastLBA-l.Root.FirstLBA+1) * int64(l.Sector)
}

// newGUID returns a random RFC 9562 version 4 UUID, as GPTs hold them.
func newGUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// NewUUID returns a random version 4 UUID, for the LUKS2 header.
func NewUUID() string { return newGUID() }
