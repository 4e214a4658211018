package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Key files live on the ESP, a FAT file system, where a rename is not
// atomic: a power cut in the middle can leave both names, or neither, or a
// directory that fsck must repair. Replace therefore never renames. A key
// file at path P is replaced in three steps, each made durable before the
// next:
//
//  1. the new generation is written to P.new;
//  2. the new generation is written over P;
//  3. P.new is removed.
//
// A power cut during step 1 leaves P as it was; during step 2, P.new is
// whole; during step 3, both hold the new generation. Load reads both names
// and takes the highest generation that parses, so at every instant it
// finds a whole key file, of the old generation or the new one, and never
// an older generation where a newer one is whole. After a replacement only
// P remains, so no copy of an older generation stays behind.

// Ext is the file name extension of key files.
const Ext = ".pbk"

// pendingExt marks the copy of a replacement in progress.
const pendingExt = ".new"

// FS is the file system that Load, Replace and Remove work through:
// the real one (OSFS) or, in tests, one that cuts the power.
type FS interface {
	ReadFile(name string) ([]byte, error)
	// Create opens name for writing, creating it or truncating it.
	Create(name string) (File, error)
	Remove(name string) error
	// SyncDir makes the directory's entries durable.
	SyncDir(dir string) error
	// ReadDir returns the names in dir.
	ReadDir(dir string) ([]string, error)
}

// File is a file being written.
type File interface {
	io.Writer
	Sync() error
	Close() error
}

// OSFS is the operating system's file system.
type OSFS struct{}

// ReadFile reads name whole.
func (OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// Create opens name for writing, owner-only.
func (OSFS) Create(name string) (File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
}

// Remove removes name.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// SyncDir fsyncs the directory dir.
func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ReadDir lists dir.
func (OSFS) ReadDir(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

// Load reads the key file at path, taking the newest whole generation of
// path and of a replacement in progress. It returns an error that wraps
// fs.ErrNotExist if neither exists, and otherwise the reason path does not
// parse when no copy is whole.
func Load(fsys FS, path string) (*KeyFile, error) {
	main, errMain := readKeyFile(fsys, path)
	pending, errPending := readKeyFile(fsys, path+pendingExt)
	if pending != nil && main != nil && pending.header.ID != main.header.ID {
		// Not a replacement of this key file: never take it.
		pending = nil
	}
	switch {
	case main != nil && pending != nil:
		if pending.header.Generation > main.header.Generation {
			return pending, nil
		}
		return main, nil
	case main != nil:
		return main, nil
	case pending != nil:
		return pending, nil
	case errors.Is(errMain, fs.ErrNotExist) && !errors.Is(errPending, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: %w", path+pendingExt, errPending)
	}
	return nil, fmt.Errorf("%s: %w", path, errMain)
}

func readKeyFile(fsys FS, name string) (*KeyFile, error) {
	b, err := fsys.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Replace writes f to path crash-safely, as the next generation of the key
// file there, or as a new key file if there is none. It returns ErrStale if
// the key file on disk is of a later generation than f (f was read before
// someone else replaced it), and refuses to replace a different key file.
// On success f's header carries the generation written.
func Replace(fsys FS, path string, f *KeyFile) error {
	cur, err := Load(fsys, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, ErrDamaged) || errors.Is(err, ErrFormat):
		// A damaged copy is replaced; nothing newer can be read from it.
	case err != nil:
		return err
	case cur.header.ID != f.header.ID:
		return fmt.Errorf("keyfile: %s holds key file %s, not %s", path, cur.header.ID, f.header.ID)
	case cur.header.Generation > f.header.Generation:
		return fmt.Errorf("keyfile: %s: %w (generation %d on disk, %d being written)",
			path, ErrStale, cur.header.Generation, f.header.Generation)
	default:
		f.header.Generation = max(cur.header.Generation+1, f.header.Generation)
	}
	b, err := f.Marshal()
	if err != nil {
		return err
	}

	dir := filepath.Dir(path)
	if err := writeDurable(fsys, path+pendingExt, b); err != nil {
		return err
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("keyfile: sync %s: %w", dir, err)
	}
	if err := writeDurable(fsys, path, b); err != nil {
		return err
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("keyfile: sync %s: %w", dir, err)
	}
	if err := fsys.Remove(path + pendingExt); err != nil {
		return fmt.Errorf("keyfile: remove %s: %w", path+pendingExt, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("keyfile: sync %s: %w", dir, err)
	}
	return nil
}

// Remove removes the key file at path and any replacement in progress.
func Remove(fsys FS, path string) error {
	var errs []error
	for _, name := range []string{path + pendingExt, path} {
		if err := fsys.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := fsys.SyncDir(filepath.Dir(path)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("keyfile: remove %s: %w", path, err)
	}
	return nil
}

// List returns the paths of the key files in dir, sorted, as Load takes
// them: a replacement in progress shows under its key file's name.
func List(fsys FS, dir string) ([]string, error) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var paths []string
	for _, n := range names {
		n = strings.TrimSuffix(n, pendingExt)
		if !strings.HasSuffix(n, Ext) || seen[n] {
			continue
		}
		seen[n] = true
		paths = append(paths, filepath.Join(dir, n))
	}
	sort.Strings(paths)
	return paths, nil
}

// writeDurable writes b to name and syncs it.
func writeDurable(fsys FS, name string, b []byte) error {
	w, err := fsys.Create(name)
	if err != nil {
		return fmt.Errorf("keyfile: create %s: %w", name, err)
	}
	if _, err := w.Write(b); err != nil {
		w.Close()
		return fmt.Errorf("keyfile: write %s: %w", name, err)
	}
	if err := w.Sync(); err != nil {
		w.Close()
		return fmt.Errorf("keyfile: sync %s: %w", name, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("keyfile: close %s: %w", name, err)
	}
	return nil
}
