package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/enroll"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Exit codes of pbnctl install, besides exitNoTPM, exitUnreachable and
// exitNotAdmin, which it shares with the tpm and server commands.
const (
	exitWrongPassphrase = 3 // the passphrase opens no keyslot of the volume
	exitSignInRefused   = 4 // the directory or the key server refused the user's sign-in
	exitClaimRefused    = 5 // the key server's policy or the device's state refused the user
)

// Defaults of pbnctl install.
const (
	defaultESP         = "/boot/efi"
	defaultInstallWait = 5 * time.Minute
	// imageSuffix names the copy of the initramfs that install replaced.
	imageSuffix = ".pre-pbn"
)

const installHelp = `usage: pbnctl install --device DEV --group GROUP --image FILE [flags] ACCOUNT

Sets up a Linux system that is in use, with a LUKS2 volume and a TPM 2.0,
for PBN, with no provisioning stage: it enrolls the device with the key
server (as the administrator of --admin), signs ACCOUNT in, who becomes
the device's owner, and makes their key file (their password and this TPM
together, a recovery key held in escrow by the server, their group keys
and the enterprise key) on the ESP, with a LUKS2 keyslot of its own that
the existing passphrase authorizes and that is tagged with the key file.
Last, it installs the PBN image (--image, built with pbnctl image build)
as the system's initramfs (--initramfs), keeping the one it replaces
beside it as FILE` + imageSuffix + `.

The existing passphrase keeps its keyslot: it still opens the volume
until an administrator removes it (cryptsetup luksKillSlot, with the
slot install prints), once the user has signed in through PBN. Run again,
install finishes what a failed run left and changes nothing else.

The domain and its CA are the image's configuration: --config DIR holds
the pbn.conf and ca.pem the image was built with.

At a terminal, the user's password and the passphrase are asked for,
without echo. A deployment tool with no person at the keyboard passes
--password-stdin with the user's password as one line on standard input,
and --passphrase-file FILE whose bytes, all of them, are the passphrase
(as cryptsetup's --key-file reads a file), and checks the exit code.

The boot loader's kernel command line is not changed: it needs
rd.luks.uuid=UUID, which install prints.

exit codes:
  0   success
  1   any other failure
  2   bad flags or arguments
  3   the passphrase opens no keyslot of the volume; nothing was changed
  4   the directory or the key server refused the user's sign-in
  5   the key server refused the user on this device (policy, lost device)
  8   no TPM at the path given
  10  the key server cannot be reached, or its key is not the pinned one
  11  the key server does not know the administrator's key
`

// installFlags are pbnctl install's flags.
type installFlags struct {
	*serverFlags
	device, esp, image, initramfs, configDir string
	hostname, group, tpmPath, cryptsetup     string
	passphraseFile                           string
	passwordStdin                            bool
	argon2Target                             time.Duration
}

func newInstallFlags(io stdio) *installFlags {
	f := &installFlags{serverFlags: newServerFlags(io, "install", "")}
	fl := f.fl
	fl.StringVar(&f.device, "device", "", "the LUKS2 `volume`, a block device such as /dev/nvme0n1p3 (required)")
	fl.StringVar(&f.esp, "esp", defaultESP, "the EFI system partition's mount `point`")
	fl.StringVar(&f.image, "image", "", "the PBN image `file` to install (required)")
	fl.StringVar(&f.initramfs, "initramfs", "", "the system's initramfs `file` to replace "+
		"(default /boot/initrd.img-RELEASE of the running kernel)")
	fl.StringVar(&f.configDir, "config", config.Dir, "the `directory` of the image's pbn.conf and ca.pem")
	fl.StringVar(&f.hostname, "hostname", "", "the device's host`name` on the key server (default this system's)")
	fl.StringVar(&f.group, "group", "", "the device `group` whose policy applies (required)")
	fl.StringVar(&f.tpmPath, "tpm", "", "the `TPM`: a device or unix:PATH for swtpm "+
		"(default /dev/tpmrm0, else /dev/tpm0)")
	fl.StringVar(&f.cryptsetup, "cryptsetup", "", "the cryptsetup `program` (default: found in the usual places)")
	fl.StringVar(&f.passphraseFile, "passphrase-file", "", "read the existing passphrase from `file`, "+
		"all its bytes, instead of the terminal")
	fl.BoolVar(&f.passwordStdin, "password-stdin", false,
		"read the user's password from standard input, one line, instead of the terminal")
	fl.DurationVar(&f.argon2Target, "argon2-target", keyfile.DefaultArgon2Target,
		"how long the derivation of the user's password should take on this machine")
	fl.Usage = func() {
		fmt.Fprint(io.err, installHelp, "\nflags:\n")
		fl.PrintDefaults()
	}
	return f
}

