package qemu

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Disk interfaces a laptop's disk can sit on.
const (
	Virtio = "virtio" // virtio-blk-pci, /dev/vda
	NVMe   = "nvme"   // an NVMe controller, /dev/nvme0n1
)

// NICs a laptop's network card can be.
const (
	VirtioNet = "virtio-net-pci"
	E1000     = "e1000"
	E1000E    = "e1000e"
)

// LaptopCPUs is how many CPUs a laptop has: two, as the machine the lab
// runs on.
const LaptopCPUs = 2

// Defaults of LaptopOptions.
const (
	DefaultMemory    = 512 // MiB
	DefaultSwtpmWait = 5 * time.Second
)

// LaptopOptions describe a QEMU laptop.
type LaptopOptions struct {
	// Kernel is the kernel image to boot directly, with Initrd as its
	// initramfs and Append as its command line after console=ttyS0. An
	// empty Kernel boots from the network instead, as a blank laptop
	// does: SeaBIOS runs the network card's iPXE option ROM (Debian's
	// ipxe-qemu, in /usr/lib/ipxe/qemu), which the lab's PXE service
	// answers (Lab.StartPXE).
	Kernel string
	Initrd string
	Append string

	// Disks are raw image files attached in order; each on DiskInterface
	// (default Virtio).
	Disks         []string
	DiskInterface string

	NIC     string // default VirtioNet; "none" for no network card
	Memory  int    // MiB, default DefaultMemory
	NoTPM   bool   // no swtpm
	Console io.Writer

	// TPMState is the swtpm's state directory, such as a Device's
	// TPMDir from Enterprise.Provision; empty means a fresh one in the
	// laptop's directory. The state outlives the laptop: a laptop started
	// again on it (PowerOn, or another Lab.Laptop) has the same TPM.
	TPMState string
	// RTC is where the guest's real-time clock starts, as QEMU's -rtc
	// base= takes it ("1980-01-01T00:00:00", or "utc", the default).
	RTC string
}

// Laptop is a QEMU guest on the lab LAN with its own swtpm.
type Laptop struct {
	Name string
	MAC  string // the network card's address, for Lab.Lease
	// Console is the serial console of the current power-on: PowerOn
	// replaces it.
	Console *Console
	TPMDir  string // the swtpm's state

	lab  *Lab
	dir  string
	args []string // QEMU's, but for the TPM's socket
	opts LaptopOptions
	qemu *Process
	tpm  *Process
}

