// Package initramfs builds PBN's pre-boot image: a compressed newc cpio
// archive that the kernel unpacks as its initial root file system.
//
// The image holds the agent (cmds/pbn) as /init, built with u-root's
// busybox-style builder (github.com/u-root/mkuimage) together with any u-root
// commands asked for; the kernel modules a laptop needs to reach its network
// and disk, with their dependencies and the depmod index a coldplug loads
// them by; cryptsetup and mkfs.vfat with their shared libraries and the
// dynamic loader; and
// the agent's configuration, pinned CA and keys as plain files.
//
// The build is reproducible: entries are sorted, owned by root, dated at the
// epoch, and the Go code is built with -trimpath, so the same inputs give
// the same bytes.
package initramfs

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/ldd"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/mkuimage/uimage/builder"
	"github.com/u-root/mkuimage/uimage/initramfs"
	"github.com/u-root/uio/llog"
)

// AgentPackage is the Go package of the agent, PID 1 in the image.
const AgentPackage = "github.com/pbn-project/pbn/cmds/pbn"

// Paths inside the image that the agent relies on.
const (
	CryptsetupPath = "sbin/cryptsetup" // cryptsetup(8)
	MkfsVFATPath   = "sbin/mkfs.vfat"  // mkfs.fat(8), for the imaging mode's ESP
	ConfigDir      = "etc/pbn"         // the configuration, pinned CA and keys
)

// BuildTag is the Go build tag of the commands in the image: packages
// leave out what the pre-boot agent never runs (pbn/store its database
// drivers).
const BuildTag = "pbnimage"

// DefaultCryptsetup is where Debian's cryptsetup-bin installs cryptsetup.
const DefaultCryptsetup = "/usr/sbin/cryptsetup"

// DefaultMkfsVFAT is where Debian's dosfstools installs mkfs.fat. The
// imaging mode formats the ESP with it: a FAT writer of PBN's own would be
// more code to trust than this 64 KiB program, which needs only the C
// library that cryptsetup brings.
const DefaultMkfsVFAT = "/usr/sbin/mkfs.fat"

// File is a host file to put into the image.
type File struct {
	Src string // path on the host
	Dst string // path in the image, relative: etc/pbn/ca.pem
}

// Config says what goes into an image. Its zero value builds the agent for
// the newest installed kernel with DefaultModules and cryptsetup,
// compressed with zstd.
type Config struct {
	// Kernel is the release whose modules the image carries; empty means
	// the newest installed (FindKernel).
	Kernel string
	// Modules are the kernel modules to include with their dependencies;
	// nil means DefaultModules.
	Modules []string
	// Agent is the Go package that becomes /init; empty means
	// AgentPackage.
	Agent string
	// Commands are further Go commands (u-root's, say
	// github.com/u-root/u-root/cmds/core/ls) built into the same busybox.
	Commands []string
	// Dir is the Go module directory the commands are built in; empty means
	// the current directory.
	Dir string
	// Cryptsetup is the host's cryptsetup binary; empty means
	// DefaultCryptsetup. Its shared libraries are found with ldd.
	Cryptsetup string
	// MkfsVFAT is the host's mkfs.fat; empty means DefaultMkfsVFAT.
	MkfsVFAT string
	// Files are the configuration, the pinned CA and keys.
	Files []File
	// Compression defaults to Zstd.
	Compression Compression
	// Log receives the builder's progress; nil discards it.
	Log *slog.Logger
}

// Part is one kind of content in an image, for the size report.
type Part string

// The parts of an image.
const (
	PartGo        Part = "go"        // the busybox of Go commands
	PartModules   Part = "modules"   // kernel modules and their index
	PartPrograms  Part = "programs"  // cryptsetup, mkfs.vfat
	PartLibraries Part = "libraries" // shared libraries and the dynamic loader
	PartConfig    Part = "config"    // configuration, CA and keys
	PartOther     Part = "other"     // directories, device nodes, symlinks
)

// Parts lists the parts in report order.
var Parts = []Part{PartGo, PartModules, PartPrograms, PartLibraries, PartConfig, PartOther}

// PartSize is the size of one part: uncompressed, and compressed on its own
// with the image's compression (the parts compressed together come out a
// little smaller than the sum).
type PartSize struct {
	Part         Part
	Files        int
	Size         int64
	Compressed   int64
	LargestFile  string
	LargestBytes int64
}

// Report is what Build made.
type Report struct {
	Kernel       Kernel
	Compression  Compression
	Size         int64 // the uncompressed archive
	Compressed   int64 // the image
	Parts        []PartSize
	Modules      []string // names of the modules included, sorted
	Dependencies int      // modules pulled in by dependencies
}

// Build builds the image cfg describes and writes it, compressed, to w.
//
// The errors are plain wrapped errors: a missing kernel wraps ErrNoKernel.
func Build(ctx context.Context, cfg Config, w io.Writer) (*Report, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Compression != "" && !slices.Contains(Compressions, cfg.Compression) {
		return nil, fmt.Errorf("building the image: unknown compression %q", cfg.Compression)
	}
	k, err := FindKernel(cfg.Kernel)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "pbn-image-")
	if err != nil {
		return nil, fmt.Errorf("building the image: %w", err)
	}
	defer os.RemoveAll(tmp)

	files, rep, err := collect(cfg, k)
	if err != nil {
		return nil, err
	}
	log.Info("building the image", "kernel", k.Version, "modules", len(rep.Modules))
	archive, err := assemble(ctx, cfg, files, tmp, log)
	if err != nil {
		return nil, err
	}
	rep.Compression = cfg.Compression
	if rep.Compression == "" {
		rep.Compression = Zstd
	}
	if err := rep.measure(archive); err != nil {
		return nil, err
	}
	img, err := rep.Compression.compress(archive)
	if err != nil {
		return nil, err
	}
	rep.Compressed = int64(len(img))
	if _, err := w.Write(img); err != nil {
		return nil, fmt.Errorf("writing the image: %w", err)
	}
	return rep, nil
}

