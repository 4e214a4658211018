package kmod

import (
	"context"
	"errors"
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
	// Sysfs is where sysfs is mounted; default /sys.
	Sysfs string
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

// Coldplug loads the modules for every device on a bus in sysfs and
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
	if o.Sysfs == "" {
		o.Sysfs = "/sys"
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
// TODO: listening to the kernel's uevents (NETLINK_KOBJECT_UEVENT) would
// see a new device at once instead of at the next poll, and spare the
// settle time at the end.
func (l *Loader) newMatches(ctx context.Context, opts ColdplugOptions, seen map[string]bool) ([]string, error) {
	deadline := time.Now().Add(opts.Settle)
	for {
		aliases, err := Modaliases(opts.Sysfs)
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

// Modaliases returns the modalias of every device on a bus under a sysfs
// root (/sys/bus/*/devices/*/modalias) and the CPU's, whose features ask
// for modules such as aesni_intel (/sys/devices/system/cpu/modalias),
// sorted and without repeats. That is what a walk of /sys/devices finds, in
// a fraction of the time.
func Modaliases(sys string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(sys, "bus", "*", "devices", "*", "modalias"))
	if err != nil {
		return nil, err
	}
	paths = append(paths, filepath.Join(sys, "devices", "system", "cpu", "modalias"))
	var aliases []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a device gone, or one whose modalias cannot be read
		}
		if a := strings.TrimSpace(string(b)); a != "" {
			aliases = append(aliases, a)
		}
	}
	slices.Sort(aliases)
	return slices.Compact(aliases), nil
}
