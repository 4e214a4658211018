// Package disk finds the disks the agent needs and opens them: the EFI
// system partition that holds the key files, the LUKS2 volume, and the
// root file system. It reads the GPT and the superblocks itself (no blkid,
// no udev), opens LUKS2 with cryptsetup, and mounts the root.
package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// ESPType is the partition type GUID of an EFI system partition (UEFI 2.10
// section 5.3.3, table 5.8).
const ESPType = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"

// Partition is one entry of a GUID partition table (UEFI 2.10 section
// 5.3.3).
type Partition struct {
	// Number is the entry's place in the table, from 1, as Linux numbers
	// partitions.
	Number int
	// Type and GUID are the partition type GUID and the unique partition
	// GUID (PARTUUID), lower case.
	Type, GUID string
	// Name is the partition's name.
	Name string
	// FirstLBA and LastLBA bound the partition, inclusive.
	FirstLBA, LastLBA uint64
}

// ErrNoGPT says a disk has no valid GUID partition table.
var ErrNoGPT = errors.New("no GUID partition table")

const (
	gptSignature  = "EFI PART"
	gptHeaderMin  = 92
	gptEntryMin   = 128
	gptMaxEntries = 1024
)

// ReadGPT reads the primary GUID partition table of a disk, with 512- or
// 4096-byte sectors, and checks both of its CRC32s. It returns ErrNoGPT
// when there is none, and the used entries otherwise.
func ReadGPT(r io.ReaderAt) ([]Partition, error) {
	var errs []error
	for _, sector := range []int64{512, 4096} {
		parts, err := readGPT(r, sector)
		if err == nil {
			return parts, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", ErrNoGPT, errors.Join(errs...))
}

func readGPT(r io.ReaderAt, sector int64) ([]Partition, error) {
	hdr := make([]byte, sector)
	if _, err := r.ReadAt(hdr, sector); err != nil {
		return nil, err
	}
	if string(hdr[:8]) != gptSignature {
		return nil, fmt.Errorf("%d-byte sectors: no signature", sector)
	}
	size := binary.LittleEndian.Uint32(hdr[12:])
	if size < gptHeaderMin || int64(size) > sector {
		return nil, fmt.Errorf("header size %d", size)
	}
	want := binary.LittleEndian.Uint32(hdr[16:])
	h := append([]byte(nil), hdr[:size]...)
	clear(h[16:20])
	if crc32.ChecksumIEEE(h) != want {
		return nil, errors.New("header checksum mismatch")
	}
	entryLBA := binary.LittleEndian.Uint64(hdr[72:])
	n := binary.LittleEndian.Uint32(hdr[80:])
	esize := binary.LittleEndian.Uint32(hdr[84:])
	if n > gptMaxEntries || esize < gptEntryMin || esize%8 != 0 || esize > 4096 || entryLBA > 1<<40 {
		return nil, fmt.Errorf("%d entries of %d bytes at LBA %d", n, esize, entryLBA)
	}
	entries := make([]byte, int(n)*int(esize))
	if _, err := r.ReadAt(entries, int64(entryLBA)*sector); err != nil {
		return nil, fmt.Errorf("entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(hdr[88:]) {
		return nil, errors.New("entries checksum mismatch")
	}
	var parts []Partition
	for i := range int(n) {
		e := entries[i*int(esize):][:gptEntryMin]
		if isZero(e[:16]) {
			continue
		}
		parts = append(parts, Partition{
			Number:   i + 1,
			Type:     guid(e[0:16]),
			GUID:     guid(e[16:32]),
			FirstLBA: binary.LittleEndian.Uint64(e[32:]),
			LastLBA:  binary.LittleEndian.Uint64(e[40:]),
			Name:     utf16Name(e[56:128]),
		})
	}
	return parts, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// guid formats a GUID stored as UEFI does: the first three fields little
// endian, the rest as bytes (UEFI 2.10 appendix A).
func guid(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(b[0:]),
		binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
