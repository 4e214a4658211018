package keyfile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/internal/faultfs"
)

// faultFS adapts the power-cut model of package faultfs to FS.
type faultFS struct{ *faultfs.FS }

func newFaultFS(durable map[string][]byte) faultFS { return faultFS{faultfs.New(durable)} }

func (f faultFS) Create(name string) (File, error) {
	w, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return w, nil
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
	initial := setup.Durable()

	// The replacement: a new protector, written as the next generation.
	replace := func(fsys faultFS) error {
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
	total := dry.Ops
	// The first op after which the new generation is certainly durable: the
	// sync of the pending copy.
	durableAt := -1
	for i, op := range dry.Trace {
		if op == "sync "+path+pendingExt {
			durableAt = i + 1
			break
		}
	}
	if durableAt < 0 {
		t.Fatalf("the replacement never synced %s: %v", path+pendingExt, dry.Trace)
	}

	checked := 0
	for cut := 0; cut <= total; cut++ {
		fsys := newFaultFS(initial)
		fsys.CutAt = cut
		err := replace(fsys)
		if cut == total && err != nil {
			t.Fatalf("replacement without a power cut: %v", err)
		}
		for i, state := range fsys.Outcomes() {
			after := newFaultFS(state)
			g, err := Load(after, path)
			if err != nil {
				t.Fatalf("cut after %d ops (%v), outcome %d: Load = %v", cut, fsys.Trace, i, err)
			}
			gen := g.Header().Generation
			switch {
			case gen != oldGen && gen != oldGen+1:
				t.Fatalf("cut after %d ops, outcome %d: generation %d, want %d or %d", cut, i, gen, oldGen, oldGen+1)
			case cut >= durableAt && gen != oldGen+1:
				t.Fatalf("cut after %d ops (%v), outcome %d: generation %d loaded after %d was durable",
					cut, fsys.Trace, i, gen, oldGen+1)
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
