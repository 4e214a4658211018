package main

import (
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/kmod"
	"github.com/pbn-project/pbn/pbn/netup"
	"github.com/pbn-project/pbn/pbn/stage"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Where the agent keeps things; /run moves into the real root at
// switch_root.
const (
	timingFile = "/run/pbn/timing"
	espMount   = "/run/pbn/esp"
	newRoot    = "/newroot"
)

// agent is the boot flow's state, filled in step by step.
type agent struct {
	start   time.Time
	con     *console.Console
	conIn   *os.File // the console's input, which the sign-in prompt reads
	log     *slog.Logger
	cmdline *cmdline.Cmdline
	timing  *stage.Timing
	loader  *kmod.Loader

	// coldplug is closed when the coldplug that the drivers step starts
	// has ended, with its outcome in plugged and plugErr.
	coldplug chan struct{}
	plugged  kmod.ColdplugReport
	plugErr  error
	// netDone is closed when the network step has ended, which its own
	// timeout bounds: the stages that need the network wait for it
	// (awaitNetwork).
	netDone chan struct{}

	volume   cmdline.LUKS // the LUKS volume that holds the root (volumes.go)
	luksDev  *disk.Device // where it is
	espDev   *disk.Device // the ESP, mounted at espMount until the unlock step ends
	files    []*keyfile.KeyFile
	opened   *keyfile.KeyFile
	session  handoff.Session // what the handover tells the OS; the unlock step says how it opened
	rootDev  *disk.Device
	initPath string

	// What the stages open on first use (enterprise.go), until the unlock
	// step ends.
	config    *config.Config
	tpm       *tpm.TPM
	tpmTr     transport.TPMCloser // tpm's
	deviceKey crypto.Signer
	// entered is when the person entered the credentials of the secure
	// moment, in time since the agent started.
	entered time.Duration
}

func newAgent(start time.Time) *agent {
	return &agent{
		start:   start,
		con:     console.New(os.Stdin, os.Stdout),
		log:     slog.New(slog.DiscardHandler),
		cmdline: &cmdline.Cmdline{PBN: cmdline.Options{OnFail: cmdline.FailHalt}},
		netDone: make(chan struct{}),
	}
}

// run is the boot flow. It returns only on failure: the last step
// executes the real init.
func (a *agent) run(ctx context.Context) error {
	if err := a.setup(); err != nil {
		return err
	}
	if a.cmdline.PBN.Mode == cmdline.ModeImage {
		return a.image(ctx)
	}
	// The unlock step waits for the network only where its stage needs
	// it (see stages); the root step waits for it in any case, so that
	// the network's outcome is said and stamped before the OS starts,
	// within the network's timeout.
	// TODO: the typing that the timing file leaves out (Timing.Exclude)
	// can overlap the root step's wait for the network: when the network
	// ends after the disk has opened, the boot time less the typing reads
	// shorter than a boot with the password typed at once would take.
	// Stamping that wait as a phase of its own would tell the two apart.
	steps := []stage.Step{
		{Name: "drivers", Run: a.drivers},
		{Name: "network", Run: a.network, Background: true},
		{Name: "keyfiles", Run: a.keyFiles},
		{Name: "unlock", Run: a.unlock},
		{Name: "modules", Run: a.modules},
		{Name: "disk", Run: a.openDisk},
		{Name: "root", Run: a.mountRoot, After: []string{"network"}},
	}
	if err := stage.Run(ctx, a.timing, steps); err != nil {
		return err
	}
	a.say("switch_root to %s", a.initPath)
	a.con.Close() // gives the terminal back its echo and line editing
	return handoff.SwitchRoot(newRoot, a.initPath, append([]string{a.initPath}, initArgs()...))
}

// setup mounts the early file systems, opens the console and the log, and
// reads the kernel command line.
func (a *agent) setup() error {
	mountErr := handoff.MountEarly()
	if f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		a.con, a.conIn = console.New(f, f), f
	}
	a.say("PBN agent starting")
	if mountErr != nil {
		return mountErr
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("kernel command line: %w", err)
	}
	c, err := cmdline.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	a.cmdline = c
	a.log = newLogger(c.PBN.Debug, a.con)
	a.timing = stage.NewTiming(a.start, a.con, timingFile)
	if err := a.timing.Stamp("mount", 0); err != nil {
		a.log.Warn("timing file", "err", err)
	}
	return nil
}

// newLogger writes the structured log to /dev/kmsg, where dmesg and the
// booted OS's journal find it, and to the console too with pbn.debug.
func newLogger(debug bool, con io.Writer) *slog.Logger {
	var w []io.Writer
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		w = append(w, k)
	}
	level := slog.LevelInfo
	if debug {
		w = append(w, con)
		level = slog.LevelDebug
	}
	if len(w) == 0 {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(io.MultiWriter(w...), &slog.HandlerOptions{Level: level}))
}

