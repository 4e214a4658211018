// Package faultfs is an in-memory file system for tests that can cut the
// power after any operation, and then tell every state the medium may be
// left in. Packages adapt it to their own file system interface
// (keyfile.FS) with a one-line Create.
//
// It keeps two views: what the running system sees, and what is certain to
// be on the medium. A file's data and its directory entry reach the medium
// when it is synced (Linux's vfat writes the entry with the file's fsync);
// removals and new entries reach it when the directory is synced. What was
// written but not yet synced may, after the cut, be there whole, be
// missing, or be torn (the new bytes in part, the old or zeros in the
// rest): Outcomes enumerates all of these.
//
// It is a model, not FAT itself: it is for the faults a real file system
// cannot be made to produce on demand, at a chosen instant.
package faultfs

import (
	"bytes"
	"errors"
	"io/fs"
	"path/filepath"
	"sort"
)

// ErrPowerCut is what every operation returns after the power is cut.
var ErrPowerCut = errors.New("power cut")

// FS is the file system. Reads never count as operations; every create,
// write, sync, directory sync and removal does.
type FS struct {
	live    map[string][]byte
	durable map[string][]byte
	// Ops counts the operations so far.
	Ops int
	// CutAt cuts the power once Ops reaches it; -1 never.
	CutAt int
	// Trace lists the operations, for failure messages.
	Trace []string
}

// New returns a file system whose medium holds the files of durable.
func New(durable map[string][]byte) *FS {
	f := &FS{live: map[string][]byte{}, durable: map[string][]byte{}, CutAt: -1}
	for k, v := range durable {
		f.live[k], f.durable[k] = bytes.Clone(v), bytes.Clone(v)
	}
	return f
}

// op counts one operation and reports whether the power is still on.
func (f *FS) op(what string) error {
	if f.CutAt >= 0 && f.Ops >= f.CutAt {
		return ErrPowerCut
	}
	f.Ops++
	f.Trace = append(f.Trace, what)
	return nil
}

// ReadFile returns the contents of name as the running system sees them.
func (f *FS) ReadFile(name string) ([]byte, error) {
	b, ok := f.live[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return bytes.Clone(b), nil
}

// Create creates or truncates name.
func (f *FS) Create(name string) (*File, error) {
	if err := f.op("create " + name); err != nil {
		return nil, err
	}
	f.live[name] = []byte{}
	return &File{f, name}, nil
}

// Remove removes name.
func (f *FS) Remove(name string) error {
	if err := f.op("remove " + name); err != nil {
		return err
	}
	if _, ok := f.live[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(f.live, name)
	return nil
}

// SyncDir makes the directory entries durable: removals go, new entries
// appear (with the data their files' last sync wrote, or zeros).
func (f *FS) SyncDir(dir string) error {
	if err := f.op("syncdir " + dir); err != nil {
		return err
	}
	for name := range f.durable {
		if _, ok := f.live[name]; !ok {
			delete(f.durable, name)
		}
	}
	for name, b := range f.live {
		if _, ok := f.durable[name]; !ok {
			f.durable[name] = make([]byte, len(b)) // the entry, not the data
		}
	}
	return nil
}

// ReadDir returns the names in dir, sorted.
func (f *FS) ReadDir(dir string) ([]string, error) {
	var names []string
	for name := range f.live {
		if filepath.Dir(name) == dir {
			names = append(names, filepath.Base(name))
		}
	}
	sort.Strings(names)
	return names, nil
}

// File is a file being written.
type File struct {
	fs   *FS
	name string
}

// Write appends b to the file.
func (w *File) Write(b []byte) (int, error) {
	if err := w.fs.op("write " + w.name); err != nil {
		return 0, err
	}
	w.fs.live[w.name] = append(w.fs.live[w.name], b...)
	return len(b), nil
}

// Sync makes the file's data and its directory entry durable.
func (w *File) Sync() error {
	if err := w.fs.op("sync " + w.name); err != nil {
		return err
	}
	w.fs.durable[w.name] = bytes.Clone(w.fs.live[w.name])
	return nil
}

// Close does nothing: the model has no descriptors.
func (w *File) Close() error { return nil }

// Durable returns what is certain to be on the medium.
func (f *FS) Durable() map[string][]byte { return f.durable }

// Outcomes returns every state the medium may be in after the power cut:
// for each file whose live and durable views differ, the durable view, the
// live one, and the live one torn half way over the durable one or zeros.
// The order is the same for the same operations on the same names.
func (f *FS) Outcomes() []map[string][]byte {
	var names []string
	for n := range f.live {
		names = append(names, n)
	}
	for n := range f.durable {
		if _, ok := f.live[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	states := []map[string][]byte{{}}
	for _, n := range names {
		var next []map[string][]byte
		for _, s := range states {
			for _, v := range f.variants(n) {
				c := map[string][]byte{}
				for k, b := range s {
					c[k] = b
				}
				if v != nil {
					c[n] = v
				}
				next = append(next, c)
			}
		}
		states = next
	}
	return states
}

// variants returns what file n may hold after the cut; nil means absent.
func (f *FS) variants(n string) [][]byte {
	live, liveOK := f.live[n]
	dur, durOK := f.durable[n]
	var variants [][]byte
	if durOK {
		variants = append(variants, dur)
	} else {
		variants = append(variants, nil)
	}
	if liveOK == durOK && bytes.Equal(live, dur) {
		return variants
	}
	if !liveOK {
		return append(variants, nil)
	}
	half := len(live) / 2
	over := append(bytes.Clone(live[:half]), make([]byte, len(live)-half)...)
	if durOK {
		copy(over[half:], dur[min(half, len(dur)):])
	}
	return append(variants, live, over, make([]byte, len(live)))
}