// contents are the host files and generated records of an image.
type contents struct {
	files   []string // "host:image" pairs, as mkuimage takes them
	records []cpio.Record
}

// collect gathers everything but the Go commands: modules, cryptsetup and
// its libraries, the configuration, and the directories an init needs.
func collect(cfg Config, k Kernel) (*contents, *Report, error) {
	c := &contents{records: baseRecords()}
	rep := &Report{Kernel: k}

	names := cfg.Modules
	if names == nil {
		names = DefaultModules
	}
	idx, err := readModuleIndex(k.Modules)
	if err != nil {
		return nil, nil, err
	}
	mods, err := idx.closure(names)
	if err != nil {
		return nil, nil, err
	}
	modDir := path.Join("lib/modules", k.Version)
	for _, m := range mods {
		c.files = append(c.files, filepath.Join(k.Modules, m)+":"+path.Join(modDir, m))
		rep.Modules = append(rep.Modules, moduleName(m))
	}
	rep.Dependencies = len(mods) - countIn(names, rep.Modules)
	index, err := indexFiles(k.Modules, mods)
	if err != nil {
		return nil, nil, err
	}
	for name, b := range index {
		c.records = append(c.records, cpio.StaticFile(path.Join(modDir, name), string(b), 0o644))
	}

	programs := map[string]string{
		CryptsetupPath: cmp.Or(cfg.Cryptsetup, DefaultCryptsetup),
		MkfsVFATPath:   cmp.Or(cfg.MkfsVFAT, DefaultMkfsVFAT),
	}
	libs := map[string]bool{}
	for _, dst := range slices.Sorted(maps.Keys(programs)) {
		src := programs[dst]
		l, err := ldd.FList(src)
		if err != nil {
			return nil, nil, fmt.Errorf("finding the libraries of %s: %w", src, err)
		}
		c.files = append(c.files, src+":"+dst)
		for _, lib := range l {
			libs[lib] = true
		}
	}
	for _, lib := range slices.Sorted(maps.Keys(libs)) {
		c.files = append(c.files, lib+":"+strings.TrimPrefix(lib, "/"))
	}

	for _, f := range cfg.Files {
		dst := path.Clean(strings.TrimPrefix(f.Dst, "/"))
		if !filepath.IsLocal(dst) || strings.Contains(f.Src, ":") || strings.Contains(dst, ":") {
			return nil, nil, fmt.Errorf("adding %s to the image as %s: bad path", f.Src, f.Dst)
		}
		c.files = append(c.files, f.Src+":"+dst)
	}
	return c, rep, nil
}

// countIn counts the names of want that are in have.
func countIn(want, have []string) int {
	in := map[string]bool{}
	for _, h := range have {
		in[h] = true
	}
	n := 0
	for _, w := range want {
		if in[strings.ReplaceAll(w, "-", "_")] {
			n++
		}
	}
	return n
}

// baseRecords are the directories and device nodes an init needs before it
// mounts devtmpfs: the kernel opens /dev/console for PID 1's stdio.
func baseRecords() []cpio.Record {
	return []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("run", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("mnt", 0o755),
		cpio.Directory(ConfigDir, 0o755),
	}
}

// assemble builds the Go commands and writes the whole archive with
// mkuimage, returning the uncompressed cpio.
func assemble(ctx context.Context, cfg Config, c *contents, tmp string, log *slog.Logger) ([]byte, error) {
	agent := cfg.Agent
	if agent == "" {
		agent = AgentPackage
	}
	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"),
		golang.WithWorkingDir(cfg.Dir), golang.WithBuildTag(BuildTag))
	base, err := cpio.ArchiveFromRecords(c.records)
	if err != nil {
		return nil, fmt.Errorf("building the image: %w", err)
	}
	out := filepath.Join(tmp, "image.cpio")
	// TODO: gobusybox's go command always passes -a (its builders share
	// Environ.build), so every image build compiles the standard library
	// and every dependency again: about 1.5 minutes on a quiet 2-core
	// machine and 4-7 under load, several times in `make test`. Building
	// with the go command's cache would take seconds after the first.
	opts := uimage.Opts{
		Env: env,
		Commands: []uimage.Commands{{
			Builder:   &builder.GBBBuilder{},
			Packages:  append([]string{agent}, cfg.Commands...),
			BuildOpts: &golang.BuildOpts{},
		}},
		TempDir:     tmp,
		ExtraFiles:  c.files,
		SkipLDD:     true, // collect already added cryptsetup's libraries
		OutputFile:  &initramfs.CPIOFile{Path: out},
		BaseArchive: &initramfs.Archive{Archive: base},
		InitCmd:     path.Base(agent),
	}
	// TODO: mkuimage runs the go tool without a context, so a cancelled
	// build still runs its compile to the end; only the start is checked.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("building the image: %w", err)
	}
	var msgs bytes.Buffer
	l := llog.New(slog.LevelWarn, func(format string, args ...any) {
		fmt.Fprintf(&msgs, format+"\n", args...)
	})
	if err := opts.Create(l); err != nil {
		return nil, fmt.Errorf("building the image: %w", errors.Join(err, errors.New(strings.TrimSpace(msgs.String()))))
	}
	if msgs.Len() > 0 {
		log.Warn("mkuimage", "output", strings.TrimSpace(msgs.String()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("building the image: %w", err)
	}
	return b, nil
}
