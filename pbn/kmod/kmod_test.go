package kmod

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
)

var (
	indexOnce sync.Once
	index     *Index
	indexErr  error
)

// installedIndex opens the module index of the installed Debian kernel
// (linux-image-amd64), the one the image ships, once per test binary.
func installedIndex(t testing.TB) *Index {
	t.Helper()
	dirs, _ := filepath.Glob("/lib/modules/*/modules.alias")
	if len(dirs) == 0 {
		testenv.Command(t, "no-kernel-modules-installed(linux-image-amd64)")
	}
	indexOnce.Do(func() { index, indexErr = Open(filepath.Dir(dirs[len(dirs)-1])) })
	if indexErr != nil {
		t.Fatal(indexErr)
	}
	return index
}

func TestMatchInstalledKernel(t *testing.T) {
	x := installedIndex(t)
	tests := []struct {
		device, modalias string
		want             []string
	}{
		{"QEMU virtio-net", "virtio:d00000001v00001AF4", []string{"virtio_net"}},
		{"QEMU virtio-blk", "virtio:d00000002v00001AF4", []string{"virtio_blk"}},
		{"QEMU virtio PCI", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", []string{"virtio_pci"}},
		{"QEMU e1000", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00", []string{"e1000"}},
		{"Intel 82574L", "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", []string{"e1000e"}},
		{"Intel I225-V", "pci:v00008086d000015F3sv00008086sd00000000bc02sc00i00", []string{"igc"}},
		{"Realtek 8168", "pci:v000010ECd00008168sv000017AAsd00003801bc02sc00i00", []string{"r8169"}},
		{"QEMU NVMe", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", []string{"nvme"}},
		{"ICH9 AHCI", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", []string{"ahci"}},
		{"USB stick", "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00", []string{"uas", "usb_storage"}},
		{"nothing", "pci:v0000FFFFd0000FFFFsv00000000sd00000000bcFFscFFiFF", nil},
	}
	for _, tt := range tests {
		t.Run(tt.device, func(t *testing.T) {
			if got := x.Match(tt.modalias); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Match(%q) = %v, want %v", tt.modalias, got, tt.want)
			}
		})
	}
}

func TestResolveInstalledKernel(t *testing.T) {
	x := installedIndex(t)
	tests := []struct {
		name string
		want []string
	}{
		{"dm-crypt", []string{"dm_crypt"}},
		{"fs-vfat", []string{"vfat"}},
		{"fs-ext4", []string{"ext4"}},
		{"crypto-xts", []string{"xts"}},
	}
	for _, tt := range tests {
		got, err := x.Resolve(tt.name)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Resolve(%q) = %v, %v, want %v", tt.name, got, err, tt.want)
		}
	}
	if _, err := x.Resolve("no-such-module"); err == nil {
		t.Errorf("Resolve(no-such-module) = nil error, want ErrUnknownModule")
	}
}

// recorder replaces finit_module: the tests must not load modules into the
// host's kernel. It records the order and can add devices to a fake sysfs
// tree when a module loads, as a bus driver does.
type recorder struct {
	mu     sync.Mutex
	order  []string
	onLoad map[string]func()
}

func (r *recorder) insert(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, Name(path))
	if f := r.onLoad[Name(path)]; f != nil {
		f()
	}
	return nil
}

func newTestLoader(t *testing.T, r *recorder) *Loader {
	l := NewLoader(installedIndex(t), nil)
	l.insert = r.insert
	return l
}

// checkOrder checks that every module loaded after all its dependencies
// and exactly once.
func checkOrder(t *testing.T, x *Index, order []string) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Errorf("module %s loaded twice: %v", m, order)
		}
		pos[m] = i
	}
	for _, m := range order {
		for _, d := range x.deps[m] {
			if p, ok := pos[d]; !ok || p > pos[m] {
				t.Errorf("module %s loaded before its dependency %s: %v", m, d, order)
			}
		}
	}
}

