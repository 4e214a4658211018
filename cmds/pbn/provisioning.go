package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/provisioning"
	"github.com/pbn-project/pbn/pbn/securemoment"
)

// provisioning is the provisioning stage (package provisioning): the
// unattended boot with the provisioning key file, or the sign-in prompt
// and the secure moment, which makes the device its user's.
func (a *agent) provisioning(ctx context.Context) (*keyfile.KeyFile, error) {
	prov, owned := provisioningFile(a.files)
	sm, err := a.secureMoment(ctx, prov.Header())
	if err != nil {
		return nil, err
	}
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	// Calibrating Argon2id for the user's key file times a derivation,
	// seconds under emulation: it runs while the person types (Prompted),
	// and the secure moment takes its answer (Entered) or waits for it.
	var calibrated chan keyfile.Argon2Params
	st := &provisioning.Stage{
		Provisioning: prov, Owned: owned, Network: sm.Network, Countdown: cfg.Countdown(),
		Prompt:       &provisioning.Terminal{Console: a.con, In: a.conIn},
		SecureMoment: sm, Tries: a.cmdline.PBN.Tries, Typed: a.timing.Exclude,
		Entered: func() {
			a.entered = a.timing.Since()
			if calibrated != nil {
				sm.Argon2, calibrated = <-calibrated, nil
			}
		},
		Prompted: func() {
			calibrated = make(chan keyfile.Argon2Params, 1)
			go func() { calibrated <- keyfile.Calibrate(keyfile.DefaultArgon2Target) }()
		},
		Logger: a.log,
	}
	if dir := a.passwordChanger(sm.Directory); dir != nil {
		st.Passwords = dir
	}
	res, err := st.Run(ctx)
	if err != nil {
		return nil, err
	}
	switch res.Mode {
	case provisioning.Autoboot:
		a.session = handoff.Session{Stage: handoff.StageProvisioning, Online: true}
		a.say("unlock: unattended boot")
	case provisioning.SignedIn:
		a.session = handoff.Session{Stage: handoff.StageSecureMoment, Online: true}
		a.stamp("securemoment", a.entered)
		a.say("secure moment: %s", madeFor(res.KeyFile))
	}
	return res.KeyFile, nil
}

// madeFor says whose the secure moment made the computer: its user's, or
// nobody's yet when an administrator account of the package installed it.
func madeFor(f *keyfile.KeyFile) string {
	if f.Header().Kind == keyfile.KindAdministrator {
		return describe(f) + " installed this computer; the first user to sign in becomes its owner"
	}
	return "this computer is now " + describe(f) + "'s"
}

// provisioningFile returns the provisioning key file, and whether a
// user's or an administrator's key file lies beside it.
func provisioningFile(files []*keyfile.KeyFile) (prov *keyfile.KeyFile, owned bool) {
	for _, f := range files {
		if f.Header().Kind == keyfile.KindProvisioning {
			prov = f
		} else {
			owned = true
		}
	}
	return prov, owned
}

// secureMoment puts the secure moment together from the device's parts:
// the ESP, writable; the LUKS2 volume; the TPM; the domain; and the key
// server that the provisioning key file names.
func (a *agent) secureMoment(ctx context.Context, h keyfile.Header) (*securemoment.Device, error) {
	if err := a.espWritable(); err != nil {
		return nil, err
	}
	if err := linkDevFD(); err != nil {
		return nil, err
	}
	cs, err := disk.Cryptsetup()
	if err != nil {
		return nil, err
	}
	t, err := a.openTPM(ctx)
	if err != nil {
		return nil, err
	}
	network, err := a.networkFactor(ctx)
	if err != nil {
		return nil, err
	}
	srv, err := a.keyServer(ctx, h.Server)
	if err != nil {
		return nil, err
	}
	d := &securemoment.Device{
		ESP: keyfile.OSFS{}, KeyDir: filepath.Join(espMount, disk.KeyDir),
		Volume: disk.Keyslots{Cryptsetup: cs, Dev: a.luksDev.Path}, TPM: t, Server: srv, Network: network,
		Logger: slog.New(provisioning.StepReporter(a.log.Handler(), a.sayStep)),
	}
	dir, err := a.directory()
	if err != nil {
		a.log.Warn("no sign-in", "err", err)
		d.Directory = noDirectory{err}
	} else {
		d.Directory = dir
	}
	return d, nil
}

// sayStep says a step of the secure moment on the console as it ends, so
// that the person (and a test cutting the power) sees how far it got, and
// stamps the moment the user's key file is stored.
func (a *agent) sayStep(e provisioning.StepEvent) {
	outcome := "done"
	switch {
	case e.Failed:
		outcome = "failed"
	case !e.Did:
		outcome = "already done"
	}
	a.say("secure moment: %s: %s (%d ms)", e.Step, outcome, e.Took.Milliseconds())
	if e.Step == securemoment.StepStore && !e.Failed {
		a.stamp("keystored", a.entered)
	}
}

// stamp records a phase in the timing file.
func (a *agent) stamp(name string, start time.Duration) {
	if err := a.timing.Stamp(name, start); err != nil {
		a.log.Warn("timing file", "err", err)
	}
}

// espWritable mounts the ESP again read-write, for the secure moment to
// store the user's key file; the unlock step syncs and unmounts it.
func (a *agent) espWritable() error {
	flags := uintptr(unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(a.espDev.Path, espMount, disk.TypeVFAT, flags, "fmask=0177,dmask=0077"); err != nil {
		return &os.PathError{Op: "remount read-write", Path: espMount, Err: err}
	}
	return nil
}

// linkDevFD makes /dev/fd, through which cryptsetup reads the keys that
// disk.Keyslots hands it on descriptors of their own; devtmpfs has no
// such link.
func linkDevFD() error {
	if err := os.Symlink("/proc/self/fd", "/dev/fd"); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}
