package kmod

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The defaults of [ColdplugOptions].
const (
	DefaultSettle    = 50 * time.Millisecond
	DefaultMaxRounds = 8
	settlePoll       = 10 * time.Millisecond
	loadWorkers      = 4
)

// ColdplugOptions bound a coldplug.
type ColdplugOptions struct {
	// SysDevices is the sysfs device tree to read; default /sys/devices.
	SysDevices string
	// Settle is how long to wait for new devices after the last module
	// loaded (drivers that probe asynchronously, USB hubs); default
	// DefaultSettle.
	Settle time.Duration
	// MaxRounds bounds the rounds of loading; default DefaultMaxRounds.
	MaxRounds int
}

// ColdplugReport says what a coldplug did.
type ColdplugReport struct {
	// Modules are the modules that matched a device, sorted.
	Modules []string
	// Rounds is how many rounds of loading there were.
	Rounds int
	// Err joins the modules that failed to load; a driver whose hardware
	// is absent or refuses it does not stop the boot.
	Err error
}

// Coldplug loads the modules for every device in the sysfs tree and
// repeats while loading them brings new devices, within opts's bounds. It
// returns an error only when it cannot read the tree or ctx ends; modules
// that fail to load are in the report.
func (l *Loader) Coldplug(ctx context.Context, opts ColdplugOptions) (ColdplugReport, error) {
	opts = opts.withDefaults()
	var rep ColdplugReport
	seen := map[string]bool{}
	var errs []error
	for rep.Rounds < opts.MaxRounds {
		mods, err := l.newMatches(ctx, opts, seen)
		if err != nil {
			return rep, err
		}
		if len(mods) == 0 {
			break
		}
		rep.Rounds++
		rep.Modules = append(rep.Modules, mods...)
		errs = append(errs, l.loadAll(ctx, mods, loadWorkers)...)
	}
	slices.Sort(rep.Modules)
	rep.Modules = slices.Compact(rep.Modules)
	rep.Err = errors.Join(errs...)
	return rep, ctx.Err()
}

func (o ColdplugOptions) withDefaults() ColdplugOptions {
	if o.SysDevices == "" {
		o.SysDevices = "/sys/devices"
	}
	if o.Settle == 0 {
		o.Settle = DefaultSettle
	}
	if o.MaxRounds == 0 {
		o.MaxRounds = DefaultMaxRounds
	}
	return o
}

// newMatches polls the tree for modaliases not seen before, for up to
// opts.Settle, and returns the modules not yet tried that match them.
func (l *Loader) newMatches(ctx context.Context, opts ColdplugOptions, seen map[string]bool) ([]string, error) {
	deadline := time.Now().Add(opts.Settle)
	for {
		aliases, err := Modaliases(opts.SysDevices)
		if err != nil {
			return nil, err
		}
		var mods []string
		for _, a := range aliases {
			if seen[a] {
				continue
			}
			seen[a] = true
			for _, m := range l.index.Match(a) {
				if !l.tried(m) {
					mods = append(mods, m)
				}
			}
		}
		slices.Sort(mods)
		if mods = slices.Compact(mods); len(mods) > 0 || time.Now().After(deadline) {
			return mods, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(settlePoll):
		}
	}
}

func (l *Loader) tried(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.state[name]
	return ok
}

// Modaliases returns the modalias of every device under a sysfs device
// tree, sorted and without repeats.
func Modaliases(sysDevices string) ([]string, error) {
	var aliases []string
	err := filepath.WalkDir(sysDevices, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// Devices come and go while the tree is read.
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		if d.Name() != "modalias" || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil // a device gone, or one whose modalias cannot be read
		}
		if a := strings.TrimSpace(string(b)); a != "" {
			aliases = append(aliases, a)
		}
		return nil
	})
	slices.Sort(aliases)
	return slices.Compact(aliases), err
}