// Laptop starts a laptop on the LAN: a swtpm of its own as the TPM 2.0
// (tpm-tis), a tap on the bridge, and QEMU booting opts.Kernel with
// opts.Initrd, or from the network, its serial console on Console. The lab
// stops it at Close.
func (l *Lab) Laptop(ctx context.Context, name string, opts LaptopOptions) (*Laptop, error) {
	dir := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: laptop %s: %w", name, err)
	}
	l.mu.Lock()
	l.laptops++
	n := l.laptops
	l.mu.Unlock()
	m := &Laptop{Name: name, MAC: fmt.Sprintf("52:54:00:99:%02x:%02x", n/256%256, n%256),
		lab: l, dir: dir, opts: opts}

	m.args = []string{
		"-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", strconv.Itoa(LaptopCPUs),
		"-m", strconv.Itoa(cmp.Or(opts.Memory, DefaultMemory)),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot", "-rtc", "base=" + cmp.Or(opts.RTC, "utc"),
	}
	switch {
	case opts.Kernel != "":
		m.args = append(m.args, "-kernel", opts.Kernel, "-initrd", opts.Initrd,
			// panic=-1: a kernel panic ends QEMU (-no-reboot) at once,
			// so Expect fails fast instead of at its deadline.
			"-append", strings.TrimSpace("console=ttyS0 panic=-1 "+opts.Append))
	case opts.NIC == "none":
		return nil, fmt.Errorf("lab: laptop %s: a network boot needs a network card", name)
	default:
		m.args = append(m.args, "-boot", "order=n")
	}
	if !opts.NoTPM {
		m.TPMDir = cmp.Or(opts.TPMState, dir)
	}
	if nic := cmp.Or(opts.NIC, VirtioNet); nic != "none" {
		tap, err := l.addTap(ctx)
		if err != nil {
			return nil, err
		}
		m.args = append(m.args, "-netdev", "tap,id=lan,ifname="+tap+",script=no,downscript=no",
			"-device", nic+",netdev=lan,mac="+m.MAC)
	}
	for i, disk := range opts.Disks {
		id := fmt.Sprintf("disk%d", i)
		m.args = append(m.args, "-drive", "file="+disk+",if=none,format=raw,id="+id)
		switch cmp.Or(opts.DiskInterface, Virtio) {
		case Virtio:
			m.args = append(m.args, "-device", "virtio-blk-pci,drive="+id)
		case NVMe:
			m.args = append(m.args, "-device", fmt.Sprintf("nvme,drive=%s,serial=pbn%d", id, i))
		default:
			return nil, fmt.Errorf("lab: laptop %s: unknown disk interface %q", name, opts.DiskInterface)
		}
	}
	if err := m.PowerOn(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// PowerOn starts the laptop again after PowerCut, or after it powered off:
// the same disks, network card and TPM state, a new Console.
func (m *Laptop) PowerOn(ctx context.Context) error {
	if m.qemu != nil && !m.qemu.Exited() {
		return fmt.Errorf("lab: laptop %s: powered on already", m.Name)
	}
	qemu, err := lookSbin("qemu-system-x86_64")
	if err != nil {
		return err
	}
	args := m.args
	if m.TPMDir != "" {
		sock, err := m.startSwtpm(ctx)
		if err != nil {
			return err
		}
		args = append(slices.Clip(args), "-chardev", "socket,id=chrtpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}

	cmd := exec.Command(qemu, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("lab: laptop %s: %w", m.Name, err)
	}
	// A pipe of our own, not StdoutPipe: Wait closes that one when QEMU
	// exits, and the console would lose the guest's last lines.
	stdout, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("lab: laptop %s: %w", m.Name, err)
	}
	cmd.Stdout = w
	log, err := os.OpenFile(filepath.Join(m.dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: laptop %s: %w", m.Name, err)
	}
	m.lab.onClose(log.Close)
	cmd.Stderr = log
	var copyTo io.Writer = log
	if c := cmp.Or(m.opts.Console, m.lab.console); c != nil {
		copyTo = io.MultiWriter(log, c)
	}
	con := newConsole(stdin, copyTo)
	p, err := m.lab.Start("qemu "+m.Name, cmd)
	w.Close()
	if err != nil {
		stdout.Close()
		return err
	}
	m.qemu, m.Console = p, con
	go func() {
		con.read(stdout)
		stdout.Close()
	}()
	return nil
}

// PowerCut ends the laptop as a power failure does: QEMU and its swtpm
// are killed at once, with nothing written back and no TPM2_Shutdown. The
// disks and the TPM's state stay as they were at that instant, for
// PowerOn.
func (m *Laptop) PowerCut() error {
	var errs []error
	for _, p := range []*Process{m.qemu, m.tpm} {
		if p != nil {
			errs = append(errs, p.stop())
		}
	}
	return errors.Join(errs...)
}

// startSwtpm starts the laptop's TPM 2.0 emulator on its state for QEMU
// and returns the path of its control socket, once it listens.
func (m *Laptop) startSwtpm(ctx context.Context) (string, error) {
	sock := filepath.Join(m.dir, "swtpm.sock")
	p, err := m.lab.startSwtpm(ctx, m.Name, m.TPMDir, "--ctrl", sock)
	if err != nil {
		return "", err
	}
	m.tpm = p
	return sock, nil
}

// startSwtpm starts a TPM 2.0 emulator on the state in dir, outside the
// lab's namespace, and waits until its socket sock exists: "--ctrl" for
// QEMU's control channel, "--server" for raw TPM commands, already
// started (TPM2_Startup), as pbn/tpm.Open takes them. It logs into dir.
func (l *Lab) startSwtpm(ctx context.Context, name, dir, mode, sock string) (*Process, error) {
	swtpm, err := lookSbin("swtpm")
	if err != nil {
		return nil, err
	}
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + dir,
		mode, "type=unixio,path=" + sock, "--log", "file=" + filepath.Join(dir, "swtpm.log")}
	if mode == "--server" {
		args = append(args, "--flags", "not-need-init,startup-clear")
	}
	// A socket left by a swtpm that was killed is not this one's.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab: swtpm for %s: %w", name, err)
	}
	p, err := l.start("swtpm "+name, exec.Command(swtpm, args...), false)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(DefaultSwtpmWait)
	for !listening(p.cmd.Process.Pid, sock) {
		if p.Exited() {
			return nil, fmt.Errorf("lab: swtpm for %s exited: %v", name, p.err)
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("lab: swtpm for %s did not listen within %v", name, DefaultSwtpmWait)
		}
		select {
		case <-ctx.Done():
			p.stop()
			return nil, fmt.Errorf("lab: waiting for swtpm: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return p, nil
}

// listening reports whether the process pid listens on the Unix socket
// at path. The file appears when the socket is bound, a moment before it
// listens, when a connection is still refused; the kernel's table of the
// process's Unix sockets (unix(7), /proc/net/unix, per network namespace)
// says when it listens, without connecting to it.
func listening(pid int, path string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) != 8 || f[7] != path {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err == nil && flags&soAcceptCon != 0 {
			return true
		}
	}
	return false
}

// soAcceptCon is __SO_ACCEPTCON, the flag of a listening socket in
// /proc/net/unix.
const soAcceptCon = 1 << 16

// Wait waits for the laptop to power off, or ctx to end. A guest that
// powers off makes QEMU exit 0.
func (m *Laptop) Wait(ctx context.Context) error {
	err := m.qemu.Wait(ctx)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("laptop %s: qemu: %w; last lines:\n\t%s", m.Name, err,
			strings.Join(m.Console.Tail(DefaultTailLines), "\n\t"))
	}
	return err
}

// Running reports whether the laptop's QEMU still runs.
func (m *Laptop) Running() bool { return !m.qemu.Exited() }

// Pid returns the process ID of the laptop's QEMU.
func (m *Laptop) Pid() int { return m.qemu.Pid() }