func (a *agent) say(format string, args ...any) {
	a.con.Say("pbn: "+format, args...)
}

// The modules of later steps: vfat and its code pages for the ESP, and
// dm-crypt with LUKS2's default cipher, aes-xts-plain64, for the disk
// (loaded by the agent rather than by the kernel's requests, each of which
// runs the agent anew as modprobe; other ciphers still load that way). The
// drivers step loads them in the background, after the coldplug, with the
// root's file system (see rootModule); the steps that need them load them
// again, which then only waits for that. crypto-aes brings aesni_intel,
// whose self-tests take seconds under emulation: it must be in the kernel
// before the disk opens, since dm-crypt keeps the cipher it found then for
// the volume's life.
// TODO: they could load from the first link on, beside the coldplug's
// second pass; tried, that made the unlock step's key derivation three
// times as slow under TCG when the password came at once (BenchmarkBoot on
// a loaded machine), since they then share the guest's two CPUs with it.
// On hardware, where a module loads in milliseconds, it may still pay.
var (
	espModules  = []string{"fs-vfat", "nls-cp437", "nls-iso8859-1", "nls-ascii"}
	diskModules = []string{"dm-crypt", "crypto-xts", "crypto-aes"}
)

// defaultRootFS is the file system whose module the drivers step loads
// ahead when the kernel command line gives no rootfstype=: the root's type
// is known only once the disk is open, and ext4 is the distributions'
// default. Another type still loads at the root step.
const defaultRootFS = "ext4"

// rootModule names the module of the root's file system, as far as it is
// known before the disk is open.
func (a *agent) rootModule() string {
	return "fs-" + cmp.Or(a.cmdline.RootFSType, defaultRootFS)
}

// drivers starts the coldplug and the later steps' modules in the
// background and waits only for the first network link, so that DHCP runs
// while the other drivers load and probe. The network cards' drivers load
// first, alone: another driver's loading would delay theirs (the kernel
// finishes every driver's asynchronous probing, a SATA controller's port
// resets for one, before a module's loading returns).
func (a *agent) drivers(ctx context.Context) error {
	dir, err := kmod.DefaultDir()
	if err != nil {
		return err
	}
	start := time.Now()
	x, err := kmod.Open(dir)
	if err != nil {
		return err
	}
	a.log.Debug("module index read", "dir", dir, "took", time.Since(start))
	a.loader = kmod.NewLoader(x, a.log)
	linkModprobe(a.log)
	// Subscribed before the coldplug looks at the tree, so that no device
	// that a driver brings goes unseen.
	opts := kmod.ColdplugOptions{First: kmod.Network}
	events, err := kmod.ListenUevents("/sys")
	if err != nil {
		a.log.Warn("no uevents; new devices are found by looking at the tree again", "err", err)
	} else {
		opts.Added = events.Modaliases()
	}
	a.coldplug = make(chan struct{})
	go func() {
		defer close(a.coldplug)
		a.plugged, a.plugErr = a.loader.Coldplug(ctx, opts)
		if events != nil {
			events.Close()
		}
		a.log.Debug("coldplug", "rounds", a.plugged.Rounds, "took", time.Since(start))
		for _, m := range slices.Concat(espModules, diskModules, []string{a.rootModule()}) {
			a.loadModule(m)
		}
	}()
	return a.waitLink(ctx)
}

// linkPoll is how often the drivers step looks for a network link.
const linkPoll = 10 * time.Millisecond

// waitLink returns when a network link other than loopback exists, or the
// coldplug has ended without one (the network step then says so). A
// second card whose driver binds later is tried by the network step,
// which takes in the links that appear while it runs.
func (a *agent) waitLink(ctx context.Context) error {
	for {
		if ok, err := netup.HasLink(); err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.coldplug:
			return nil
		case <-time.After(linkPoll):
		}
	}
}

// modules waits for the coldplug that the drivers step started: the
// ciphers that the CPU's features ask for (aesni_intel), which take
// longest, are for the disk. The steps before need only what they wait
// for themselves: a link, a disk with the ESP, the vfat modules.
func (a *agent) modules(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a.coldplug:
	}
	if a.plugErr != nil {
		return a.plugErr
	}
	if a.plugged.Err != nil {
		a.log.Warn("some modules did not load", "err", a.plugged.Err)
	}
	a.say("modules: %d for the hardware (%s)", len(a.plugged.Modules), strings.Join(a.plugged.Modules, " "))
	return nil
}

