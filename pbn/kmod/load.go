package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// maxInserts bounds the modules that a Loader puts into the kernel at a
// time: more than the few CPUs of a laptop only share them.
const maxInserts = 4

// moduleInitCompressedFile is finit_module(2)'s flag that asks the kernel
// to decompress the module itself (Linux 5.17, CONFIG_MODULE_DECOMPRESS).
const moduleInitCompressedFile = 4

// Loader loads modules of an Index into the running kernel, each module at
// most once, its dependencies first. Its methods are safe for concurrent
// use.
type Loader struct {
	index *Index
	log   *slog.Logger
	// insert puts one module file into the kernel; tests replace it, since
	// they must not load modules into the host's kernel.
	insert func(path string) error
	// inserts bounds the inserts at a time: the kernel loads modules side
	// by side, but each costs CPU (its signature's hash, its relocations).
	inserts chan struct{}

	mu    sync.Mutex
	state map[string]*loadState
}

type loadState struct {
	done chan struct{}
	err  error
}

// NewLoader returns a Loader for the index; log may be nil.
func NewLoader(x *Index, log *slog.Logger) *Loader {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loader{index: x, log: log, insert: insertModule, inserts: make(chan struct{}, maxInserts),
		state: map[string]*loadState{}}
}

// Load loads the modules that name stands for (see [Index.Resolve]) with
// their dependencies and soft dependencies. A module already in the kernel
// is not an error. It returns ErrUnknownModule for a name it cannot
// resolve.
func (l *Loader) Load(name string) error {
	mods, err := l.index.Resolve(name)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mods {
		errs = append(errs, l.loadWithSoftdeps(m))
	}
	return errors.Join(errs...)
}

// Loaded returns the modules that this Loader has put into the kernel, or
// found there already, in no particular order.
func (l *Loader) Loaded() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for name, s := range l.state {
		select {
		case <-s.done:
			if s.err == nil {
				names = append(names, name)
			}
		default:
		}
	}
	return names
}

// loadWithSoftdeps loads a module with the "pre:" soft dependencies before
// it and the "post:" ones after it, as modprobe does. A soft dependency
// that fails to load is logged and skipped; so is one that names an alias
// no module of this kernel has. Soft dependencies' own soft dependencies
// are not followed, which rules out cycles.
func (l *Loader) loadWithSoftdeps(name string) error {
	l.softdeps(name, l.index.pre[name])
	if err := l.load(name); err != nil {
		return err
	}
	l.softdeps(name, l.index.post[name])
	return nil
}

func (l *Loader) softdeps(of string, names []string) {
	for _, sd := range names {
		mods, err := l.index.Resolve(sd)
		for _, m := range mods {
			err = errors.Join(err, l.load(m))
		}
		if err != nil {
			l.log.Debug("soft dependency not loaded", "module", of, "softdep", sd, "err", err)
		}
	}
}

// load loads one module after its dependencies from modules.dep, which
// has no cycles. Concurrent calls for one module wait for the first.
func (l *Loader) load(name string) error {
	l.mu.Lock()
	s, ok := l.state[name]
	if ok {
		l.mu.Unlock()
		<-s.done
		return s.err
	}
	s = &loadState{done: make(chan struct{})}
	l.state[name] = s
	l.mu.Unlock()

	s.err = l.loadUncached(name)
	close(s.done)
	return s.err
}

func (l *Loader) loadUncached(name string) error {
	if l.index.Builtin(name) {
		return nil
	}
	path, ok := l.index.Path(name)
	if !ok {
		return fmt.Errorf("module %q: %w", name, ErrUnknownModule)
	}
	if err := l.loadDeps(l.index.deps[name]); err != nil {
		return fmt.Errorf("module %s: dependency: %w", name, err)
	}
	l.inserts <- struct{}{}
	start := time.Now()
	err := l.insert(path)
	took := time.Since(start)
	<-l.inserts
	if err != nil {
		return fmt.Errorf("module %s: %w", name, err)
	}
	l.log.Debug("module loaded", "module", name, "took", took)
	return nil
}

// loadDeps loads a module's dependencies at once, a goroutine each: every
// one waits for its own dependencies (modules.dep lists them all, and has
// no cycles), so that chains that do not meet load side by side.
func (l *Loader) loadDeps(deps []string) error {
	errs := make([]error, len(deps))
	var wg sync.WaitGroup
	for i, d := range deps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.load(d)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// insertModule puts the module file at path into the kernel with
// finit_module(2). A compressed module is handed to the kernel to
// decompress; when the kernel cannot, a .ko.xz or .ko.zst is decompressed
// here (a .ko.gz only loads where the kernel decompresses it).
func insertModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()

	compressed := !strings.HasSuffix(path, ".ko")
	flags := 0
	if compressed {
		flags = moduleInitCompressedFile
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if compressed && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
		err = initDecompressed(f, path)
	}
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

func initDecompressed(f *os.File, path string) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".ko.zst"):
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return fmt.Errorf("decompress %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	default:
		return fmt.Errorf("%s: unsupported module compression", path)
	}
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return fmt.Errorf("decompress %s: %w", path, err)
	}
	return unix.InitModule(b.Bytes(), "")
}
