package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/disk"
)

// The kernel command line may name several LUKS volumes (rd.luks.uuid=
// and rd.luks.name= more than once). One holds the root: its failure to
// open stops the boot, and the key files' ESP is looked for on its disk.
// The others are data volumes, each opened with the FDE secret of the key
// file that opened, as systemd-cryptsetup tries the passphrase it cached
// in the kernel keyring on each further volume: a data volume carries a
// keyslot of its own for that secret. A data volume that is missing or
// does not open with it is said on the console, and the boot goes on
// without it.
//
// TODO: keyslots are added and killed on the root's volume alone: by the
// secure moment (the user's new FDE secret in, the provisioning one out)
// and by pbn/signin for a further user's key file. A data volume keyed for
// the provisioning key file no longer opens after the secure moment, and
// one keyed for the owner does not open for a further user. Giving those
// packages every named volume (disk.Keyslots for each) would keep the
// volumes in step.

// errNoVolume says the kernel command line names no LUKS volume.
var errNoVolume = errors.New("the kernel command line names no LUKS volume (rd.luks.uuid= or rd.luks.name=)")

// rootVolume returns the LUKS volume that holds the root: the rd.luks
// volume that root= names itself (by the LUKS UUID or the mapper path),
// else the first rd.luks volume, or, with none, the root device itself
// when root= names it by UUID.
func rootVolume(c *cmdline.Cmdline) (cmdline.LUKS, error) {
	for _, v := range c.LUKS {
		if namesVolume(c.Root, v) {
			return v, nil
		}
	}
	if len(c.LUKS) > 0 {
		return c.LUKS[0], nil
	}
	if c.Root.Kind == cmdline.DeviceUUID {
		return cmdline.LUKS{UUID: c.Root.Value, Name: "luks-" + c.Root.Value}, nil
	}
	return cmdline.LUKS{}, errNoVolume
}

// namesVolume reports whether root= names the LUKS volume v itself: its
// header's UUID, or the device it opens as.
func namesVolume(root cmdline.Device, v cmdline.LUKS) bool {
	switch root.Kind {
	case cmdline.DeviceUUID:
		return root.Value == v.UUID
	case cmdline.DevicePath:
		return root.Value == disk.Mapper(v.Name)
	}
	return false
}

// dataVolumes returns the rd.luks volumes other than root, in the order
// given, each UUID once: a volume named twice opens once, by its first
// name.
func dataVolumes(c *cmdline.Cmdline, root cmdline.LUKS) []cmdline.LUKS {
	seen := map[string]bool{root.UUID: true}
	var out []cmdline.LUKS
	for _, v := range c.LUKS {
		if !seen[v.UUID] {
			seen[v.UUID] = true
			out = append(out, v)
		}
	}
	return out
}

// openData opens the data volumes with the opened key file's FDE secret.
// The wait for their devices is bounded by the device timeout as a whole,
// from the step's start; the coldplug has ended by then (the modules step
// waited for it).
func (a *agent) openData(ctx context.Context, cryptsetup string) {
	vols := dataVolumes(a.cmdline, a.volume)
	if len(vols) == 0 {
		return
	}
	wait, cancel := context.WithTimeout(ctx, a.cmdline.PBN.DeviceTimeout)
	defer cancel()
	for _, v := range vols {
		if err := a.openVolume(ctx, wait, cryptsetup, v); err != nil {
			a.log.Warn("data volume not opened", "err", err)
			a.say("disk: %s", err.Sentence())
		}
	}
}

// openVolume waits (within wait) for the data volume v and opens it
// (within ctx).
func (a *agent) openVolume(ctx, wait context.Context, cryptsetup string, v cmdline.LUKS) *volumeError {
	dev, err := disk.Wait(wait, disk.Sysfs{}, "UUID="+v.UUID, isLUKS(v.UUID))
	if err != nil {
		return &volumeError{Volume: v, Err: err}
	}
	if err := disk.OpenLUKS(ctx, cryptsetup, dev.Path, v.Name, a.opened.Keyring().FDE); err != nil {
		return &volumeError{Volume: v, Err: err}
	}
	a.say("disk: %s opened as %s", dev.Path, disk.Mapper(v.Name))
	return nil
}

// isLUKS returns a test for the LUKS volume whose header has the UUID.
func isLUKS(uuid string) func(*disk.Device) bool {
	return func(d *disk.Device) bool { return d.Super.Type == disk.TypeLUKS && d.Super.UUID == uuid }
}

// volumeError says a data volume was not opened: openVolume returns it,
// with a *disk.NotFoundError when the volume did not appear and
// disk.ErrWrongKey when it has no keyslot for the FDE secret.
type volumeError struct {
	Volume cmdline.LUKS
	Err    error
}

func (e *volumeError) Error() string {
	return fmt.Sprintf("data volume %s (UUID %s): %v", e.Volume.Name, e.Volume.UUID, e.Err)
}

func (e *volumeError) Unwrap() error { return e.Err }

// Sentence returns the console's line: the boot goes on without the
// volume.
func (e *volumeError) Sentence() string {
	var missing *disk.NotFoundError
	switch {
	case errors.As(e.Err, &missing):
		return fmt.Sprintf("The encrypted disk %s could not be found, so the computer starts without it. "+
			"Check that it is connected, or ask your administrator.", e.Volume.Name)
	case errors.Is(e.Err, disk.ErrWrongKey):
		return fmt.Sprintf("The encrypted disk %s does not open with your key, so the computer starts "+
			"without it. Ask your administrator to add your key to it.", e.Volume.Name)
	}
	return fmt.Sprintf("The encrypted disk %s could not be opened, so the computer starts without it. "+
		"Ask your administrator for help.", e.Volume.Name)
}