// linkModprobe makes the agent the initramfs's /sbin/modprobe, which the
// kernel runs to load file systems and ciphers on demand. The link goes to
// the path the agent was run by, which in u-root's busybox is its own link
// to the busybox binary, so that the busybox runs the agent.
func linkModprobe(log *slog.Logger) {
	exe := os.Args[0]
	if !filepath.IsAbs(exe) {
		var err error
		if exe, err = os.Executable(); err != nil {
			log.Warn("no modprobe", "err", err)
			return
		}
	}
	if err := os.MkdirAll("/sbin", 0o755); err != nil {
		log.Warn("no modprobe", "err", err)
		return
	}
	if err := os.Symlink(exe, "/sbin/modprobe"); err != nil && !errors.Is(err, os.ErrExist) {
		log.Warn("no modprobe", "err", err)
	}
}

// network brings up the network, beside the key files' step and the
// prompt: the person types while DHCP runs, and the network's lines go
// above the prompt (console.Console). The stages that need the directory
// or the key server wait for it (awaitNetwork); its progress lines show
// while no prompt does. A network that does not come up is not an error:
// the password unlock needs none, and the deployed stage signs in offline.
func (a *agent) network(boot context.Context) error {
	defer close(a.netDone)
	ctx, cancel := context.WithTimeout(boot, a.cmdline.PBN.NetTimeout)
	defer cancel()
	start := time.Now()
	stop := a.progress("network: waiting for an address")
	res, err := netup.Up(ctx, netup.Config{IP: a.cmdline.IP, Nameservers: a.cmdline.Nameservers, Log: a.log})
	stop()
	took := time.Since(start).Milliseconds()
	switch {
	case boot.Err() != nil:
		// A step beside it failed, and the boot ends with that step's
		// message.
		a.log.Debug("network", "err", err)
	case err != nil:
		a.log.Warn("network", "err", err)
		a.say("network: %s (%d ms)", netup.Sentence(err), took)
	case res == nil:
		a.say("network: off")
	default:
		a.say("network: %s (%d ms)", res, took)
	}
	return nil
}

// awaitNetwork waits for the network step to end. It returns ctx's error
// when the boot ends first.
func (a *agent) awaitNetwork(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a.netDone:
		return nil
	}
}

// progress says msg every second, while no prompt shows, until stop is
// called.
func (a *agent) progress(msg string) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-t.C:
				a.con.Progress("pbn: %s (%d s)...", msg, n)
			}
		}
	}()
	return func() { close(done) }
}

func (a *agent) keyFiles(ctx context.Context) error {
	for _, m := range espModules {
		a.loadModule(m)
	}
	ctx, cancel := a.deviceContext(ctx)
	defer cancel()
	esp, err := a.findESP(ctx)
	if err != nil {
		return err
	}
	if err := disk.MountESP(esp, espMount); err != nil {
		return err
	}
	a.espDev = esp
	files, damaged, err := disk.KeyFiles(espMount)
	for _, d := range damaged {
		a.log.Warn("key file skipped", "err", d)
	}
	if err == nil {
		files, err = a.trusted(files)
	}
	if err != nil {
		a.unmountESP()
		return err
	}
	a.files = files
	a.say("keyfiles: %d on %s", len(files), esp.Path)
	return nil
}

// coldplugBound bounds the wait for the coldplug before a disk that has
// not appeared counts as missing: the drivers that the coldplug loads last
// may be the disk's.
const coldplugBound = time.Minute

// deviceContext returns a context for the wait for the key files' disk,
// which ends the device timeout after the coldplug has ended, and at the
// latest coldplugBound later: the key files' step starts at the first
// network link, while the disk's driver may still be loading.
func (a *agent) deviceContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, coldplugBound+a.cmdline.PBN.DeviceTimeout)
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-a.coldplug:
		}
		t := time.NewTimer(a.cmdline.PBN.DeviceTimeout)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			cancel()
		}
	}()
	return ctx, cancel
}

// findESP finds the root's LUKS volume, then the ESP on the same disk: a USB
// stick's ESP must not stand in for the laptop's own. Only when the volume
// is not a partition does any ESP do.
func (a *agent) findESP(ctx context.Context) (*disk.Device, error) {
	v, err := rootVolume(a.cmdline)
	if err != nil {
		return nil, err
	}
	luks, err := disk.Wait(ctx, disk.Sysfs{}, "UUID="+v.UUID, isLUKS(v.UUID))
	if err != nil {
		return nil, err
	}
	a.volume, a.luksDev = v, luks
	return disk.Wait(ctx, disk.Sysfs{}, "the EFI system partition", func(d *disk.Device) bool {
		return d.IsESP() && (luks.Disk == "" || d.Disk == luks.Disk)
	})
}

// loadModule loads a module that a later step needs; the kernel may have
// it built in, or the image may lack it, which the step then reports.
func (a *agent) loadModule(name string) {
	if err := a.loader.Load(name); err != nil {
		a.log.Debug("module", "name", name, "err", err)
	}
}

