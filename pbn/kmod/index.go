// Package kmod loads the kernel modules that the hardware asks for, as a
// coldplug does: it reads every modalias under /sys/devices, matches them
// against the running kernel's modules.alias, and loads the matches with
// their dependencies from modules.dep and modules.softdep, with
// finit_module(2); the devices that those drivers bring come from the
// kernel's uevents. It also loads modules by name or alias for the
// kernel's own requests (the agent is the image's modprobe).
package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ErrUnknownModule is returned by [Index.Resolve] and [Loader.Load] for a
// name that is neither a module nor an alias of one.
var ErrUnknownModule = errors.New("no such module")

// Index is the module index of one kernel: the files that depmod writes
// into /lib/modules/<release>.
type Index struct {
	dir string
	// aliases are the patterns of modules.alias by their literal part up
	// to the first ':' (the bus, "pci", "usb", ...); the key "" holds those
	// without one.
	aliases map[string][]alias
	paths   map[string]string   // module name to path, relative to dir
	deps    map[string][]string // module name to the names it needs
	pre     map[string][]string // modules.softdep "pre:" names or aliases
	post    map[string][]string // modules.softdep "post:" names or aliases
	builtin map[string]bool
}

type alias struct {
	pattern, module string
}

// DefaultDir returns /lib/modules/<release> of the running kernel.
func DefaultDir() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	return filepath.Join("/lib/modules", strings.TrimSpace(string(b))), nil
}

// Open reads the module index in dir. modules.dep is required;
// modules.alias, modules.softdep and modules.builtin are read when present.
func Open(dir string) (*Index, error) {
	x := &Index{
		dir:     dir,
		aliases: map[string][]alias{},
		paths:   map[string]string{},
		deps:    map[string][]string{},
		pre:     map[string][]string{},
		post:    map[string][]string{},
		builtin: map[string]bool{},
	}
	files := []struct {
		name     string
		required bool
		parse    func(fields []string) error
	}{
		{"modules.dep", true, x.parseDep},
		{"modules.alias", false, x.parseAlias},
		{"modules.softdep", false, x.parseSoftdep},
		{"modules.builtin", false, x.parseBuiltin},
	}
	for _, f := range files {
		if err := readLines(filepath.Join(dir, f.name), f.required, f.parse); err != nil {
			return nil, err
		}
	}
	return x, nil
}

func readLines(path string, required bool, parse func([]string) error) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return nil
	}
	if err != nil {
		return fmt.Errorf("module index: %w", err)
	}
	return parseLines(string(b), path, parse)
}

// parseLines calls parse with the fields of each line that is not empty
// or a comment. The fields share the text's memory, and one slice holds
// them for every line, since the index has tens of thousands of lines.
func parseLines(text, path string, parse func([]string) error) error {
	fields := make([]string, 0, 64)
	for n := 1; text != ""; n++ {
		line, rest, _ := strings.Cut(text, "\n")
		text = rest
		if line == "" || line[0] == '#' {
			continue
		}
		fields = appendFields(fields[:0], line)
		if err := parse(fields); err != nil {
			return fmt.Errorf("module index: %s:%d: %w", path, n, err)
		}
	}
	return nil
}

func appendFields(fields []string, line string) []string {
	for {
		line = strings.TrimLeft(line, " \t")
		if line == "" {
			return fields
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return append(fields, line)
		}
		fields = append(fields, line[:i])
		line = line[i:]
	}
}

// Name returns the module name of a module file's path, as the kernel
// knows it: the base name without .ko and its compression suffix, with
// '-' written as '_'.
func Name(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return normalize(base)
}

func normalize(name string) string {
	if !strings.Contains(name, "-") {
		return name
	}
	return strings.ReplaceAll(name, "-", "_")
}

// parseDep reads "kernel/a.ko: kernel/b.ko kernel/c.ko".
func (x *Index) parseDep(f []string) error {
	if len(f) == 0 || !strings.HasSuffix(f[0], ":") {
		return errors.New("want <module>: <dependencies>")
	}
	path := strings.TrimSuffix(f[0], ":")
	name := Name(path)
	x.paths[name] = path
	if len(f) > 1 {
		deps := make([]string, len(f)-1)
		for i, d := range f[1:] {
			deps[i] = Name(d)
		}
		x.deps[name] = deps
	}
	return nil
}

// parseAlias reads "alias <pattern> <module>".
func (x *Index) parseAlias(f []string) error {
	if len(f) != 3 || f[0] != "alias" {
		return errors.New("want alias <pattern> <module>")
	}
	x.aliases[bus(f[1])] = append(x.aliases[bus(f[1])], alias{pattern: f[1], module: normalize(f[2])})
	return nil
}

// bus returns the literal part of a modalias or pattern before its first
// ':', or "" when there is none (or it has a wildcard).
func bus(s string) string {
	b, _, ok := strings.Cut(s, ":")
	if !ok || strings.ContainsAny(b, "*?[") {
		return ""
	}
	return b
}

// parseSoftdep reads "softdep <module> pre: <names> post: <names>". Names
// before either keyword, which depmod writes for some modules, count as
// "pre:".
func (x *Index) parseSoftdep(f []string) error {
	if len(f) < 2 || f[0] != "softdep" {
		return errors.New("want softdep <module> pre: ... post: ...")
	}
	name := normalize(f[1])
	list := x.pre
	for _, w := range f[2:] {
		switch w {
		case "pre:":
			list = x.pre
		case "post:":
			list = x.post
		default:
			list[name] = append(list[name], w)
		}
	}
	return nil
}

func (x *Index) parseBuiltin(f []string) error {
	if len(f) != 1 {
		return errors.New("want one module path")
	}
	x.builtin[Name(f[0])] = true
	return nil
}

// Match returns the modules whose modules.alias patterns match a device's
// modalias, sorted and without repeats.
func (x *Index) Match(modalias string) []string {
	var mods []string
	for _, key := range []string{bus(modalias), ""} {
		for _, a := range x.aliases[key] {
			if match(a.pattern, modalias) {
				mods = append(mods, a.module)
			}
		}
		if key == "" {
			break
		}
	}
	slices.Sort(mods)
	return slices.Compact(mods)
}

// Resolve returns the modules a name stands for: the module of that name,
// or those an alias of it matches ("fs-ext4", "crypto-xts"), or nil for a
// module built into the kernel. It returns ErrUnknownModule for anything
// else.
func (x *Index) Resolve(name string) ([]string, error) {
	n := normalize(name)
	if x.builtin[n] {
		return nil, nil
	}
	if _, ok := x.paths[n]; ok {
		return []string{n}, nil
	}
	if mods := x.Match(name); len(mods) > 0 {
		return mods, nil
	}
	return nil, fmt.Errorf("module %q: %w", name, ErrUnknownModule)
}

// Path returns the file of a module.
func (x *Index) Path(name string) (string, bool) {
	p, ok := x.paths[name]
	return filepath.Join(x.dir, p), ok
}

// Builtin reports whether a module is built into the kernel.
func (x *Index) Builtin(name string) bool { return x.builtin[name] }
