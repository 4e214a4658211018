package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/internal/testenv"
)

// bootTimeout bounds one boot of a guest under TCG on a loaded 2-core
// machine.
const bootTimeout = 2 * time.Minute

// fixtures holds what the tests of this binary share; TestMain removes it.
var fixtures = struct {
	dir string

	tinyOnce sync.Once
	kernel   initramfs.Kernel
	tinyInit string
	tinyErr  error
}{}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pbn-qemu-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtures.dir = dir
	code := m.Run()
	if err := closeEnterprise(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// needLab skips or fails t unless the lab can run here.
func needLab(t testing.TB) {
	t.Helper()
	testenv.Root(t)
	for _, c := range []string{"qemu-system-x86_64", "swtpm", "ip", "busybox", "dnsmasq"} {
		testenv.Command(t, c)
	}
}

// tinyOS returns the installed kernel and the tiny OS as an initramfs.
func tinyOS(t *testing.T) (initramfs.Kernel, string) {
	t.Helper()
	needLab(t)
	f := &fixtures
	f.tinyOnce.Do(func() {
		if f.kernel, f.tinyErr = initramfs.FindKernel(""); f.tinyErr != nil {
			return
		}
		var b bytes.Buffer
		if f.tinyErr = TinyOSInitramfs(&b); f.tinyErr != nil {
			return
		}
		f.tinyInit = filepath.Join(f.dir, "tinyos.cpio")
		f.tinyErr = os.WriteFile(f.tinyInit, b.Bytes(), 0o644)
	})
	if f.tinyErr != nil {
		t.Fatal(f.tinyErr)
	}
	return f.kernel, f.tinyInit
}

// newLab makes a lab that t's cleanup closes.
func newLab(t testing.TB) *Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lab, err := New(ctx, Options{})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	return lab
}

