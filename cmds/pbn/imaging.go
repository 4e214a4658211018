package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/enroll"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/stage"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Where the imaging mode puts things on the ESP. The lab boots the kernel
// directly afterwards, so that nothing reads them there yet.
//
// TODO: a UEFI boot entry (efivars) or a unified kernel image as
// EFI/BOOT/BOOTX64.EFI, so that firmware boots the installed files; the
// lab has SeaBIOS and no OVMF to test either with.
const (
	bootDir        = "EFI/PBN"
	bootKernel     = bootDir + "/vmlinuz"
	bootImage      = bootDir + "/pbn.img"
	bootCmdline    = bootDir + "/cmdline"
	provisioningKF = "provisioning" + keyfile.Ext
	imagingMapper  = "pbn-imaging"
)

// imageTimeout bounds the whole imaging: a payload of gigabytes at the
// tens of MiB a second of a LAN takes minutes; one that takes an hour is
// stuck.
const imageTimeout = time.Hour

// imager is the imaging mode's state, filled in step by step.
type imager struct {
	a      *agent
	cfg    *config.Config
	client *http.Client
	crypt  string

	disk     string // the whole disk: /dev/vda
	layout   imaging.Layout
	esp      *disk.Device
	root     *disk.Device
	luksUUID string
	// setup opens the LUKS2 volume until the provisioning key file's
	// keyslot replaces it: random, and wiped when imaging ends.
	setup secret.Bytes
}

// image is the imaging mode (pbn.mode=image): the drivers and the network
// as at every boot, then the disk is imaged, and the computer restarts
// into the provisioning stage. It returns only on failure.
func (a *agent) image(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, imageTimeout)
	defer cancel()
	m := &imager{a: a, setup: secret.Random(64)}
	defer m.setup.Wipe()
	steps := []stage.Step{
		{Name: "drivers", Run: a.drivers},
		{Name: "network", Run: a.network},
		{Name: "target", Run: m.target},
		{Name: "partition", Run: m.partition},
		{Name: "payload", Run: m.payload},
		{Name: "esp", Run: m.bootFiles},
		{Name: "enroll", Run: m.enroll},
	}
	if err := stage.Run(ctx, a.timing, steps); err != nil {
		return err
	}
	a.say("imaging: done in %v; restarting into the provisioning stage",
		a.timing.Since().Round(time.Millisecond))
	a.con.Drain()
	unix.Sync()
	return fmt.Errorf("imaging: restart: %w", unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART))
}

// target loads the configuration and picks the disk, refusing one that
// holds data unless the configuration allows overwriting it.
func (m *imager) target(ctx context.Context) error {
	cfg, err := config.Load(config.Dir)
	if err != nil {
		return err
	}
	if !cfg.HasImaging() {
		return errNoImaging
	}
	m.cfg = cfg
	// TODO: the clock is the guest's, which DESIGN.md does not trust in
	// pre-boot; a floor at the image's build time needs a build time in
	// the image, which the reproducible build dates at the epoch.
	tc, err := cfg.ImagingTLS(time.Now)
	if err != nil {
		return err
	}
	m.client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc,
		ResponseHeaderTimeout: 30 * time.Second}}
	if m.crypt, err = disk.Cryptsetup(); err != nil {
		return err
	}

	if m.disk, err = m.findDisk(ctx); err != nil {
		return err
	}
	f, err := os.Open(m.disk)
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	found, err := imaging.Inspect(f)
	f.Close()
	if err != nil {
		return err
	}
	finished := false
	if found.State == imaging.Ours {
		finished = m.finished(ctx)
	}
	if err := imaging.Refuse(found, finished, cfg.Imaging.Overwrite); err != nil {
		return err
	}
	m.a.say("imaging: %s, %s", m.disk, describeFinding(found, finished))
	return nil
}

var errNoImaging = errors.New("imaging: the configuration has no imaging section")

func describeFinding(f imaging.Finding, finished bool) string {
	switch {
	case f.State == imaging.Blank:
		return "blank"
	case f.State == imaging.Ours && finished:
		return "a finished PBN installation, overwritten as the configuration allows"
	case f.State == imaging.Ours:
		return "an imaging that was cut off: starting again"
	}
	return f.What + ", overwritten as the configuration allows"
}

// findDisk returns the configured disk, or the first fixed disk once one
// appears.
func (m *imager) findDisk(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, m.a.cmdline.PBN.DeviceTimeout)
	defer cancel()
	want := m.cfg.Imaging.Disk
	what := cmp.Or(want, "a fixed disk")
	for {
		disks, err := imaging.FixedDisks(disk.Sysfs{})
		if err != nil {
			return "", err
		}
		for _, d := range disks {
			if want == "" || d == want {
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", &disk.NotFoundError{What: what, Waited: m.a.cmdline.PBN.DeviceTimeout}
		case <-time.After(disk.ScanPoll):
		}
	}
}

