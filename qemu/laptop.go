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
}

// Laptop is a QEMU guest on the lab LAN with its own swtpm.
type Laptop struct {
	Name    string
	MAC     string // the network card's address, for Lab.Lease
	Console *Console
	TPMDir  string // the swtpm's state

	qemu *Process
}

// Laptop starts a laptop on the LAN: a swtpm of its own as the TPM 2.0
// (tpm-tis), a tap on the bridge, and QEMU booting opts.Kernel with
// opts.Initrd, or from the network, its serial console on Console. The lab
// stops it at Close.
func (l *Lab) Laptop(ctx context.Context, name string, opts LaptopOptions) (*Laptop, error) {
	qemu, err := lookSbin("qemu-system-x86_64")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: laptop %s: %w", name, err)
	}
	l.mu.Lock()
	l.laptops++
	n := l.laptops
	l.mu.Unlock()
	m := &Laptop{Name: name, MAC: fmt.Sprintf("52:54:00:99:%02x:%02x", n/256%256, n%256)}

	args := []string{
		"-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", "2",
		"-m", strconv.Itoa(cmp.Or(opts.Memory, DefaultMemory)),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
	}
	switch {
	case opts.Kernel != "":
		args = append(args, "-kernel", opts.Kernel, "-initrd", opts.Initrd,
			// panic=-1: a kernel panic ends QEMU (-no-reboot) at once,
			// so Expect fails fast instead of at its deadline.
			"-append", strings.TrimSpace("console=ttyS0 panic=-1 "+opts.Append))
	case opts.NIC == "none":
		return nil, fmt.Errorf("lab: laptop %s: a network boot needs a network card", name)
	default:
		args = append(args, "-boot", "order=n")
	}
	if !opts.NoTPM {
		sock, err := l.startSwtpm(ctx, name, dir)
		if err != nil {
			return nil, err
		}
		m.TPMDir = dir
		args = append(args, "-chardev", "socket,id=chrtpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if nic := cmp.Or(opts.NIC, VirtioNet); nic != "none" {
		tap, err := l.addTap(ctx)
		if err != nil {
			return nil, err
		}
		args = append(args, "-netdev", "tap,id=lan,ifname="+tap+",script=no,downscript=no",
			"-device", nic+",netdev=lan,mac="+m.MAC)
	}
	for i, disk := range opts.Disks {
		id := fmt.Sprintf("disk%d", i)
		args = append(args, "-drive", "file="+disk+",if=none,format=raw,id="+id)
		switch cmp.Or(opts.DiskInterface, Virtio) {
		case Virtio:
			args = append(args, "-device", "virtio-blk-pci,drive="+id)
		case NVMe:
			args = append(args, "-device", fmt.Sprintf("nvme,drive=%s,serial=pbn%d", id, i))
		default:
			return nil, fmt.Errorf("lab: laptop %s: unknown disk interface %q", name, opts.DiskInterface)
		}
	}

	cmd := exec.Command(qemu, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("lab: laptop %s: %w", name, err)
	}
	// A pipe of our own, not StdoutPipe: Wait closes that one when QEMU
	// exits, and the console would lose the guest's last lines.
	stdout, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("lab: laptop %s: %w", name, err)
	}
	cmd.Stdout = w
	log, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, fmt.Errorf("lab: laptop %s: %w", name, err)
	}
	l.onClose(log.Close)
	cmd.Stderr = log
	var copyTo io.Writer = log
	if c := cmp.Or(opts.Console, l.console); c != nil {
		copyTo = io.MultiWriter(log, c)
	}
	m.Console = newConsole(stdin, copyTo)
	m.qemu, err = l.Start("qemu "+name, cmd)
	w.Close()
	if err != nil {
		stdout.Close()
		return nil, err
	}
	go func() {
		m.Console.read(stdout)
		stdout.Close()
	}()
	return m, nil
}

// startSwtpm starts a TPM 2.0 emulator for a laptop and returns the path of
// its control socket, once it listens.
func (l *Lab) startSwtpm(ctx context.Context, name, dir string) (string, error) {
	swtpm, err := lookSbin("swtpm")
	if err != nil {
		return "", err
	}
	sock := filepath.Join(dir, "swtpm.sock")
	cmd := exec.Command(swtpm, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--ctrl", "type=unixio,path="+sock, "--log", "file="+filepath.Join(dir, "swtpm.log"))
	p, err := l.start("swtpm "+name, cmd, false)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(DefaultSwtpmWait)
	for !fileExists(sock) {
		if p.Exited() {
			return "", fmt.Errorf("lab: swtpm for %s exited: %v", name, p.err)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("lab: swtpm for %s did not listen within %v", name, DefaultSwtpmWait)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("lab: waiting for swtpm: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return sock, nil
}

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
