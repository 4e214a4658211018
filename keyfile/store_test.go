package keyfile

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// errPowerCut is what every operation returns after the power is cut.
var errPowerCut = errors.New("power cut")

// faultFS is an in-memory file system that can cut the power after any
// operation. It keeps two views: what the running system sees, and what is
// certain to be on the medium. A file's data and its directory entry reach
// the medium when it is synced (Linux's vfat writes the entry with the
// file's fsync); removals and new entries reach it when the directory is
// synced. What was written but not yet synced may, after the cut, be there
// whole, be missing, or be torn (the new bytes in part, the old or zeros in
// the rest): outcomes enumerates all of these.
//
// It is a model, not FAT itself: it is for the faults a real file system
// cannot be made to produce on demand, at a chosen instant.
type faultFS struct {
	live    map[string][]byte
	durable map[string][]byte
	ops     int      // operations so far
	cutAt   int      // the power is cut once ops reaches cutAt; -1 never
	trace   []string // the operations, for failure messages
}

func newFaultFS(durable map[string][]byte) *faultFS {
	f := &faultFS{live: map[string][]byte{}, durable: map[string][]byte{}, cutAt: -1}
	for k, v := range durable {
		f.live[k], f.durable[k] = bytes.Clone(v), bytes.Clone(v)
	}
	return f
}

// op counts one operation and reports whether the power is still on.
func (f *faultFS) op(what string) error {
	if f.cutAt >= 0 && f.ops >= f.cutAt {
		return errPowerCut
	}
	f.ops++
	f.trace = append(f.trace, what)
	return nil
}