// finished reports whether a disk of PBN's layout holds a finished
// imaging: its ESP, mounted read-only for a moment, has a key file. An
// ESP that does not mount is an imaging cut off before it was formatted.
func (m *imager) finished(ctx context.Context) bool {
	for _, mod := range espModules {
		m.a.loadModule(mod)
	}
	devs, err := disk.Scan(disk.Sysfs{})
	if err != nil {
		return false
	}
	for i := range devs {
		d := &devs[i]
		if d.Disk != filepath.Base(m.disk) || d.Part == nil || d.Part.Number != 1 || !d.IsESP() {
			continue
		}
		if err := disk.MountESP(d, espMount); err != nil {
			m.a.log.Warn("imaging: esp", "err", err)
			return false
		}
		done, err := imaging.Finished(espMount)
		if uerr := unix.Unmount(espMount, 0); uerr != nil {
			m.a.log.Warn("imaging: unmount esp", "err", uerr)
		}
		return err == nil && done
	}
	return false
}

// partition writes the GPT, has the kernel read it, and formats both
// partitions: FAT on the ESP, LUKS2 on the root with the setup secret.
func (m *imager) partition(ctx context.Context) error {
	f, err := os.OpenFile(m.disk, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("imaging: size of %s: %w", m.disk, err)
	}
	sector, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		return fmt.Errorf("imaging: sector size of %s: %w", m.disk, err)
	}
	espMiB := cmp.Or(m.cfg.Imaging.ESPMiB, imaging.DefaultESPMiB)
	if m.layout, err = imaging.Plan(size, sector, espMiB); err != nil {
		return err
	}
	if err := m.layout.Write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKRRPART, 0); errno != 0 {
		return fmt.Errorf("imaging: the kernel did not read the new partition table of %s: %w", m.disk, errno)
	}
	if err := m.waitPartitions(ctx); err != nil {
		return err
	}
	m.a.say("imaging: GPT written: ESP %s (%d MiB), root %s (%d MiB)", m.esp.Path, espMiB,
		m.root.Path, m.layout.RootBytes()>>20)

	if err := mkfsVFAT(ctx, m.esp.Path); err != nil {
		return err
	}
	m.luksUUID = imaging.NewUUID()
	if err := disk.FormatLUKS(ctx, m.crypt, m.root.Path, m.luksUUID, m.setup); err != nil {
		return err
	}
	m.a.say("imaging: ESP formatted, root formatted as LUKS2 %s", m.luksUUID)
	return nil
}

