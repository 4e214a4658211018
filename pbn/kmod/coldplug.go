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
	// MaxRounds bounds the rounds of loading, in each pass (see First);
	// default DefaultMaxRounds.
	MaxRounds int
	// First, when set, picks the devices whose modules load before any
	// other device's: a first pass loads only theirs, round after round
	// while their loading brings devices that First picks too, until the
	// tree settles; a second pass loads the rest. [Network] picks the
	// network controllers, so that no other driver's loading delays the
	// first link.
	First func(modalias string) bool
}

// ColdplugReport says what a coldplug did.
type ColdplugReport struct {
	// Modules are the modules that matched a device, sorted.
	Modules []string
	// Rounds is how many rounds of loading there were, in all passes.
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
// devices' drivers have loaded and no new device came. With opts.First,
// the devices it picks have theirs loaded in a pass of their own before
// the others (see [ColdplugOptions.First]). It returns an error only when
// it cannot read the tree or ctx ends; modules that fail to load are in
// the report.
func (l *Loader) Coldplug(ctx context.Context, opts ColdplugOptions) (ColdplugReport, error) {
	opts = opts.withDefaults()
	var rep ColdplugReport
	loads := newLoads(l, loadWorkers)
	var err error
	if opts.First != nil {
		_, err = l.pass(ctx, opts, opts.First, loads, &rep)
	}
	var cpu []string
	if err == nil {
		cpu, err = l.pass(ctx, opts, nil, loads, &rep)
	}
	if err != nil {
		loads.wait()
		return rep, err
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

// pass loads the modules of the devices that pick picks (every device
// when pick is nil), in rounds, and adds them to rep. It returns the CPU's
// modules that it found and did not load.
func (l *Loader) pass(ctx context.Context, opts ColdplugOptions, pick func(string) bool,
	loads *loads, rep *ColdplugReport) ([]string, error) {
	seen := map[string]bool{}
	var cpu []string
	for range opts.MaxRounds {
		mods, cpuMods, err := l.newMatches(ctx, opts, pick, seen, loads)
		if err != nil {
			return nil, err
		}
		cpu = append(cpu, cpuMods...)
		if len(mods) == 0 {
			break
		}
		rep.Rounds++
		rep.Modules = append(rep.Modules, mods...)
		loads.start(mods)
	}
	return cpu, nil
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

// newMatches polls the tree for modaliases not seen before that pick
// picks (all when pick is nil), while loads are busy and for opts.Settle
// after, and returns the modules not yet tried that match them: those of
// devices, and apart those of the CPU's features. It returns when it found
// a device's module or the tree settled.
// TODO: listening to the kernel's uevents (NETLINK_KOBJECT_UEVENT) would
// see a new device at once instead of at the next poll, spare the settle
// time at the end, and spare the polls while slow modules load (seconds of
// cipher self-tests under emulation), which take CPU from the steps that
// run beside the coldplug.
func (l *Loader) newMatches(ctx context.Context, opts ColdplugOptions, pick func(string) bool,
	seen map[string]bool, loads *loads) ([]string, []string, error) {
	deadline := time.Now().Add(opts.Settle)
	var devs, cpu []string
	for {
		aliases, err := Modaliases(opts.Sysfs)
		if err != nil {
			return nil, nil, err
		}
		for _, a := range aliases {
			if seen[a] || pick != nil && !pick(a) {
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

// Network reports whether a modalias is a network controller's: a PCI
// function of base class 02h, "network controller" (PCI Code and ID
// Assignment Specification, section 1.3), or a virtio network device
// (virtio 1.2, section 5, device ID 1). The kernel writes a PCI modalias
// as pci:v<vendor>d<device>sv<subvendor>sd<subdevice>bc<class>sc<subclass>i<interface>,
// in upper-case hexadecimal, so "bc" is only ever the class's tag.
// Network cards on USB are not recognised: their modaliases name the
// vendor's own interface class.
func Network(modalias string) bool {
	if rest, ok := strings.CutPrefix(modalias, "pci:"); ok {
		_, class, ok := strings.Cut(rest, "bc")
		return ok && strings.HasPrefix(class, "02")
	}
	return strings.HasPrefix(modalias, "virtio:d00000001v")
}
