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
	// Added tells of the devices that come after the coldplug started,
	// those that the drivers it loads bring (virtio's network device,
	// behind virtio_pci): the channel of [Uevents.Modaliases]. Without it,
	// or once it is closed, a pass looks at the tree again each time its
	// loads have ended.
	Added <-chan string
	// Settle is how long a pass waits for new devices after its last
	// module loaded (drivers that probe asynchronously, USB hubs);
	// default DefaultSettle.
	Settle time.Duration
	// MaxRounds bounds the rounds of loading, in each pass (see First);
	// default DefaultMaxRounds.
	MaxRounds int
	// First, when set, picks the devices whose modules load before any
	// other device's: a first pass loads only theirs, round after round
	// while their loading brings devices of the class too, until the tree
	// settles; a second pass loads the rest. [Network] picks the network
	// controllers, so that no other driver's loading delays the first
	// link.
	First *Class
}

// A Class is a kind of device, told by its modalias.
type Class struct {
	// Buses are the buses (under /sys/bus) whose devices can be of the
	// class; a pass of the class looks at these alone.
	Buses []string
	// Has reports whether a device of one of those buses is of the class.
	Has func(modalias string) bool
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
// on while loading them brings new devices, within opts's bounds. A pass
// looks at the tree once and loads the matches; a round is each set of
// modules started together. The devices that those drivers bring are
// loaded for as they come, from opts.Added, without waiting for the slow
// modules of the same round. With opts.First, the devices of that class
// have theirs loaded in a pass of their own before the others (see
// [ColdplugOptions.First]). The modules of the CPU's features (ciphers and
// checksums, whose self-tests take seconds under emulation) start with
// the pass of every device, beside it: no device waits for them, so a pass
// settles without them, and the coldplug ends once they have loaded too.
// It returns an error only when it cannot read the tree or ctx ends;
// modules that fail to load are in the report.
func (l *Loader) Coldplug(ctx context.Context, opts ColdplugOptions) (ColdplugReport, error) {
	opts = opts.withDefaults()
	var rep ColdplugReport
	devices, cpu := newLoads(l, loadWorkers), newLoads(l, loadWorkers)
	var err error
	if opts.First != nil {
		err = l.pass(ctx, opts, opts.First, devices, cpu, &rep)
	}
	if err == nil {
		err = l.pass(ctx, opts, nil, devices, cpu, &rep)
	}
	errs := append(devices.wait(), cpu.wait()...)
	if err != nil {
		return rep, err
	}
	slices.Sort(rep.Modules)
	rep.Modules = slices.Compact(rep.Modules)
	rep.Err = errors.Join(errs...)
	return rep, ctx.Err()
}

// pass loads the modules of the devices of class c (every device when c
// is nil), in rounds, and adds them to rep; the CPU's modules that it
// finds load on cpu, which it does not wait for.
func (l *Loader) pass(ctx context.Context, opts ColdplugOptions, c *Class,
	devices, cpu *loads, rep *ColdplugReport) error {
	w := &watch{opts: opts, added: opts.Added, loads: devices}
	if c != nil {
		w.buses = c.Buses
	}
	seen := map[string]bool{}
	rounds := 0
	for aliases, err := w.look(); ; aliases, err = w.next(ctx) {
		if err != nil || aliases == nil {
			return err
		}
		devs, cpuMods := l.matches(aliases, c, seen)
		rep.Modules = append(rep.Modules, cpuMods...)
		cpu.start(cpuMods)
		if len(devs) == 0 {
			continue
		}
		if rounds == opts.MaxRounds {
			return nil
		}
		rounds++
		rep.Rounds++
		rep.Modules = append(rep.Modules, devs...)
		devices.start(devs)
		w.looked = false
	}
}

// A watch is how a pass learns of devices that may be new.
type watch struct {
	opts  ColdplugOptions
	buses []string
	added <-chan string // nil once closed
	loads *loads
	// looked is set when the tree was looked at since the last loads
	// started.
	looked bool
}

func (w *watch) look() ([]string, error) {
	w.looked = true
	return Modaliases(w.opts.Sysfs, w.buses...)
}

// next waits for devices that may be new: those that opts.Added tells of,
// or without it (or once it is closed) those of another look at the tree
// once the loads have ended. It returns nil when the loads have ended and
// no device came for opts.Settle.
func (w *watch) next(ctx context.Context) ([]string, error) {
	tick := time.NewTicker(settlePoll)
	defer tick.Stop()
	var idle time.Time
	for {
		select {
		case a, ok := <-w.added:
			if !ok {
				w.added = nil
				continue
			}
			return append([]string{a}, drain(w.added)...), nil
		case <-tick.C:
			switch {
			case w.loads.busy():
				idle = time.Time{}
			case idle.IsZero():
				idle = time.Now()
			case w.added == nil && !w.looked:
				return w.look()
			case time.Since(idle) >= w.opts.Settle:
				return nil, nil
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// drain returns what is queued on c without waiting.
func drain(c <-chan string) []string {
	var got []string
	for {
		select {
		case a, ok := <-c:
			if !ok {
				return got
			}
			got = append(got, a)
		default:
			return got
		}
	}
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

// matches returns the modules not yet tried that match the modaliases not
// seen before that are of class c (all when c is nil): those of devices,
// and apart those of the CPU's features.
func (l *Loader) matches(aliases []string, c *Class, seen map[string]bool) (devs, cpu []string) {
	for _, a := range aliases {
		if seen[a] || c != nil && !c.Has(a) {
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
	return slices.Compact(devs), slices.Compact(cpu)
}

func (l *Loader) tried(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.state[name]
	return ok
}

// Modaliases returns the modalias of every device on the named buses
// (/sys/bus/<bus>/devices/*/modalias), sorted and without repeats. With no
// bus named it looks at every bus and adds the CPU's modalias, whose
// features ask for modules such as aesni_intel
// (/sys/devices/system/cpu/modalias): that is what a walk of /sys/devices
// finds, in a fraction of the time.
func Modaliases(sys string, buses ...string) ([]string, error) {
	var paths []string
	if len(buses) == 0 {
		all, err := filepath.Glob(filepath.Join(sys, "bus", "*", "devices", "*", "modalias"))
		if err != nil {
			return nil, err
		}
		paths = append(all, filepath.Join(sys, "devices", "system", "cpu", "modalias"))
	}
	for _, b := range buses {
		on, err := filepath.Glob(filepath.Join(sys, "bus", b, "devices", "*", "modalias"))
		if err != nil {
			return nil, err
		}
		paths = append(paths, on...)
	}
	aliases := []string{}
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

// Network is the class of network controllers: a PCI function of base
// class 02h, "network controller" (PCI Code and ID Assignment
// Specification, section 1.3), or a virtio network device (virtio 1.2,
// section 5, device ID 1). Network cards on USB are not of it: their
// modaliases name the vendor's own interface class.
var Network = &Class{Buses: []string{"pci", "virtio"}, Has: isNetwork}

// isNetwork is [Network]'s test. The kernel writes a PCI modalias as
// pci:v<vendor>d<device>sv<subvendor>sd<subdevice>bc<class>sc<subclass>i<interface>,
// in upper-case hexadecimal, so "bc" is only ever the class's tag.
func isNetwork(modalias string) bool {
	if rest, ok := strings.CutPrefix(modalias, "pci:"); ok {
		_, class, ok := strings.Cut(rest, "bc")
		return ok && strings.HasPrefix(class, "02")
	}
	return strings.HasPrefix(modalias, "virtio:d00000001v")
}