// check fills in the defaults and checks what is required.
func (f *installFlags) check() error {
	if f.device == "" || f.image == "" || f.group == "" {
		return usageError("install: --device, --image and --group are required")
	}
	var err error
	if f.hostname == "" {
		if f.hostname, err = os.Hostname(); err != nil {
			return fmt.Errorf("install: hostname: %w", err)
		}
	}
	if f.initramfs == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return fmt.Errorf("install: kernel release: %w", err)
		}
		f.initramfs = "/boot/initrd.img-" + unix.ByteSliceToString(u.Release[:])
	}
	if f.cryptsetup == "" {
		if f.cryptsetup, err = disk.Cryptsetup(); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	return nil
}

// runInstall is pbnctl install.
func runInstall(ctx context.Context, io stdio, args []string) error {
	f := newInstallFlags(io)
	if err := f.parse(args, 1); err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	account := f.fl.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, defaultInstallWait)
	defer cancel()

	dir, err := f.directory()
	if err != nil {
		return err
	}
	secrets := secretReader{f.passwordStdin, io}
	password, err := secrets.read("password of "+account, false)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer password.Wipe()
	passphrase, err := f.readPassphrase(io)
	if err != nil {
		return err
	}
	defer passphrase.Wipe()
	t, err := tpm.Open(ctx, f.tpmPath, &tpm.Options{Logger: io.log, CommandTimeout: tpmCommandTimeout})
	if err != nil {
		return withCode(exitNoTPM, fmt.Errorf("install: %w", err))
	}
	defer t.Close()

	s, err := f.secureMoment(ctx, io, t, dir, account, password, passphrase)
	if err != nil {
		return err
	}
	defer s.res.KeyFile.Close()
	// The image goes in last: until the key file and its keyslot are
	// there, the system boots as before.
	if err := installImage(f.image, f.initramfs); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	upn := s.res.Identity.UPN
	fmt.Fprintf(io.out, "initramfs: %s (the one before kept as %s%s)\n", f.initramfs, f.initramfs, imageSuffix)
	fmt.Fprintf(io.out, "kernel command line: rd.luks.uuid=%s\n", s.uuid)
	fmt.Fprintf(io.out, "the passphrase still opens keyslot %d; once %s has signed in through PBN, "+
		"remove it: cryptsetup luksKillSlot %s %d\n", s.keep, upn, f.device, s.keep)
	return nil
}

// installed is what the secure moment of install left.
type installed struct {
	res  *securemoment.Result
	keep int    // the passphrase's keyslot
	uuid string // the volume's
}

