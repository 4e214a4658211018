package qemu

import (
	"bytes"
	"context"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// The user of the test laptop and their password.
const (
	testUPN      = "alice@corp.example.test"
	testPassword = "correct horse battery staple"
	keyFileName  = "EFI/PBN/keys/alice" + keyfile.Ext
)

// pbnFixture is the PBN image and a laptop disk whose LUKS2 volume holds
// the tiny OS, made once per test binary: the image takes tens of seconds
// to build and the disk a guest boot to fill.
var pbnFixture struct {
	once     sync.Once
	kernel   initramfs.Kernel
	image    string // the PBN initramfs
	disk     string // GPT: ESP with alice's key file, LUKS2 with the tiny OS
	luksUUID string
	keyFile  []byte // alice's, as on the ESP
	// spec made disk; its LUKSKey, alice's FDE secret, stays for the
	// test binary's life: Enterprise.Provision re-keys copies of disk.
	spec   DiskSpec
	report *initramfs.Report
	base   *Base // all of the above
	err    error
}

// pbnDisk returns the kernel, the PBN image and the shared laptop disk.
// Tests that boot it pass ro on the command line, so it stays as made.
func pbnDisk(t testing.TB) (initramfs.Kernel, string, string, string) {
	t.Helper()
	needLab(t)
	f := &pbnFixture
	f.once.Do(func() { f.err = makePBNFixture() })
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.kernel, f.image, f.disk, f.luksUUID
}

// fixtureTimeout bounds making a shared fixture (the images, the
// enterprise): a few minutes on a quiet machine, several times that on a
// loaded one.
const fixtureTimeout = 15 * time.Minute

func makePBNFixture() error {
	f := &pbnFixture
	ctx, cancel := context.WithTimeout(context.Background(), fixtureTimeout)
	defer cancel()
	fde := secret.Random(32)
	kf, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindUser, DeviceID: keyfile.NewID(),
		UPN: testUPN}, &keyfile.Keyring{FDE: fde.Clone()})
	if err != nil {
		return err
	}
	defer kf.Close()
	// The floor parameters, which a slow device calibrates to, with a lane
	// for each of the laptop's CPUs as keyfile.Calibrate gives them:
	// Password would calibrate on this host, ten times as fast as a TCG
	// guest, and the guest would spend seconds unlocking.
	pw := keyfile.PasswordWith(secret.Bytes(testPassword), keyfile.Argon2Params{Time: keyfile.FloorArgon2.Time,
		Memory: keyfile.FloorArgon2.Memory, Threads: LaptopCPUs})
	if _, err := kf.AddProtector(ctx, "password", pw); err != nil {
		return err
	}
	kb, err := kf.Marshal()
	if err != nil {
		return err
	}
	f.keyFile = kb
	if f.base, err = MakeBase(ctx, BaseOptions{Repo: "..", Dir: fixtures.dir,
		ESPFiles: map[string][]byte{keyFileName: kb}, LUKSKey: fde, Console: fixtureConsole}); err != nil {
		return err
	}
	f.kernel, f.image, f.report, f.spec = f.base.Kernel, f.base.Image, f.base.Report, f.base.Template
	f.disk, f.luksUUID = f.spec.Path, f.spec.LUKSUUID
	return nil
}

// fixtureConsole receives the console of the guest that fills the disk:
// the fixture has no test to log to.
var fixtureConsole io.Writer = io.Discard

// bootPBN boots a laptop with the PBN image from disk on a lab with a DHCP
// server when dhcp is set. hw picks the network card and the disk
// interface; its zero value is virtio for both. A test's laptop logs its
// console to the test, with the agent's debug log (pbn.debug); a
// benchmark's shows no console and has none, since every line costs time
// on an emulated serial port.
func bootPBN(t testing.TB, ctx context.Context, disk string, dhcp bool, extra string, hw LaptopOptions) (*Lab, *Laptop) {
	t.Helper()
	k, img, _, uuid := pbnDisk(t)
	lab := newLab(t)
	if dhcp {
		if _, err := lab.StartDHCP(ctx); err != nil {
			t.Fatalf("StartDHCP = %v", err)
		}
	}
	var console io.Writer
	if tt, ok := t.(*testing.T); ok {
		console = &testWriter{t: tt, name: "laptop"}
		extra = "pbn.debug " + extra
	}
	m, err := lab.Laptop(ctx, "laptop", LaptopOptions{Kernel: k.Image, Initrd: img, Disks: []string{disk},
		NIC: hw.NIC, DiskInterface: hw.DiskInterface, Console: console,
		Append: "quiet ro rd.luks.uuid=" + uuid + " " + extra})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	return lab, m
}

