package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/u-root/mkuimage/cpio"
)

// partOf returns the part an archive entry belongs to.
func partOf(name string, mode uint64) Part {
	if mode&cpio.S_IFMT != cpio.S_IFREG {
		return PartOther
	}
	switch {
	case strings.HasPrefix(name, "bbin/"):
		return PartGo
	case strings.HasPrefix(name, "lib/modules/"):
		return PartModules
	case name == CryptsetupPath || name == MkfsVFATPath:
		return PartPrograms
	case strings.HasPrefix(name, ConfigDir+"/"):
		return PartConfig
	case strings.Contains(path.Base(name), ".so"):
		return PartLibraries
	}
	return PartOther
}

// readArchive returns the records of a newc cpio archive, their contents
// read, in archive order.
func readArchive(archive []byte) ([]cpio.Record, [][]byte, error) {
	rr := cpio.Newc.Reader(bytes.NewReader(archive))
	var recs []cpio.Record
	var data [][]byte
	for {
		r, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			return recs, data, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading the archive back: %w", err)
		}
		var b []byte
		if r.ReaderAt != nil {
			if b, err = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize))); err != nil {
				return nil, nil, fmt.Errorf("reading the archive back: %s: %w", r.Name, err)
			}
		}
		recs = append(recs, r)
		data = append(data, b)
	}
}

// measure fills in the report's sizes from the uncompressed archive.
func (rep *Report) measure(archive []byte) error {
	recs, data, err := readArchive(archive)
	if err != nil {
		return err
	}
	rep.Size = int64(len(archive))
	sizes := map[Part]*PartSize{}
	content := map[Part]*bytes.Buffer{}
	for _, p := range Parts {
		sizes[p] = &PartSize{Part: p}
		content[p] = &bytes.Buffer{}
	}
	for i, r := range recs {
		if r.Name == "TRAILER!!!" {
			continue
		}
		ps := sizes[partOf(r.Name, r.Mode)]
		ps.Files++
		ps.Size += int64(len(data[i]))
		content[ps.Part].Write(data[i])
		if int64(len(data[i])) > ps.LargestBytes {
			ps.LargestFile, ps.LargestBytes = r.Name, int64(len(data[i]))
		}
	}
	for _, p := range Parts {
		if content[p].Len() > 0 {
			z, err := rep.Compression.compress(content[p].Bytes())
			if err != nil {
				return err
			}
			sizes[p].Compressed = int64(len(z))
		}
		rep.Parts = append(rep.Parts, *sizes[p])
	}
	return nil
}

// WriteTo writes the report as a table for people.
func (rep *Report) WriteTo(w io.Writer) (int64, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "kernel %s, %d modules (%d pulled in as dependencies), %s\n",
		rep.Kernel.Version, len(rep.Modules), rep.Dependencies, rep.Compression)
	fmt.Fprintf(&b, "%-10s %6s %12s %12s  %s\n", "part", "files", "bytes", "compressed", "largest")
	for _, p := range rep.Parts {
		fmt.Fprintf(&b, "%-10s %6d %12d %12d  %s\n", p.Part, p.Files, p.Size, p.Compressed, p.LargestFile)
	}
	fmt.Fprintf(&b, "%-10s %6s %12d %12d  (%.2f MiB compressed)\n", "image", "", rep.Size, rep.Compressed,
		float64(rep.Compressed)/(1<<20))
	n, err := w.Write(b.Bytes())
	return int64(n), err
}
