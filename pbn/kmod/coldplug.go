package kmod

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// Coldplug loads the modules for every device on a bus in sysfs and goes
// on while loading them brings new devices, within opts's bounds. A round
// is the modules found by one look at the tree; the tree is looked at again
// while the modules found before still load, so a device that one driver
// brings (virtio's network device, behind virtio_pci) has its own driver
// loading without waiting for slow ones of the same round. The modules of
// the CPU's features (ciphers and checksums, whose self-tests take seconds
// under emulation and which no device waits for) load last, once the
// devices' drivers have loaded and no new device came. It returns an
// error only when it cannot read the tree or ctx ends; modules that fail to
// load are in the report.
func (l *Loader) Coldplug(ctx context.Context, opts ColdplugOptions) (ColdplugReport, error) {
	opts = opts.withDefaults()
	var rep ColdplugReport
	seen := map[string]bool{}
	loads := newLoads(l, loadWorkers)
	var cpu []string
	for rep.Rounds < opts.MaxRounds {
		mods, cpuMods, err := l.newMatches(ctx, opts, seen, loads)
		if err != nil {
			loads.wait()
			return rep, err
		}
		cpu = append(cpu, cpuMods...)
		if len(mods) == 0 {
			break
		}
		rep.Rounds++
		rep.Modules = append(rep.Modules, mods...)
		loads.start(mods)
	}
	cpu = slices.DeleteFunc(cpu, l.tried)
	rep.Modules = append(rep.Modules, cpu...)
	loads.start(cpu)
	errs := loads.wait()
	slices.Sort(rep.Modules)
	rep.Modules = slices.Compact(rep.Modules)
	rep.Err = errors.Join(errs...)
	return rep, ctx.Err()
}

// loads are the loads a coldplug started, at most workers at a time.
type loads struct {
	l   *Loader
	sem chan struct{}
	wg  sync.WaitGroup

	mu       sync.Mutex
	inFlight int
	errs     []error
}

func newLoads(l *Loader, workers int) *loads {
	return &loads{l: l, sem: make(chan struct{}, workers)}
}

// start loads the modules in the background and returns at once; loads
// wait for a worker, roughly in the order given.
func (s *loads) start(names []string) {
	s.mu.Lock()
	s.inFlight += len(names)
	s.mu.Unlock()
	for _, n := range names {
		s.wg.Add(1)
		go func() {
			s.sem <- struct{}{}
			err := s.l.loadWithSoftdeps(n)
			<-s.sem
			s.mu.Lock()
			s.inFlight--
			if err != nil {
				s.errs = append(s.errs, err)
			}
			s.mu.Unlock()
			s.wg.Done()
		}()
	}
}

// busy reports whether a load has not ended yet.
func (s *loads) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight > 0
}

// wait waits for every load and returns the errors of those that failed.
func (s *loads) wait() []error {
	s.wg.Wait()
	return s.errs
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

// newMatches polls the tree for modaliases not seen before, while loads
// are busy and for opts.Settle after, and returns the modules not yet tried
// that match them: those of devices, and apart those of the CPU's
// features. It returns when it found a device's module or the tree
// settled.
// TODO: listening to the kernel's uevents (NETLINK_KOBJECT_UEVENT) would
// see a new device at once instead of at the next poll, spare the settle
// time at the end, and spare the polls while slow modules load (seconds of
// cipher self-tests under emulation), which take CPU from the steps that
// run beside the coldplug.
func (l *Loader) newMatches(ctx context.Context, opts ColdplugOptions, seen map[string]bool, loads *loads) ([]string, []string, error) {
	deadline := time.Now().Add(opts.Settle)
	var devs, cpu []string
	for {
		aliases, err := Modaliases(opts.Sysfs)
		if err != nil {
			return nil, nil, err
		}
		for _, a := range aliases {
			if seen[a] {
				continue
			}
			seen[a] = true
			for _, m := range l.index.Match(a) {
				switch {
				case l.tried(m):
				case strings.HasPrefix(a, "cpu:"):
					cpu = append(cpu, m)
				default:
					devs = append(devs, m)
				}
			}
		}
		slices.Sort(devs)
		slices.Sort(cpu)
		devs, cpu = slices.Compact(devs), slices.Compact(cpu)
		if len(devs) > 0 || time.Now().After(deadline) && !loads.busy() {
			return devs, cpu, nil
		}
		if loads.busy() {
			deadline = time.Now().Add(opts.Settle)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
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
