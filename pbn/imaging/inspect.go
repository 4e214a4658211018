package imaging

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/disk"
)

// State is what Inspect found on a disk.
type State int

// The states of a disk.
const (
	// Blank: no partition table, no file system or LUKS header, and only
	// zeros in the first MiB.
	Blank State = iota
	// Ours: PBN's partition table (see the package doc). The imaging
	// finished if its ESP holds a key file (Finished), and was cut off
	// otherwise.
	Ours
	// Foreign: the disk holds data that is not PBN's.
	Foreign
)

// Finding is what Inspect found.
type Finding struct {
	State State
	// What names what a Foreign disk holds, for people: "a GPT partition
	// table with 3 partitions", "an ext4 file system".
	What string
}

// inspectSize is how much of the start of a disk Inspect reads: where
// partition tables, boot sectors and superblocks live.
const inspectSize = 1 << 20

// Inspect reads the start of a disk and says whether it is blank, PBN's or
// holds data. A disk whose only data lies past its first MiB (a backup
// GPT alone, say) counts as blank.
func Inspect(r io.ReaderAt) (Finding, error) {
	b := make([]byte, inspectSize)
	n, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Finding{}, fmt.Errorf("imaging: inspect: %w", err)
	}
	b = b[:n]

	parts, err := disk.ReadGPT(r)
	switch {
	case err == nil && isOurs(parts):
		return Finding{State: Ours}, nil
	case err == nil:
		return Finding{State: Foreign, What: fmt.Sprintf("a GPT partition table with %d partitions", len(parts))}, nil
	}
	if sb, err := disk.Probe(r); err == nil {
		return Finding{State: Foreign, What: describe(sb.Type)}, nil
	}
	if len(b) >= 512 && b[510] == 0x55 && b[511] == 0xaa {
		return Finding{State: Foreign, What: "an MBR partition table"}, nil
	}
	for _, c := range b {
		if c != 0 {
			return Finding{State: Foreign, What: "data in its first MiB"}, nil
		}
	}
	return Finding{State: Blank}, nil
}

// isOurs reports whether a partition table is the one Plan lays out.
func isOurs(parts []disk.Partition) bool {
	return len(parts) == 2 &&
		parts[0].Number == 1 && parts[0].Type == disk.ESPType && parts[0].Name == ESPName &&
		parts[1].Number == 2 && parts[1].Type == RootType && parts[1].Name == RootName
}

func describe(fstype string) string {
	switch fstype {
	case disk.TypeLUKS:
		return "a LUKS encrypted volume"
	case disk.TypeVFAT:
		return "a FAT file system"
	}
	return "an " + fstype + " file system"
}

// Finished reports whether the imaging of a disk of state Ours finished:
// its ESP, mounted at esp, holds a key file (the last thing written).
func Finished(esp string) (bool, error) {
	paths, err := keyfile.List(keyfile.OSFS{}, filepath.Join(esp, disk.KeyDir))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("imaging: key files on the esp: %w", err)
	}
	return len(paths) > 0, nil
}

// RefusedError says imaging stopped so as not to erase a disk.
// [Refuse] returns it.
type RefusedError struct {
	// What the disk holds: Finding.What, or "a finished PBN imaging".
	What string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("imaging: the disk holds %s, and the configuration does not allow overwriting it", e.What)
}

// Sentence returns the console's line.
func (e *RefusedError) Sentence() string {
	return fmt.Sprintf("This computer's disk holds %s. It was left as it is; "+
		"ask your administrator to allow overwriting it.", e.What)
}

// Refuse returns a *RefusedError when imaging must leave the disk alone:
// it holds data, or a finished imaging, and overwrite is not set. finished
// is Finished's answer for a disk of state Ours.
func Refuse(f Finding, finished, overwrite bool) error {
	switch {
	case overwrite:
		return nil
	case f.State == Foreign:
		return &RefusedError{What: f.What}
	case f.State == Ours && finished:
		return &RefusedError{What: "a finished PBN installation"}
	}
	return nil
}