// testWriter copies a guest's console into the test log, line by line.
type testWriter struct {
	t    *testing.T
	name string
	mu   sync.Mutex
	buf  []byte
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.t.Logf("%s| %s", w.name, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func TestTinyOSBoots(t *testing.T) {
	k, initrd := tinyOS(t)
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	m, err := lab.Laptop(ctx, "tiny", LaptopOptions{Kernel: k.Image, Initrd: initrd, Append: "quiet",
		Console: &testWriter{t: t, name: "tiny"}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}

	if err := m.Console.ExpectString(ctx, TinyOSBanner+" on "+k.Version); err != nil {
		t.Fatal(err)
	}
	// The swtpm is the guest's TPM: tpm_tis is built into Debian's kernel.
	if err := m.Console.ExpectString(ctx, "tinyos: tpm tpm0"); err != nil {
		t.Error(err)
	}
	if err := m.Console.ExpectString(ctx, NoTiming); err != nil {
		t.Error(err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want a clean power-off", err)
	}
}

// TestLaptopRTC boots the tiny OS with its real-time clock in 1980, as
// clock tests do: the guest's kernel sets its clock from it.
func TestLaptopRTC(t *testing.T) {
	k, initrd := tinyOS(t)
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	m, err := lab.Laptop(ctx, "clock", LaptopOptions{Kernel: k.Image, Initrd: initrd, Append: "quiet",
		NoTPM: true, NIC: "none", RTC: "1980-01-01T00:00:00", Console: &testWriter{t: t, name: "clock"}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	if err := m.Console.ExpectString(ctx, "tinyos: clock 1980-01-01"); err != nil {
		t.Error(err)
	}
}

func TestExpectFailsWithTail(t *testing.T) {
	k, initrd := tinyOS(t)
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	m, err := lab.Laptop(ctx, "tiny", LaptopOptions{Kernel: k.Image, Initrd: initrd, Append: "quiet", NoTPM: true})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}

	// The guest powers off after its banner: the pattern never comes and
	// the console ends.
	_, err = m.Console.Expect(ctx, regexp.MustCompile(`never printed`))
	var ee *ExpectError
	if !errors.As(err, &ee) {
		t.Fatalf("Expect(never printed) = %v, want an *ExpectError", err)
	}
	if !errors.Is(err, io.EOF) {
		t.Errorf("Expect(never printed) = %v, want io.EOF for a console that closed", err)
	}
	if tail := strings.Join(ee.Tail, "\n"); !strings.Contains(tail, "tinyos: powering off") {
		t.Errorf("ExpectError.Tail = %q, want the console's last lines", tail)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if _, err := m.Console.Expect(short, regexp.MustCompile(`never printed`)); err == nil {
		t.Error("Expect after the console closed = nil, want an error")
	}
}

// TestCloseLeavesNothing closes a lab while its guest still runs, as a
// failing test does, and checks that the namespace, the processes and the
// lab's files are gone.
func TestCloseLeavesNothing(t *testing.T) {
	k, initrd := tinyOS(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	lab, err := New(ctx, Options{})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	dhcp, err := lab.StartDHCP(ctx)
	if err != nil {
		lab.Close()
		t.Fatalf("StartDHCP = %v", err)
	}
	// init=/bin/busybox sh keeps the guest running until it is killed.
	m, err := lab.Laptop(ctx, "stays", LaptopOptions{Kernel: k.Image, Initrd: initrd,
		Append: "quiet rdinit=/bin/busybox -- sh"})
	if err != nil {
		lab.Close()
		t.Fatalf("Laptop = %v", err)
	}
	pids := lab.pids()
	if len(pids) != 3 { // dnsmasq, swtpm, qemu
		t.Errorf("lab runs %d processes, want 3 (dnsmasq, swtpm, qemu)", len(pids))
	}
	if !dhcp.Exited() && !m.Running() {
		t.Errorf("laptop not running before Close")
	}

	checkClosed(t, lab, pids)
}

// TestFailedLaptopLeavesNothing asks for a laptop that cannot start, after
// its tap exists, and checks that it started nothing and that Close
// removes the tap with the namespace.
func TestFailedLaptopLeavesNothing(t *testing.T) {
	k, initrd := tinyOS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lab, err := New(ctx, Options{})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	m, err := lab.Laptop(ctx, "broken", LaptopOptions{Kernel: k.Image, Initrd: initrd,
		Disks: []string{"/dev/null"}, DiskInterface: "floppy"})
	if err == nil {
		t.Errorf("Laptop(floppy disk) = %v, nil; want an error", m.Name)
	}
	// The disk interface is checked before the swtpm starts.
	pids := lab.pids()
	if len(pids) != 0 {
		t.Errorf("lab runs %d processes, want none", len(pids))
	}
	checkClosed(t, lab, pids)
}

// checkClosed closes lab and checks that the processes pids, its namespace
// and its directory are gone.
func checkClosed(t *testing.T, lab *Lab, pids []int) {
	t.Helper()
	if err := lab.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d after Close: kill(0) = %v, want ESRCH", pid, err)
		}
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), lab.Name+" ") || strings.HasSuffix(strings.TrimSpace(string(out)), lab.Name) {
		t.Errorf("namespace %s left after Close", lab.Name)
	}
	if _, err := os.Stat(lab.Dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s after Close: %v, want it gone", lab.Dir, err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

// TestNewSweepsStaleLabs leaves a namespace and a directory named like the
// lab of a process that has exited, as a test binary killed at its
// timeout does, and checks that the next lab removes them.
func TestNewSweepsStaleLabs(t *testing.T) {
	needLab(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("pbn%d-1", dead.Process.Pid)
	if err := ip(context.Background(), "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", stale).Run() })
	dir, err := os.MkdirTemp("", stale+"-")
	if err != nil {
		t.Fatal(err)
	}

	newLab(t)
	if _, err := os.Stat(filepath.Join("/run/netns", stale)); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s after New: %v, want it gone", stale, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("stale directory %s after New: %v, want it gone", dir, err)
	}
}