// expect waits for each pattern in turn and fails t at the first that
// does not come.
func expect(t testing.TB, ctx context.Context, m *Laptop, patterns ...string) [][]string {
	t.Helper()
	var got [][]string
	for _, p := range patterns {
		g, err := m.Console.Expect(ctx, regexp.MustCompile(p))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, g)
	}
	return got
}

// networkRE is the agent's line for the network step's outcome and the
// milliseconds it took.
const networkRE = `pbn: network: ([^\n]*) \((\d+) ms\)\n`

// promptRE is the agent's password prompt.
const promptRE = `Enter password for ` + testUPN + `: `

// TestBootOpensDisk boots laptops of two kinds of hardware: the agent loads
// their drivers by modalias, leases an address, asks for the password,
// opens the disk and hands over to the tiny OS with its timing file.
func TestBootOpensDisk(t *testing.T) {
	tests := []struct {
		name    string
		hw      LaptopOptions
		drivers []string
	}{
		{"virtio", LaptopOptions{NIC: VirtioNet, DiskInterface: Virtio}, []string{"virtio_net", "virtio_blk"}},
		{"e1000e and nvme", LaptopOptions{NIC: E1000E, DiskInterface: NVMe}, []string{"e1000e", "nvme"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, disk, _ := pbnDisk(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
			defer cancel()
			lab, m := bootPBN(t, ctx, disk, true, "", tt.hw)
			checkBoot(t, ctx, lab, m, tt.drivers)
		})
	}
}

// checkBoot follows a laptop's boot from the agent's start to the tiny
// OS's power-off, typing the right password.
func checkBoot(t *testing.T, ctx context.Context, lab *Lab, m *Laptop, drivers []string) {
	t.Helper()
	got := expect(t, ctx, m, networkRE, promptRE)
	lease, ok := lab.Lease(m.MAC)
	if !ok || !strings.Contains(got[0][1], lease.String()) {
		t.Errorf("network: %q, lease for %s: %v %v; want the leased address on the console", got[0][1], m.MAC, lease, ok)
	}
	if err := m.Console.Type(testPassword + "\n"); err != nil {
		t.Fatal(err)
	}
	got = expect(t, ctx, m, `pbn: modules: \d+ for the hardware \(([^)]*)\)`)
	if mods := strings.Fields(got[0][1]); !containsAll(mods, drivers...) {
		t.Errorf("modules loaded = %q, want %q among them", mods, drivers)
	}
	got = expect(t, ctx, m, TinyOSBanner+` on \S+, root (\S+)\n`, regexp.QuoteMeta(TimingBegin)+`\n((?s:.*?))`+regexp.QuoteMeta(TimingEnd))
	if root := got[0][1]; !strings.HasPrefix(root, "/dev/mapper/") && !strings.HasPrefix(root, "/dev/dm-") {
		t.Errorf("tiny OS root = %s, want the opened LUKS volume", root)
	}
	phases := ParseTiming(got[1][1]).Phases
	for _, p := range []string{"drivers", "network", "modules", "unlock", "root"} {
		if _, ok := phases[p]; !ok {
			t.Errorf("timing file has no %s phase:\n%s", p, got[1][1])
		}
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
}

// TestBootWrongPassword types wrong passwords until the limit and checks
// that the disk stays shut and no shell answers. It does not prove that no
// other input gives a shell: it types one shell command.
func TestBootWrongPassword(t *testing.T) {
	_, _, disk, _ := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	_, m := bootPBN(t, ctx, disk, true, "pbn.tries=2", LaptopOptions{})

	expect(t, ctx, m, promptRE)
	m.Console.Type("wrong one\n")
	expect(t, ctx, m, `That password is not correct. Try again.`, promptRE)
	m.Console.Type("wrong two\n")
	expect(t, ctx, m, `Too many wrong passwords.`)
	// The right password after the limit opens nothing either.
	refused(t, m, testPassword+"\n", `unlock: key file`)
	noShell(t, m)
	if strings.Contains(m.Console.Output(), TinyOSBanner) {
		t.Error("the tiny OS booted after wrong passwords")
	}
}

// TestBootCorruptKeyFile boots a copy of the disk whose key file has a
// flipped byte: the agent says so plainly and gives no shell.
func TestBootCorruptKeyFile(t *testing.T) {
	_, _, disk, _ := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	corrupt := filepath.Join(t.TempDir(), "corrupt.img")
	corruptKeyFile(t, disk, corrupt)
	_, m := bootPBN(t, ctx, corrupt, true, "", LaptopOptions{})

	expect(t, ctx, m, `The key file on this computer is damaged. Ask your administrator for help.`)
	noShell(t, m)
	if strings.Contains(m.Console.Output(), "Enter password") {
		t.Error("the agent asked for a password with a damaged key file")
	}
}

// TestBootNoDHCP boots without a DHCP server: the network step gives up
// within its timeout and the prompt still comes. The prompt does not wait
// for the network (TestPromptBeforeDHCP): the network's line comes before
// it or, said above it, before the prompt shown again.
func TestBootNoDHCP(t *testing.T) {
	_, _, disk, _ := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	_, m := bootPBN(t, ctx, disk, false, "pbn.nettimeout=3s", LaptopOptions{})

	got := expect(t, ctx, m, networkRE, promptRE)
	took, _ := strconv.Atoi(got[0][2])
	// The bound is the 3 s asked for plus slack for a loaded TCG guest.
	if took < 2500 || took > 10000 {
		t.Errorf("network gave up after %d ms, want about 3000", took)
	}
}

// noShell types a shell command and checks that nothing runs it.
func noShell(t *testing.T, m *Laptop) {
	t.Helper()
	refused(t, m, "echo shell-$((6*7))\n", `shell-42`)
}

// refused types input and checks that the console does not print pattern
// within a few seconds.
func refused(t *testing.T, m *Laptop, input, pattern string) {
	t.Helper()
	m.Console.Type(input)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.Console.Expect(ctx, regexp.MustCompile(pattern)); err == nil {
		t.Errorf("after the failure, typing %q printed %q", input, pattern)
	}
}

// corruptKeyFile copies disk to dst with one byte of the key file flipped
// on the ESP, found by its content.
func corruptKeyFile(t *testing.T, disk, dst string) {
	t.Helper()
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b[ESPOffset:], []byte("\x89PBNKF"))
	if i < 0 {
		t.Fatal("no key file found on the ESP")
	}
	b[ESPOffset+i+64] ^= 0x01
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// BenchmarkBoot boots the laptop with the right password and reports the
// agent's phases from the timing file the tiny OS prints: the kernel's own
// time before the agent (kernel-ms), then from the agent's start to the
// first network link (netlink-ms), to the network configured (network-ms)
// and to switch_root (the end of the root step), typing excluded. unlock-ms
// is the unlock step without the typing, which is opening the key file:
// Argon2id at the floor parameters; its baseline is the same opening on
// this host. cipher-wait-ms is the modules step, the wait for the CPU's
// cipher modules (aesni_intel's self-tests) after the unlock, and disk-ms
// the disk step, cryptsetup opening the volume. One boot is one iteration;
// under TCG on a shared 2-core machine the figures are several times what
// hardware gives.
func BenchmarkBoot(b *testing.B) {
	_, _, disk, _ := pbnDisk(b)
	var kernel, drivers, network, unlock, cipherWait, diskOpen, switchRoot float64
	n := 0
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
		_, m := bootPBN(b, ctx, disk, true, "", LaptopOptions{})
		expect(b, ctx, m, promptRE)
		m.Console.Type(testPassword + "\n")
		tm, err := m.Console.Timing(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		kernel += tm.Agent
		drivers += tm.Phases["drivers"][1]
		network += tm.Phases["network"][1]
		unlock += tm.Phases["unlock"][1] - tm.Phases["unlock"][0] - tm.Excluded
		cipherWait += tm.Phases["modules"][1] - tm.Phases["modules"][0]
		diskOpen += tm.Phases["disk"][1] - tm.Phases["disk"][0]
		switchRoot += tm.SwitchRoot()
		n++
	}
	b.ReportMetric(kernel/float64(n), "kernel-ms")
	b.ReportMetric(drivers/float64(n), "netlink-ms")
	b.ReportMetric(network/float64(n), "network-ms")
	b.ReportMetric(unlock/float64(n), "unlock-ms")
	b.ReportMetric(hostUnlock(b), "baseline-unlock-ms")
	b.ReportMetric(cipherWait/float64(n), "cipher-wait-ms")
	b.ReportMetric(diskOpen/float64(n), "disk-ms")
	b.ReportMetric(switchRoot/float64(n), "switch_root-ms")
}

// hostUnlock returns the milliseconds that opening the laptop's key file
// with its password takes on this host, the best of three.
func hostUnlock(b *testing.B) float64 {
	b.Helper()
	best := time.Duration(math.MaxInt64)
	for range 3 {
		f, err := keyfile.Parse(pbnFixture.keyFile)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		err = f.Open(context.Background(), keyfile.Password(secret.Bytes(testPassword)))
		took := time.Since(start)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		best = min(best, took)
	}
	return float64(best) / float64(time.Millisecond)
}