// secureMoment checks the system, enrolls the device and runs the secure
// moment from the passphrase. The caller closes the result's key file.
func (f *installFlags) secureMoment(ctx context.Context, io stdio, t *tpm.TPM, dir *ad.Client,
	account string, password, passphrase secret.Bytes) (*installed, error) {
	volume := disk.Keyslots{Cryptsetup: f.cryptsetup, Dev: f.device}
	s := &installed{}
	var err error
	if s.keep, s.uuid, err = f.checkSystem(ctx, volume, passphrase); err != nil {
		return nil, err
	}

	keyDir := filepath.Join(f.esp, disk.KeyDir)
	e, err := f.enrolment(ctx, io, t, keyDir)
	if err != nil {
		return nil, err
	}
	key, err := t.DeviceKey(ctx)
	if err != nil {
		return nil, withCode(exitNoTPM, fmt.Errorf("install: %w", err))
	}
	server, err := keyserver.NewClient(e.Server.URL, e.Server.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	defer server.CloseIdleConnections()
	d := &securemoment.Device{ESP: keyfile.OSFS{}, KeyDir: keyDir, Volume: volume, TPM: t,
		Directory: dir, Server: server, Logger: io.log,
		Argon2:   keyfile.Calibrate(f.argon2Target),
		Existing: &securemoment.Existing{Key: passphrase, DeviceID: e.DeviceID, Server: e.Server}}
	// The key file is sealed to the PCRs of this boot, the OS's; the
	// boots through PBN measure another initramfs where the firmware
	// measures it (PCR 9 with an EFI stub, or PCR 4 with a unified kernel
	// image), so the TPM may refuse the first of them. The user's first
	// online sign-in there seals it again to that boot (pbn/signin's
	// reseal path, through the recovery key escrowed here).
	// TODO: predict the PBN boot's PCRs from the firmware's event log
	// and the image, so that the first PBN boot opens offline too; until
	// then it needs the enterprise network (or the recovery key).
	if s.res, err = d.Run(ctx, account, password); err != nil {
		var ae *ad.Error
		if errors.As(err, &ae) {
			fmt.Fprintln(io.out, ae.Sentence())
		}
		return nil, installError(err)
	}
	fmt.Fprintf(io.out, "key file: %s for %s (%s)\nkeyslot: %d, tagged %s\n", s.res.Path,
		s.res.Identity.UPN, s.res.Identity.SID, s.res.Slot, s.res.KeyFile.Header().ID)
	return s, nil
}

// directory returns the client of the domain that the image's
// configuration names.
func (f *installFlags) directory() (*ad.Client, error) {
	cfg, err := config.Load(f.configDir)
	if err != nil {
		return nil, usageError("install: %v", err)
	}
	ac, err := cfg.ADConfig(time.Now)
	if err != nil {
		return nil, usageError("install: the configuration in %s: %v", f.configDir, err)
	}
	c, err := ad.New(ac)
	if err != nil {
		return nil, usageError("install: %v", err)
	}
	return c, nil
}

// readPassphrase reads the existing passphrase from --passphrase-file, or
// from the terminal.
func (f *installFlags) readPassphrase(io stdio) (secret.Bytes, error) {
	if f.passphraseFile == "" {
		p, err := secretReader{false, io}.read("existing passphrase of "+f.device, false)
		if err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
		return p, nil
	}
	b, err := os.ReadFile(f.passphraseFile)
	if err != nil {
		return nil, usageError("install: %v", err)
	}
	return secret.Bytes(b), nil
}

// checkSystem checks, before anything is changed, that the passphrase
// opens the volume and that the image and the ESP are there. It returns
// the passphrase's keyslot and the volume's UUID.
func (f *installFlags) checkSystem(ctx context.Context, v disk.Keyslots, passphrase secret.Bytes) (int, string, error) {
	slot, err := v.Find(ctx, passphrase)
	if errors.Is(err, disk.ErrWrongKey) {
		return 0, "", withCode(exitWrongPassphrase, fmt.Errorf("install: %s: %w", f.device, err))
	}
	if err != nil {
		return 0, "", fmt.Errorf("install: %w", err)
	}
	dev, err := os.Open(f.device)
	if err != nil {
		return 0, "", fmt.Errorf("install: %w", err)
	}
	defer dev.Close()
	sb, err := disk.Probe(dev)
	if err != nil {
		return 0, "", fmt.Errorf("install: %s: %w", f.device, err)
	}
	if _, err := os.Stat(f.image); err != nil {
		return 0, "", usageError("install: %v", err)
	}
	if !mountPoint(f.esp) {
		return 0, "", usageError("install: the ESP %s is not a mounted file system", f.esp)
	}
	return slot, sb.UUID, nil
}

// mountPoint reports whether dir is a directory that a file system is
// mounted on: its device differs from its parent's, or it is its parent.
// A key file written to an ESP that is not mounted would land on the
// encrypted root, where the pre-boot agent cannot read it.
func mountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR ||
		unix.Stat(filepath.Join(dir, ".."), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino
}

// deviceID is the device's ID on the key server: derived from its TPM's
// endorsement key, so that install run again enrolls the same device.
func deviceID(ctx context.Context, t *tpm.TPM) (keyfile.ID, error) {
	ek, err := t.EKPublic(ctx)
	if err != nil {
		return keyfile.ID{}, err
	}
	sum := sha256.Sum256(append([]byte("pbn device id\x00"), ek...))
	return keyfile.ID(sum[:len(keyfile.ID{})]), nil
}

// enrolment enrolls the device, unless a key file of it on the ESP says
// it was enrolled before: enrolling it again would drop its owners on the
// server.
func (f *installFlags) enrolment(ctx context.Context, io stdio, t *tpm.TPM, keyDir string) (*enroll.Enrollment, error) {
	id, err := deviceID(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if e, err := enrolledBefore(keyDir, id); e != nil || err != nil {
		return e, err
	}
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	admin, ctx, cancel, err := f.client(ctx)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	defer cancel()
	defer admin.CloseIdleConnections()
	e, err := enroll.EnrollDevice(ctx, t, admin, enroll.Device{ID: id, Hostname: f.hostname,
		Group: f.group, Log: io.log})
	if err != nil {
		return nil, installError(err)
	}
	fmt.Fprintf(io.out, "device: %s enrolled as %s in %s on %s\n", id, f.hostname, f.group, e.Server.URL)
	return e, nil
}

// enrolledBefore returns the enrolment that a key file of device id on
// the ESP records, without its key, or nil when there is none.
func enrolledBefore(keyDir string, id keyfile.ID) (*enroll.Enrollment, error) {
	paths, err := keyfile.List(keyfile.OSFS{}, keyDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("install: %w", err)
	}
	for _, p := range paths {
		kf, err := keyfile.Load(keyfile.OSFS{}, p)
		if err != nil {
			continue
		}
		h := kf.Header()
		kf.Close()
		if h.DeviceID == id {
			return &enroll.Enrollment{DeviceID: id, Server: h.Server}, nil
		}
	}
	return nil, nil
}

// installError gives an error of the enrolment or the secure moment its
// exit code.
func installError(err error) error {
	var ae *ad.Error
	switch {
	case errors.As(err, &ae), errors.Is(err, keyserver.ErrLoginRefused):
		return withCode(exitSignInRefused, err)
	case errors.Is(err, keyserver.ErrNotAllowed), errors.Is(err, keyserver.ErrTooManyUsers),
		errors.Is(err, keyserver.ErrDeviceLost), errors.Is(err, keyserver.ErrDeviceRetired):
		return withCode(exitClaimRefused, err)
	}
	return serverCode(err)
}

// installImage copies the image to dst crash-safely, keeping what dst
// held as dst+imageSuffix (once: a later run keeps the first).
func installImage(src, dst string) error {
	if _, err := os.Stat(dst + imageSuffix); errors.Is(err, fs.ErrNotExist) {
		switch err := copyAtomic(dst, dst+imageSuffix); {
		case errors.Is(err, fs.ErrNotExist): // no initramfs before
		case err != nil:
			return err
		}
	}
	return copyAtomic(src, dst)
}

// copyAtomic copies src to dst through a temporary file beside dst,
// synced and renamed over it, so that dst is whole at every instant.
func copyAtomic(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".new"
	w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	err = errors.Join(err, w.Sync(), w.Close())
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return keyfile.OSFS{}.SyncDir(filepath.Dir(dst))
}