func TestLoadOrder(t *testing.T) {
	tests := []struct {
		name   string
		want   []string // modules that must be loaded
		before [][2]string
	}{
		{"virtio_net", []string{"virtio_net", "net_failover", "failover", "virtio", "virtio_ring"}, nil},
		{"nvme", []string{"nvme", "nvme_core"}, nil},
		// ext4's soft dependency on crc32c (modules.softdep) comes first.
		{"fs-ext4", []string{"ext4", "jbd2", "mbcache", "crc32c_generic"}, [][2]string{{"crc32c_generic", "ext4"}}},
		{"dm-crypt", []string{"dm_crypt", "dm_mod"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{}
			l := newTestLoader(t, r)
			if err := l.Load(tt.name); err != nil {
				t.Fatalf("Load(%q) = %v", tt.name, err)
			}
			checkOrder(t, l.index, r.order)
			for _, m := range tt.want {
				if !slices.Contains(r.order, m) {
					t.Errorf("Load(%q) loaded %v, want %s among them", tt.name, r.order, m)
				}
			}
			for _, b := range tt.before {
				if slices.Index(r.order, b[0]) > slices.Index(r.order, b[1]) {
					t.Errorf("Load(%q) loaded %v, want %s before %s", tt.name, r.order, b[0], b[1])
				}
			}
		})
	}
}

// writeModalias adds a device to a fake sysfs: its directory under
// devices/ and the bus's link to it, as the kernel lays them out.
func writeModalias(t *testing.T, sys, bus, dev, alias string) {
	t.Helper()
	dir := filepath.Join(sys, "devices", dev)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	links := filepath.Join(sys, "bus", bus, "devices")
	if err := os.MkdirAll(links, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(links, filepath.Base(dev))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modalias"), []byte(alias+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
}

// TestColdplug runs a coldplug over a sysfs tree laid out like QEMU's: a
// virtio PCI function whose driver, once loaded, brings a virtio network
// device, whose own driver the second round loads, and a CPU with AES-NI,
// whose module loads after the network's pass. New devices are found by
// looking at the tree again, as without the kernel's uevents; an Added
// channel that has been closed must neither spin nor lose a device. It
// does not prove that such a coldplug finds virtio's device in the
// network's pass rather than in the next, which looks at the whole tree.
func TestColdplug(t *testing.T) {
	ended := make(chan string)
	close(ended)
	for _, tt := range []struct {
		name  string
		added <-chan string
	}{{"without uevents", nil}, {"after the uevents ended", ended}} {
		t.Run(tt.name, func(t *testing.T) { testColdplug(t, tt.added) })
	}
}

func testColdplug(t *testing.T, added <-chan string) {
	sys := t.TempDir()
	cpu := filepath.Join(sys, "devices", "system", "cpu")
	if err := os.MkdirAll(cpu, 0o755); err != nil {
		t.Fatal(err)
	}
	// Feature 0x99 is X86_FEATURE_AES, which aesni_intel's alias asks for;
	// the vendor, family and model are no real CPU's, so no model-specific
	// module matches.
	if err := os.WriteFile(filepath.Join(cpu, "modalias"), []byte("cpu:type:x86,ven00FFfam00FFmod00FF:feature:,0099,\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	pci := "pci0000:00/0000:00:03.0"
	writeModalias(t, sys, "pci", pci, "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	writeModalias(t, sys, "pci", "pci0000:00/0000:00:04.0", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00")
	writeModalias(t, sys, "platform", "platform/nothing", "platform:no-such-driver")

	r := &recorder{onLoad: map[string]func(){
		"virtio_pci": func() { writeModalias(t, sys, "virtio", pci+"/virtio0", "virtio:d00000001v00001AF4") },
	}}
	l := newTestLoader(t, r)
	rep, err := l.Coldplug(context.Background(), ColdplugOptions{Sysfs: sys, First: Network, Added: added})
	if err != nil {
		t.Fatalf("Coldplug() = %v", err)
	}
	if want := []string{"aesni_intel", "e1000", "virtio_net", "virtio_pci"}; !reflect.DeepEqual(rep.Modules, want) {
		t.Errorf("Coldplug() modules = %v, want %v", rep.Modules, want)
	}
	if rep.Rounds != 2 {
		t.Errorf("Coldplug() rounds = %d, want 2", rep.Rounds)
	}
	if rep.Err != nil {
		t.Errorf("Coldplug() load errors = %v", rep.Err)
	}
	checkOrder(t, l.index, r.order)
	if i, j := slices.Index(r.order, "aesni_intel"), slices.Index(r.order, "virtio_net"); i < j {
		t.Errorf("Coldplug() loaded %v, want aesni_intel after virtio_net", r.order)
	}
}

func TestColdplugBounded(t *testing.T) {
	sys := t.TempDir()
	n := 0
	var r *recorder
	// Each load brings a device for a driver not yet loaded, for ever: the
	// round limit must end it.
	drivers := []string{"pci:v00008086d0000100Esv*", "virtio:d00000001v00001AF4", "virtio:d00000002v00001AF4",
		"pci:v000010ECd00008168sv000017AAsd00003801bc02sc00i00", "pci:v00008086d000015F3sv00008086sd00000000bc02sc00i00"}
	writeModalias(t, sys, "pci", "d0", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00")
	r = &recorder{onLoad: map[string]func(){}}
	for _, m := range []string{"e1000", "virtio_net", "virtio_blk", "r8169"} {
		r.onLoad[m] = func() {
			n++
			writeModalias(t, sys, "pci", "d"+string(rune('0'+n)), drivers[n])
		}
	}
	l := newTestLoader(t, r)
	rep, err := l.Coldplug(context.Background(), ColdplugOptions{Sysfs: sys, MaxRounds: 3})
	if err != nil {
		t.Fatalf("Coldplug() = %v", err)
	}
	if rep.Rounds != 3 || len(rep.Modules) != 3 {
		t.Errorf("Coldplug() = %d rounds, modules %v; want 3 rounds of one module each", rep.Rounds, rep.Modules)
	}
}

// TestModaliasesHost checks on this machine's sysfs that Modaliases finds
// every modalias that a walk of all of /sys/devices finds.
func TestModaliasesHost(t *testing.T) {
	want := map[string]bool{}
	filepath.WalkDir("/sys/devices", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "modalias" && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				want[strings.TrimSpace(string(b))] = true
			}
		}
		return nil
	})
	got, err := Modaliases("/sys")
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Skip("this machine's sysfs shows no modalias")
	}
	for _, a := range got {
		delete(want, a)
	}
	for a := range want {
		t.Errorf("Modaliases(/sys) misses %q", a)
	}
}