// stages are the two stages of PBN's model, in the order they are
// chosen: the first whose key files are on the ESP runs. A provisioning
// key file means the device's secure moment has not finished, even with a
// user's key file beside it (a power cut cut it short): signing in again
// finishes it, where the user's key file alone might not open the disk
// yet. A stage with network set runs once the network step has ended: the
// provisioning stage's autoboot asks the key server before any prompt,
// and whether it opened decides between the countdown and the sign-in.
// The deployed stage prompts at once, and its sign-in waits for the
// network after the password (deployed.go).
var stages = []struct {
	name    string
	kinds   []keyfile.Kind
	network bool
	run     func(*agent, context.Context) (*keyfile.KeyFile, error)
}{
	{"provisioning", []keyfile.Kind{keyfile.KindProvisioning}, true, (*agent).provisioning},
	{"deployed", []keyfile.Kind{keyfile.KindUser, keyfile.KindAdministrator}, false, (*agent).openKeyFile},
}

// errNoStage says no key file on the ESP is of a kind that a stage opens.
var errNoStage = fmt.Errorf("%w of a known kind", disk.ErrNoKeyFiles)

// chooseStage returns the index in stages of the stage for the key files.
func chooseStage(files []*keyfile.KeyFile) (int, error) {
	for i, s := range stages {
		for _, f := range files {
			if slices.Contains(s.kinds, f.Header().Kind) {
				return i, nil
			}
		}
	}
	return 0, errNoStage
}

// unlock runs the stage that the key files call for, which returns the
// open key file of the disk. The ESP is synced and unmounted at its end,
// and the TPM closed.
func (a *agent) unlock(ctx context.Context) error {
	defer a.closeTPM()
	defer a.unmountESP()
	i, err := chooseStage(a.files)
	if err != nil {
		return err
	}
	a.log.Info("stage", "name", stages[i].name)
	if stages[i].network {
		if err := a.awaitNetwork(ctx); err != nil {
			return err
		}
	}
	f, err := stages[i].run(a, ctx)
	if err != nil {
		return err
	}
	a.opened = f
	for _, other := range a.files {
		if other != f {
			other.Close()
		}
	}
	a.say("unlock: key file of %s opened", describe(f))
	return nil
}

// unmountESP writes what the unlock step wrote to the ESP through and
// unmounts it.
func (a *agent) unmountESP() {
	if a.espDev == nil {
		return
	}
	unix.Sync()
	if err := unix.Unmount(espMount, 0); err != nil {
		a.log.Warn("unmount esp", "err", err)
	}
	a.espDev = nil
}

func describe(f *keyfile.KeyFile) string {
	h := f.Header()
	if h.UPN != "" {
		return h.UPN
	}
	return h.Kind.String() + " " + h.ID.String()
}

// openDisk opens the root's LUKS volume, then the data volumes, with the
// opened key file's FDE secret, which it wipes at the end.
func (a *agent) openDisk(ctx context.Context) error {
	defer a.opened.Close() // wipes the FDE secret
	v, dev := a.volume, a.luksDev
	for _, m := range diskModules {
		a.loadModule(m)
	}
	cs, err := disk.Cryptsetup()
	if err != nil {
		return err
	}
	if err := disk.OpenLUKS(ctx, cs, dev.Path, v.Name, a.opened.Keyring().FDE); err != nil {
		return err
	}
	a.say("disk: %s opened as %s", dev.Path, disk.Mapper(v.Name))
	a.openData(ctx, cs)
	a.handover()
	if a.cmdline.Root.Kind == "" || a.cmdline.Root == (cmdline.Device{Kind: cmdline.DeviceUUID, Value: v.UUID}) {
		a.cmdline.Root = cmdline.Device{Kind: cmdline.DevicePath, Value: disk.Mapper(v.Name)}
	}
	return nil
}

func (a *agent) mountRoot(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cmdline.PBN.DeviceTimeout)
	defer cancel()
	spec := a.cmdline.Root
	dev, err := disk.Wait(ctx, disk.Sysfs{}, spec.String(), func(d *disk.Device) bool { return d.Matches(spec) })
	if err != nil {
		return err
	}
	fstype := a.cmdline.RootFSType
	if fstype == "" {
		fstype = dev.Super.Type
	}
	if fstype != "" {
		a.loadModule("fs-" + fstype)
	}
	if err := disk.MountRoot(dev, newRoot, fstype, a.cmdline.RootFlags, a.cmdline.ReadWrite); err != nil {
		return err
	}
	init, err := handoff.FindInit(newRoot, a.cmdline.Init)
	if err != nil {
		return err
	}
	a.initPath = init
	a.say("root: %s mounted on %s", spec, newRoot)
	return nil
}

// initArgs are the kernel's arguments for init, those after "--".
func initArgs() []string {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil
	}
	_, rest, ok := strings.Cut(strings.TrimSpace(string(b)), " -- ")
	if !ok {
		return nil
	}
	return strings.Fields(rest)
}
