package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The file system types that Probe recognises, named as mount(2) and
// blkid name them.
const (
	TypeLUKS = "crypto_LUKS"
	TypeExt4 = "ext4"
	TypeVFAT = "vfat"
)

// Superblock is what Probe read from the start of a block device.
type Superblock struct {
	// Type is one of TypeLUKS, TypeExt4 and TypeVFAT; ext2 and ext3 show
	// as ext4, whose driver mounts them.
	Type string
	// UUID is the volume's UUID in lower case; a FAT volume's serial is
	// written XXXX-XXXX.
	UUID string
	// Label is the volume's label, if any.
	Label string
}

// ErrUnknownFS says Probe found no superblock it knows.
var ErrUnknownFS = errors.New("no known file system or LUKS header")

// probeSize is how much of a device Probe reads: the ext4 superblock ends
// at 2 KiB.
const probeSize = 4096

// Probe reads the superblock at the start of a block device: a LUKS1 or
// LUKS2 header (LUKS2 On-Disk Format Specification, section 2), an ext2/3/4
// superblock, or a FAT boot sector (Microsoft's FAT specification, section
// 3). It returns ErrUnknownFS for anything else.
func Probe(r io.ReaderAt) (Superblock, error) {
	b := make([]byte, probeSize)
	n, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Superblock{}, fmt.Errorf("probe: %w", err)
	}
	b = b[:n]
	for _, p := range []func([]byte) (Superblock, bool){probeLUKS, probeExt, probeFAT} {
		if sb, ok := p(b); ok {
			return sb, nil
		}
	}
	return Superblock{}, ErrUnknownFS
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func probeLUKS(b []byte) (Superblock, bool) {
	if len(b) < 208 || string(b[:6]) != "LUKS\xba\xbe" {
		return Superblock{}, false
	}
	sb := Superblock{Type: TypeLUKS, UUID: strings.ToLower(cstring(b[168:208]))}
	if binary.BigEndian.Uint16(b[6:]) == 2 {
		sb.Label = cstring(b[24:72])
	}
	return sb, sb.UUID != ""
}

func probeExt(b []byte) (Superblock, bool) {
	const off = 1024
	if len(b) < off+0x88 || binary.LittleEndian.Uint16(b[off+0x38:]) != 0xef53 {
		return Superblock{}, false
	}
	u := b[off+0x68 : off+0x78]
	return Superblock{
		Type:  TypeExt4,
		UUID:  fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
		Label: cstring(b[off+0x78 : off+0x88]),
	}, true
}

func probeFAT(b []byte) (Superblock, bool) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return Superblock{}, false
	}
	var serial, label int
	switch {
	case string(b[0x52:0x57]) == "FAT32" && b[0x42] == 0x29:
		serial, label = 0x43, 0x47
	case string(b[0x36:0x39]) == "FAT" && b[0x26] == 0x29:
		serial, label = 0x27, 0x2b
	default:
		return Superblock{}, false
	}
	id := binary.LittleEndian.Uint32(b[serial:])
	l := strings.TrimRight(string(b[label:label+11]), " ")
	if l == "NO NAME" {
		l = ""
	}
	return Superblock{Type: TypeVFAT, UUID: fmt.Sprintf("%04x-%04x", id>>16, id&0xffff), Label: l}, true
}