func BenchmarkOpenIndex(b *testing.B) {
	dirs, _ := filepath.Glob("/lib/modules/*/modules.alias")
	if len(dirs) == 0 {
		b.Skip("no kernel modules installed")
	}
	for b.Loop() {
		if _, err := Open(filepath.Dir(dirs[0])); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMatchHost matches every modalias of this machine's devices.
func BenchmarkMatchHost(b *testing.B) {
	x := installedIndex(b)
	aliases, err := Modaliases("/sys")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, a := range aliases {
			x.Match(a)
		}
	}
	b.ReportMetric(float64(len(aliases)), "modaliases")
}

func TestNetwork(t *testing.T) {
	tests := []struct {
		modalias string
		want     bool
	}{
		{"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true},  // virtio-net's PCI function
		{"pci:v00008086d000015F3sv00008086sd00000000bc02sc00i00", true},  // Intel I225-V
		{"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", false}, // virtio-blk's PCI function
		{"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", false}, // ICH9 AHCI
		{"pci:v000002BCd000002BCsv00000000sd00000000bc03sc00i00", false}, // "bc" only as the class's tag
		{"virtio:d00000001v00001AF4", true},
		{"virtio:d00000002v00001AF4", false},
		{"usb:v0BDAp8153d3000dc00dsc00dp00icFFiscFFip00in00", false},
		{"cpu:type:x86,ven0000fam0006mod0055:feature:,0099,", false},
		{"pci:", false},
	}
	for _, tt := range tests {
		if got := Network.Has(tt.modalias); got != tt.want {
			t.Errorf("Network.Has(%q) = %v, want %v", tt.modalias, got, tt.want)
		}
	}
}

// TestColdplugFirst runs a coldplug that loads the network card's drivers
// first over a tree laid out like QEMU's q35 with a virtio network card
// and its SATA controller: the virtio PCI function's driver, then the
// virtio network device's that it brings, and only then the SATA
// controller's driver with its dependencies.
func TestColdplugFirst(t *testing.T) {
	sys := t.TempDir()
	pci := "pci0000:00/0000:00:03.0"
	writeModalias(t, sys, "pci", pci, "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	writeModalias(t, sys, "pci", "pci0000:00/0000:00:1f.2", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01")
	r := &recorder{onLoad: map[string]func(){
		"virtio_pci": func() { writeModalias(t, sys, "virtio", pci+"/virtio0", "virtio:d00000001v00001AF4") },
	}}
	l := newTestLoader(t, r)
	rep, err := l.Coldplug(context.Background(), ColdplugOptions{Sysfs: sys, First: Network})
	if err != nil {
		t.Fatalf("Coldplug() = %v", err)
	}
	if want := []string{"ahci", "virtio_net", "virtio_pci"}; !reflect.DeepEqual(rep.Modules, want) {
		t.Errorf("Coldplug() modules = %v, want %v", rep.Modules, want)
	}
	checkOrder(t, l.index, r.order)
	last := slices.Index(r.order, "virtio_net")
	for _, m := range append([]string{"ahci"}, l.index.deps["ahci"]...) {
		if i := slices.Index(r.order, m); i < last {
			t.Errorf("Coldplug() loaded %v, want %s after virtio_net", r.order, m)
		}
	}
}

// TestLoadSideBySide loads virtio_pci, whose two transport libraries do
// not depend on each other: each one's insert waits until the other's has
// started, which only a loader that loads them side by side passes.
func TestLoadSideBySide(t *testing.T) {
	started := map[string]chan struct{}{
		"virtio_pci_legacy_dev": make(chan struct{}),
		"virtio_pci_modern_dev": make(chan struct{}),
	}
	other := map[string]string{
		"virtio_pci_legacy_dev": "virtio_pci_modern_dev",
		"virtio_pci_modern_dev": "virtio_pci_legacy_dev",
	}
	l := NewLoader(installedIndex(t), nil)
	l.insert = func(path string) error {
		name := Name(path)
		if o, ok := other[name]; ok {
			close(started[name])
			select {
			case <-started[o]:
			case <-time.After(5 * time.Second):
				return fmt.Errorf("%s: %s did not start beside it", name, o)
			}
		}
		return nil
	}
	if err := l.Load("virtio_pci"); err != nil {
		t.Errorf("Load(virtio_pci) = %v", err)
	}
}

// TestColdplugAdded runs a coldplug told of new devices by Added, as the
// agent's is by the kernel's uevents: in the first round, e1000's load
// waits until virtio_net's has started, and virtio_net's device comes only
// once virtio_pci, of the same round, has loaded. Only a coldplug that
// loads for a device the moment it is told of it passes; one that looked
// at the tree again after the round's loads would wait for e1000 for ever
// (here, until the test's bound).
func TestColdplugAdded(t *testing.T) {
	sys := t.TempDir()
	pci := "pci0000:00/0000:00:03.0"
	writeModalias(t, sys, "pci", pci, "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	writeModalias(t, sys, "pci", "pci0000:00/0000:00:04.0", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00")
	added := make(chan string, 1)
	netStarted := make(chan struct{})
	l := NewLoader(installedIndex(t), nil)
	var mu sync.Mutex
	var order []string
	l.insert = func(path string) error {
		name := Name(path)
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
		switch name {
		case "virtio_pci":
			const alias = "virtio:d00000001v00001AF4"
			writeModalias(t, sys, "virtio", pci+"/virtio0", alias)
			added <- alias
		case "virtio_net":
			close(netStarted)
		case "e1000":
			select {
			case <-netStarted:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("virtio_net did not start loading while e1000 loaded")
			}
		}
		return nil
	}
	rep, err := l.Coldplug(context.Background(), ColdplugOptions{Sysfs: sys, First: Network, Added: added})
	if err != nil {
		t.Fatalf("Coldplug() = %v", err)
	}
	if rep.Err != nil {
		t.Errorf("Coldplug() load errors = %v", rep.Err)
	}
	if want := []string{"e1000", "virtio_net", "virtio_pci"}; !reflect.DeepEqual(rep.Modules, want) {
		t.Errorf("Coldplug() modules = %v, want %v", rep.Modules, want)
	}
	checkOrder(t, l.index, order)
}