func (f *faultFS) ReadFile(name string) ([]byte, error) {
	b, ok := f.live[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return bytes.Clone(b), nil
}

func (f *faultFS) Create(name string) (File, error) {
	if err := f.op("create " + name); err != nil {
		return nil, err
	}
	f.live[name] = []byte{}
	return &faultFile{f, name}, nil
}

func (f *faultFS) Remove(name string) error {
	if err := f.op("remove " + name); err != nil {
		return err
	}
	if _, ok := f.live[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(f.live, name)
	return nil
}

func (f *faultFS) SyncDir(dir string) error {
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

func (f *faultFS) ReadDir(dir string) ([]string, error) {
	var names []string
	for name := range f.live {
		if filepath.Dir(name) == dir {
			names = append(names, filepath.Base(name))
		}
	}
	sort.Strings(names)
	return names, nil
}

type faultFile struct {
	fs   *faultFS
	name string
}

func (w *faultFile) Write(b []byte) (int, error) {
	if err := w.fs.op("write " + w.name); err != nil {
		return 0, err
	}
	w.fs.live[w.name] = append(w.fs.live[w.name], b...)
	return len(b), nil
}

func (w *faultFile) Sync() error {
	if err := w.fs.op("sync " + w.name); err != nil {
		return err
	}
	w.fs.durable[w.name] = bytes.Clone(w.fs.live[w.name])
	return nil
}

func (w *faultFile) Close() error { return nil }

// outcomes returns every state the medium may be in after the power cut:
// for each file whose live and durable views differ, the durable view, the
// live one, and the live one torn half way over the durable one or zeros.
func (f *faultFS) outcomes() []map[string][]byte {
	names := map[string]bool{}
	for n := range f.live {
		names[n] = true
	}
	for n := range f.durable {
		names[n] = true
	}
	states := []map[string][]byte{{}}
	for n := range names {
		live, liveOK := f.live[n]
		dur, durOK := f.durable[n]
		var variants [][]byte // nil means absent
		if durOK {
			variants = append(variants, dur)
		} else {
			variants = append(variants, nil)
		}
		if liveOK != durOK || !bytes.Equal(live, dur) {
			if liveOK {
				variants = append(variants, live)
				half := len(live) / 2
				over := append(bytes.Clone(live[:half]), make([]byte, len(live)-half)...)
				if durOK {
					copy(over[half:], dur[min(half, len(dur)):])
				}
				variants = append(variants, over, make([]byte, len(live)))
			} else {
				variants = append(variants, nil)
			}
		}
		var next []map[string][]byte
		for _, s := range states {
			for _, v := range variants {
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

// The power is cut after every operation of a replacement (each create,
// write, sync, directory sync and removal; Replace renames nothing), and
// every state the medium may then be in is checked: a whole key file of the
// old or the new generation always loads and opens, the new one always once
// it was durable, and an older generation is never taken over a newer one.
//
// This proves the protocol under the faultFS model; it does not prove that
// a given FAT driver or flash controller keeps the ordering the model
// assumes (that a completed fsync is on the medium).
func TestReplacePowerCut(t *testing.T) {
	ctx := context.Background()
	const path = "/esp/EFI/PBN/keys/alice.pbk"
	b, rk := newTestFile(t)

	// The old generation, written whole.
	setup := newFaultFS(nil)
	f, _ := Parse(b)
	if err := f.Open(ctx, Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	if err := Replace(setup, path, f); err != nil {
		t.Fatal(err)
	}
	oldGen := f.Header().Generation
	initial := setup.durable

	// The replacement: a new protector, written as the next generation.
	replace := func(fsys *faultFS) error {
		g, err := Load(fsys, path)
		if err != nil {
			return err
		}
		if err := g.Open(ctx, Recovery(rk)); err != nil {
			return err
		}
		if _, err := g.AddProtector(ctx, "second recovery key", Recovery(NewRecoveryKey())); err != nil {
			return err
		}
		return Replace(fsys, path, g)
	}

	dry := newFaultFS(initial)
	if err := replace(dry); err != nil {
		t.Fatal(err)
	}
	total := dry.ops
	// The first op after which the new generation is certainly durable: the
	// sync of the pending copy.
	durableAt := -1
	for i, op := range dry.trace {
		if op == "sync "+path+pendingExt {
			durableAt = i + 1
			break
		}
	}
	if durableAt < 0 {
		t.Fatalf("the replacement never synced %s: %v", path+pendingExt, dry.trace)
	}

	checked := 0
	for cut := 0; cut <= total; cut++ {
		fsys := newFaultFS(initial)
		fsys.cutAt = cut
		err := replace(fsys)
		if cut == total && err != nil {
			t.Fatalf("replacement without a power cut: %v", err)
		}
		for i, state := range fsys.outcomes() {
			after := newFaultFS(state)
			g, err := Load(after, path)
			if err != nil {
				t.Fatalf("cut after %d ops (%v), outcome %d: Load = %v", cut, fsys.trace, i, err)
			}
			gen := g.Header().Generation
			switch {
			case gen != oldGen && gen != oldGen+1:
				t.Fatalf("cut after %d ops, outcome %d: generation %d, want %d or %d", cut, i, gen, oldGen, oldGen+1)
			case cut >= durableAt && gen != oldGen+1:
				t.Fatalf("cut after %d ops (%v), outcome %d: generation %d loaded after %d was durable",
					cut, fsys.trace, i, gen, oldGen+1)
			}
			if err := g.Open(ctx, Recovery(rk)); err != nil {
				t.Fatalf("cut after %d ops, outcome %d: Open = %v", cut, i, err)
			}
			if wantProts := 2 + int(gen-oldGen); len(g.Protectors()) != wantProts {
				t.Fatalf("cut after %d ops, outcome %d: %d protectors, want %d", cut, i, len(g.Protectors()), wantProts)
			}
			checked++
		}
	}
	t.Logf("%d operations in a replacement, %d power-cut outcomes checked", total, checked)

	// After a whole replacement only the key file itself remains.
	names, _ := dry.ReadDir(filepath.Dir(path))
	if len(names) != 1 || names[0] != filepath.Base(path) {
		t.Errorf("after Replace the directory holds %v, want only %s", names, filepath.Base(path))
	}
}

// Replace refuses to put an older generation over a newer one, and Load
// takes the newest whole copy.
func TestGenerations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "k"+Ext)
	b, rk := newTestFile(t)
	f, _ := Parse(b)
	if err := f.Open(ctx, Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	if err := Replace(OSFS{}, path, f); err != nil {
		t.Fatal(err)
	}
	stale, _ := Load(OSFS{}, path)
	if err := stale.Open(ctx, Recovery(rk)); err != nil {
		t.Fatal(err)
	}
	for want := uint64(2); want <= 3; want++ {
		if err := Replace(OSFS{}, path, f); err != nil {
			t.Fatal(err)
		}
		if g := f.Header().Generation; g != want {
			t.Errorf("after Replace generation = %d, want %d", g, want)
		}
	}
	if err := Replace(OSFS{}, path, stale); !errors.Is(err, ErrStale) {
		t.Errorf("Replace of generation 1 over 3 = %v, want ErrStale", err)
	}

	// An older copy left beside the newer one is not taken.
	newer, _ := os.ReadFile(path)
	older, _ := stale.Marshal()
	for _, tc := range []struct{ main, pending []byte }{{newer, older}, {older, newer}} {
		os.WriteFile(path, tc.main, 0o600)
		os.WriteFile(path+pendingExt, tc.pending, 0o600)
		g, err := Load(OSFS{}, path)
		if err != nil || g.Header().Generation != 3 {
			t.Errorf("Load with generations 1 and 3 = %v, %v; want generation 3", g, err)
		}
	}
	paths, err := List(OSFS{}, dir)
	if err != nil || len(paths) != 1 || paths[0] != path {
		t.Errorf("List = %v, %v; want [%s]", paths, err, path)
	}
	if err := Remove(OSFS{}, path); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(OSFS{}, path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load after Remove = %v, want ErrNotExist", err)
	}
}

// A damaged key file with no whole copy says what is wrong with it.
func TestLoadDamaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k"+Ext)
	b, _ := newTestFile(t)
	os.WriteFile(path, b[:len(b)/2], 0o600)
	_, err := Load(OSFS{}, path)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
		t.Errorf("Load of a half file = %v, want ErrDamaged naming %s", err, path)
	}
}