// waitPartitions waits for the kernel's nodes of the two new partitions.
func (m *imager) waitPartitions(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.a.cmdline.PBN.DeviceTimeout)
	defer cancel()
	var err error
	for _, p := range []struct {
		dst  **disk.Device
		part disk.Partition
	}{{&m.esp, m.layout.ESP}, {&m.root, m.layout.Root}} {
		*p.dst, err = disk.Wait(ctx, disk.Sysfs{}, "PARTUUID="+p.part.GUID, func(d *disk.Device) bool {
			return d.Part != nil && d.Part.GUID == p.part.GUID
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// mkfsVFAT formats the ESP with the image's mkfs.vfat, labelled ESP.
func mkfsVFAT(ctx context.Context, dev string) error {
	out, err := exec.CommandContext(ctx, "/"+initramfs.MkfsVFATPath, "-n", "ESP", dev).CombinedOutput()
	if err != nil {
		return fmt.Errorf("imaging: mkfs.vfat %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// payload streams the OS payload into the opened LUKS2 volume.
func (m *imager) payload(ctx context.Context) error {
	for _, mod := range diskModules {
		m.a.loadModule(mod)
	}
	if err := disk.OpenLUKS(ctx, m.crypt, m.root.Path, imagingMapper, m.setup); err != nil {
		return err
	}
	err := m.writePayload(ctx, disk.Mapper(imagingMapper))
	return errors.Join(err, disk.CloseLUKS(ctx, m.crypt, imagingMapper))
}

func (m *imager) writePayload(ctx context.Context, dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	defer f.Close()
	room, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	url := cmp.Or(m.a.cmdline.PBN.Payload, m.cfg.Imaging.Payload)
	p, err := imaging.Fetch(ctx, m.client, url, f, room, imaging.DefaultProgressEvery, func(p imaging.Progress) {
		m.a.say("imaging: payload %s", p)
	})
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	m.a.say("imaging: payload written: %d bytes in %v", p.Done, p.Elapsed.Round(time.Millisecond))
	return nil
}

// bootFiles mounts the ESP and installs the kernel, the image and the
// kernel command line of the boot entry.
func (m *imager) bootFiles(ctx context.Context) error {
	if err := mountESPWritable(m.esp.Path); err != nil {
		return err
	}
	err := m.installBootFiles(ctx)
	return errors.Join(err, unmount(espMount))
}

func (m *imager) installBootFiles(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(espMount, bootDir), 0o700); err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	for _, f := range []struct{ path, url string }{
		{bootKernel, m.cfg.Imaging.Kernel}, {bootImage, m.cfg.Imaging.Image},
	} {
		if err := m.fetchFile(ctx, f.url, filepath.Join(espMount, f.path)); err != nil {
			return err
		}
	}
	line := "rd.luks.uuid=" + m.luksUUID + "\n"
	if err := writeSynced(filepath.Join(espMount, bootCmdline), []byte(line)); err != nil {
		return err
	}
	m.a.say("imaging: boot files installed in %s", bootDir)
	return nil
}

// fetchFile fetches url into the file at path, synced.
func (m *imager) fetchFile(ctx context.Context, url, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	_, err = imaging.Fetch(ctx, m.client, url, f, 0, imaging.DefaultProgressEvery, nil)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// enroll enrolls the device with the key server, gives the LUKS2 volume
// the FDE secret of its key file in place of the setup secret, and writes
// the key file on the ESP: the last write, which marks the imaging
// finished. The key file is the provisioning key file, or the owner's
// when the configuration names one (enroll.EnrollOwned says what
// protects it until their first sign-in).
//
// TODO: an imaging cut off after the enrolment and before the key file is
// written enrolls the device again when it starts over, and leaves the
// first binding unused on the server until an administrator revokes it.
func (m *imager) enroll(ctx context.Context) error {
	f, err := m.enrolled(ctx)
	if err != nil {
		return err
	}
	defer f.Close() // wipes the FDE secret
	slots := disk.Keyslots{Cryptsetup: m.crypt, Dev: m.root.Path}
	slot, err := slots.Add(ctx, m.setup, f.Keyring().FDE)
	if err != nil {
		return err
	}
	if err := slots.Tag(ctx, slot, f.Header().ID); err != nil {
		return err
	}
	if err := slots.Kill(ctx, 0); err != nil { // the setup secret's, FormatLUKS's keyslot 0
		return err
	}

	if err := mountESPWritable(m.esp.Path); err != nil {
		return err
	}
	h := f.Header()
	name, what := provisioningKF, "provisioning key file"
	if h.Kind != keyfile.KindProvisioning {
		name, what = h.SID+keyfile.Ext, "key file of "+h.UPN
	}
	dir := filepath.Join(espMount, disk.KeyDir)
	err = os.MkdirAll(dir, 0o700)
	if err == nil {
		err = keyfile.Replace(keyfile.OSFS{}, filepath.Join(dir, name), f)
	}
	if err = errors.Join(err, unmount(espMount)); err != nil {
		return fmt.Errorf("imaging: %s: %w", what, err)
	}
	m.a.say("imaging: enrolled as device %s; %s %s written", h.DeviceID, what, h.ID)
	return nil
}

// enrolled enrolls the device through the administrator's file in the
// image, with its TPM, and returns its key file, open: the provisioning
// key file, or the owner's when the configuration names one.
func (m *imager) enrolled(ctx context.Context) (*keyfile.KeyFile, error) {
	admin, err := keyserver.ReadAdminFile(filepath.Join(config.Dir, config.ImagingAdminFile))
	if err != nil {
		return nil, fmt.Errorf("imaging: %w", err)
	}
	client, err := admin.Client()
	if err != nil {
		return nil, fmt.Errorf("imaging: %w", err)
	}
	t, err := tpm.Open(ctx, "", &tpm.Options{Logger: m.a.log})
	if err != nil {
		return nil, err
	}
	defer t.Close()
	id := keyfile.NewID()
	dev := enroll.Device{ID: id, Hostname: "pbn-" + id.String()[:8],
		Group: cmp.Or(m.cfg.Imaging.Group, config.DefaultImagingGroup), Log: m.a.log}
	if owner := m.cfg.Imaging.Owner; owner != "" {
		return enroll.EnrollOwned(ctx, t, client, dev, owner)
	}
	return enroll.Enroll(ctx, t, client, dev)
}

// mountESPWritable mounts the ESP read-write at espMount.
func mountESPWritable(dev string) error {
	if err := os.MkdirAll(espMount, 0o700); err != nil {
		return fmt.Errorf("imaging: %w", err)
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(dev, espMount, disk.TypeVFAT, flags, "fmask=0177,dmask=0077"); err != nil {
		return fmt.Errorf("imaging: mount esp %s: %w", dev, err)
	}
	return nil
}

func unmount(dir string) error {
	unix.Sync()
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("imaging: unmount %s: %w", dir, err)
	}
	return nil
}
