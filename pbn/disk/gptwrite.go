package disk

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// gptEntries is how many entries WriteGPT's tables have, each of
// gptEntryMin bytes: 16 KiB, the minimum UEFI asks for (UEFI 2.10 section
// 5.3.2).
const gptEntries = 128

// GPTReserved returns how many sectors of sector bytes each end of a disk
// that WriteGPT partitions keeps for its tables: the protective MBR, the
// header and the entries at the start; the entries and the header at the
// end. Partitions lie between.
func GPTReserved(sector int) uint64 {
	return 2 + gptEntries*gptEntryMin/uint64(sector)
}

// WriteGPT writes a GUID partition table holding parts to a disk of size
// bytes with sectors of sector bytes (UEFI 2.10 section 5.3): a protective
// MBR (section 5.2.3), the primary header and entries from LBA 1, and the
// backup entries and header at the end. The partitions' Number is their
// entry's place; their FirstLBA and LastLBA must lie within the usable
// sectors and not overlap. GUIDs are given as ReadGPT returns them.
//
// The backup is written first and the primary last, in one write with
// the protective MBR, so that a disk whose writing is cut off has at most
// a torn primary table beside a whole backup.
func WriteGPT(w io.WriterAt, size int64, sector int, diskGUID string, parts []Partition) error {
	if sector != 512 && sector != 4096 {
		return fmt.Errorf("write gpt: %d-byte sectors, want 512 or 4096", sector)
	}
	last := uint64(size/int64(sector)) - 1
	reserved := GPTReserved(sector)
	if size%int64(sector) != 0 || last < 2*reserved {
		return fmt.Errorf("write gpt: a disk of %d bytes is too small", size)
	}
	firstUsable, lastUsable := reserved, last-reserved+1
	entries, err := gptEntryArray(parts, firstUsable, lastUsable)
	if err != nil {
		return fmt.Errorf("write gpt: %w", err)
	}
	dg, err := encodeGUID(diskGUID)
	if err != nil {
		return fmt.Errorf("write gpt: disk guid: %w", err)
	}
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(my, alternate, entryLBA uint64) []byte {
		h := make([]byte, sector)
		copy(h, gptSignature)
		binary.LittleEndian.PutUint32(h[8:], 0x00010000) // revision 1.0
		binary.LittleEndian.PutUint32(h[12:], gptHeaderMin)
		binary.LittleEndian.PutUint64(h[24:], my)
		binary.LittleEndian.PutUint64(h[32:], alternate)
		binary.LittleEndian.PutUint64(h[40:], firstUsable)
		binary.LittleEndian.PutUint64(h[48:], lastUsable)
		copy(h[56:72], dg[:])
		binary.LittleEndian.PutUint64(h[72:], entryLBA)
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntryMin)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:gptHeaderMin]))
		return h
	}

	backupEntries := last - uint64(len(entries)/sector)
	backup := append(append([]byte(nil), entries...), header(last, 1, backupEntries)...)
	if _, err := w.WriteAt(backup, int64(backupEntries)*int64(sector)); err != nil {
		return fmt.Errorf("write gpt: backup: %w", err)
	}
	primary := append(protectiveMBR(sector, last), header(1, last, 2)...)
	primary = append(primary, entries...)
	if _, err := w.WriteAt(primary, 0); err != nil {
		return fmt.Errorf("write gpt: primary: %w", err)
	}
	return nil
}

// gptEntryArray encodes parts as the entry array, checking their bounds.
func gptEntryArray(parts []Partition, firstUsable, lastUsable uint64) ([]byte, error) {
	b := make([]byte, gptEntries*gptEntryMin)
	for i, p := range parts {
		if p.Number < 1 || p.Number > gptEntries {
			return nil, fmt.Errorf("partition number %d, want 1 to %d", p.Number, gptEntries)
		}
		if p.FirstLBA < firstUsable || p.LastLBA > lastUsable || p.FirstLBA > p.LastLBA {
			return nil, fmt.Errorf("partition %d: sectors %d to %d outside %d to %d",
				p.Number, p.FirstLBA, p.LastLBA, firstUsable, lastUsable)
		}
		for _, q := range parts[:i] {
			if q.Number == p.Number || p.FirstLBA <= q.LastLBA && q.FirstLBA <= p.LastLBA {
				return nil, fmt.Errorf("partitions %d and %d overlap", q.Number, p.Number)
			}
		}
		name := utf16.Encode([]rune(p.Name))
		if len(name) > 36 {
			return nil, fmt.Errorf("partition %d: name of %d UTF-16 units, want at most 36", p.Number, len(name))
		}
		typ, err := encodeGUID(p.Type)
		if err != nil {
			return nil, fmt.Errorf("partition %d: type: %w", p.Number, err)
		}
		uniq, err := encodeGUID(p.GUID)
		if err != nil {
			return nil, fmt.Errorf("partition %d: guid: %w", p.Number, err)
		}
		if typ == [16]byte{} {
			return nil, fmt.Errorf("partition %d: the zero type marks an unused entry", p.Number)
		}
		e := b[(p.Number-1)*gptEntryMin:][:gptEntryMin]
		copy(e[0:16], typ[:])
		copy(e[16:32], uniq[:])
		binary.LittleEndian.PutUint64(e[32:], p.FirstLBA)
		binary.LittleEndian.PutUint64(e[40:], p.LastLBA)
		for j, c := range name {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	return b, nil
}

// protectiveMBR returns LBA 0 of a GPT disk: one partition of type 0xEE
// over the disk, or as much of it as 32 bits count (UEFI 2.10 table 5.4).
func protectiveMBR(sector int, last uint64) []byte {
	b := make([]byte, sector)
	r := b[446:462]
	copy(r[1:4], []byte{0x00, 0x02, 0x00}) // CHS of LBA 1
	r[4] = 0xee
	copy(r[5:8], []byte{0xff, 0xff, 0xff})
	binary.LittleEndian.PutUint32(r[8:], 1)
	binary.LittleEndian.PutUint32(r[12:], uint32(min(last, 0xffffffff)))
	b[510], b[511] = 0x55, 0xaa
	return b
}

// encodeGUID is the inverse of guid: the text form, of any case, stored
// with its first three fields little endian (UEFI 2.10 appendix A).
func encodeGUID(s string) ([16]byte, error) {
	var g [16]byte
	f := strings.Split(s, "-")
	if len(s) != 36 || len(f) != 5 || len(f[0]) != 8 || len(f[1]) != 4 || len(f[2]) != 4 ||
		len(f[3]) != 4 {
		return g, errors.New("want a GUID of the form 01234567-89ab-cdef-0123-456789abcdef")
	}
	raw, err := hex.DecodeString(strings.Join(f, ""))
	if err != nil {
		return g, errors.New("want a GUID of hex digits")
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}
