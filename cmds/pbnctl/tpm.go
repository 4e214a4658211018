package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Exit codes of pbnctl tpm, besides those it shares with pbnctl keyfile
// (exitBadKeyFile, exitWrongSecret, exitNoProtector, exitTampered).
const (
	exitNoTPM         = 8  // no TPM answers at the path given
	exitSRKMismatch   = 9  // the TPM's SRK is not the key file's
	exitPCRMismatch   = 10 // the PCRs changed since sealing
	exitLockout       = 11 // the TPM is in dictionary-attack lockout
	exitNoTPMFactor   = 12 // check: the key file has no TPM protector
	tpmCommandTimeout = 2 * time.Minute
)

const tpmHelp = `usage: pbnctl tpm SUBCOMMAND [--tpm PATH] [flags] [FILE]

subcommands:
  info    whether a TPM is present, its manufacturer, firmware and lockout state
  pcrs    the SHA-256 PCR values (--pcrs LIST, default all)
  srk     the name of the storage root key, and whether it is persistent
  check   whether a key file's TPM protectors match this TPM: its SRK and
          its current PCR values (tries no password, costs no lockout try)
  reseal  seal a key file to this TPM and its current PCRs: open it with the
          password (--password-stdin) or the recovery key (--recovery-key,
          --recovery-key-stdin; the user's password is then asked for), add
          a password-and-TPM protector and remove the old TPM protectors

--tpm chooses the TPM: a device (default /dev/tpmrm0, else /dev/tpm0),
unix:PATH or tcp:HOST:PORT for swtpm. --pcrs is a list such as 0,2,4,7,9
(reseal's default: 0,2,4,7,9, see the pbn/tpm documentation).

exit codes:
  0   success (for check: every TPM protector matches)
  1   any other failure
  2   bad flags or arguments
  3   the file is damaged or not a valid key file
  4   wrong password or recovery key
  5   no protector of the file opens with what was given
  6   the file was modified without its keys
  8   no TPM at the path given
  9   the TPM's storage root key is not the key file's (cleared or another TPM)
  10  the PCRs changed since the key file was sealed (the boot chain changed)
  11  the TPM is locked after too many wrong passwords
  12  check: the key file has no TPM protector
`

var runTPM = subcommands("tpm", tpmHelp, []command{
	{"info", "", tpmInfo},
	{"pcrs", "", tpmPCRs},
	{"srk", "", tpmSRK},
	{"check", "", tpmCheck},
	{"reseal", "", tpmReseal},
})

// tpmFlags are the flags every tpm subcommand has.
type tpmFlags struct {
	*flag.FlagSet
	path *string
}

func newTPMFlags(io stdio, name, usage string) tpmFlags {
	fl := flag.NewFlagSet("pbnctl tpm "+name, flag.ContinueOnError)
	fl.SetOutput(io.err)
	fl.Usage = func() {
		fmt.Fprintf(io.err, "usage: pbnctl tpm %s %s\n\nflags:\n", name, usage)
		fl.PrintDefaults()
		fmt.Fprintf(io.err, "\nexit codes: see pbnctl tpm -h\n")
	}
	path := fl.String("tpm", "",
		"the TPM: a device, unix:PATH or tcp:HOST:PORT (default /dev/tpmrm0, else /dev/tpm0)")
	return tpmFlags{fl, path}
}

// parseNone parses flags for a subcommand that takes no argument.
func (fl tpmFlags) parseNone(args []string) error {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return withCode(exitUsage, err)
	}
	if fl.NArg() != 0 {
		return usageError("%s: takes no arguments, have %d", fl.Name(), fl.NArg())
	}
	return nil
}

// open opens the TPM the flags name; the caller closes it.
func (fl tpmFlags) open(ctx context.Context, io stdio) (*tpm.TPM, error) {
	t, err := tpm.Open(ctx, *fl.path, &tpm.Options{Logger: io.log, CommandTimeout: tpmCommandTimeout})
	if err != nil {
		return nil, withCode(exitNoTPM, err)
	}
	return t, nil
}

// tpmError gives an error of package tpm its exit code, and the sentence a
// user would see at the pre-boot prompt.
func tpmError(io stdio, err error) error {
	var lo *tpm.LockoutError
	code := exitError
	switch {
	case errors.Is(err, tpm.ErrSRKMismatch):
		code = exitSRKMismatch
	case errors.Is(err, tpm.ErrPCRMismatch):
		code = exitPCRMismatch
	case errors.As(err, &lo):
		code = exitLockout
	default:
		return err
	}
	fmt.Fprintf(io.err, "(the user sees: %s)\n", tpm.Prompt(err))
	return withCode(code, err)
}

func tpmInfo(ctx context.Context, io stdio, args []string) error {
	fl := newTPMFlags(io, "info", "[--tpm PATH]")
	if err := fl.parseNone(args); err != nil {
		return err
	}
	t, err := fl.open(ctx, io)
	if err != nil {
		return err
	}
	defer t.Close()
	info, err := t.Info(ctx)
	if err != nil {
		return withCode(exitNoTPM, err)
	}
	fmt.Fprintf(io.out, "TPM 2.0 present\nmanufacturer: %s\nvendor: %s\nfirmware: %s\n",
		info.Manufacturer, info.Vendor, info.Firmware)
	fmt.Fprintf(io.out, "dictionary attack: %d of %d failed tries, one forgiven every %v\n",
		info.FailedTries, info.MaxTries, info.Interval)
	return nil
}

func tpmPCRs(ctx context.Context, io stdio, args []string) error {
	fl := newTPMFlags(io, "pcrs", "[--tpm PATH] [--pcrs LIST]")
	list := fl.String("pcrs", "", "the PCRs to show, such as 0,2,4,7,9 (default all)")
	if err := fl.parseNone(args); err != nil {
		return err
	}
	sel, err := pcrFlag(*list, allPCRs())
	if err != nil {
		return err
	}
	t, err := fl.open(ctx, io)
	if err != nil {
		return err
	}
	defer t.Close()
	vals, err := t.PCRs(ctx, sel)
	if err != nil {
		return err
	}
	for _, v := range vals {
		fmt.Fprintf(io.out, "sha256 %2d: %x\n", v.PCR, v.Digest)
	}
	return nil
}

func allPCRs() tpm.PCRSelection {
	var s tpm.PCRSelection
	for p := range tpm.NumPCRs {
		s = append(s, p)
	}
	return s
}

// pcrFlag parses a --pcrs value, def when it is empty.
func pcrFlag(list string, def tpm.PCRSelection) (tpm.PCRSelection, error) {
	if list == "" {
		return def, nil
	}
	sel, err := tpm.ParsePCRSelection(list)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	return sel, nil
}

func tpmSRK(ctx context.Context, io stdio, args []string) error {
	fl := newTPMFlags(io, "srk", "[--tpm PATH]")
	if err := fl.parseNone(args); err != nil {
		return err
	}
	t, err := fl.open(ctx, io)
	if err != nil {
		return err
	}
	defer t.Close()
	name, err := t.SRKName(ctx)
	if err != nil {
		return err
	}
	persistent, err := t.SRKPersistent(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(io.out, "SRK name: %x\npersistent at 0x81000001: %v\n", name, persistent)
	return nil
}

func tpmCheck(ctx context.Context, io stdio, args []string) error {
	fl := newTPMFlags(io, "check", "[--tpm PATH] FILE")
	path, err := parseFile(fl.FlagSet, args)
	if err != nil {
		return err
	}
	f, err := load(path)
	if err != nil {
		return err
	}
	t, err := fl.open(ctx, io)
	if err != nil {
		return err
	}
	defer t.Close()

	var errs []error
	found := false
	for i, p := range f.Protectors() {
		j := slices.Index(p.Factors, keyfile.FactorTPM)
		if j < 0 {
			continue
		}
		found = true
		sealed, err := tpm.ParseParams(p.Params[j])
		if err != nil {
			return withCode(exitBadKeyFile, fmt.Errorf("%s: protector %d: %w", path, i, err))
		}
		if err := t.Check(ctx, sealed); err != nil {
			fmt.Fprintf(io.out, "protector %d (%s): does not match: %v\n", i, p.Label, err)
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(io.out, "protector %d (%s): matches this TPM (SRK %x, PCRs %v)\n",
			i, p.Label, sealed.SRKName, sealed.PCRs)
	}
	if !found {
		return withCode(exitNoTPMFactor, fmt.Errorf("%s: no TPM protector", path))
	}
	if len(errs) > 0 {
		return tpmError(io, fmt.Errorf("%s: %w", path, errors.Join(errs...)))
	}
	return nil
}

func tpmReseal(ctx context.Context, io stdio, args []string) error {
	fl := newTPMFlags(io, "reseal", "[--tpm PATH] [--pcrs LIST] [open flags] FILE")
	var o openFlags
	o.register(fl.FlagSet)
	list := fl.String("pcrs", "", "the PCRs to seal to (default "+tpm.DefaultPCRs.String()+")")
	target := fl.Duration("argon2-target", keyfile.DefaultArgon2Target,
		"how long a password derivation should take on this machine")
	path, err := parseFile(fl.FlagSet, args)
	if err != nil {
		return err
	}
	sel, err := pcrFlag(*list, tpm.DefaultPCRs)
	if err != nil {
		return err
	}
	f, err := load(path)
	if err != nil {
		return err
	}
	t, err := fl.open(ctx, io)
	if err != nil {
		return err
	}
	defer t.Close()

	secrets := secretReader{stdin: o.passwordStdin || o.recoveryStdin, io: io}
	var opener []keyfile.Factor
	if o.recovery || o.recoveryStdin {
		fc, wipe, err := o.factor(io)
		if err != nil {
			return err
		}
		defer wipe()
		opener = append(opener, fc)
	}
	pw, err := secrets.read("password", len(opener) > 0)
	if err != nil {
		return err
	}
	defer pw.Wipe()
	if len(pw) == 0 {
		return usageError("reseal: the password is empty")
	}
	if len(opener) == 0 {
		opener = append(opener, keyfile.Password(pw), tpm.NewFactor(t, nil, pw))
	}
	if err := f.Open(ctx, opener...); err != nil {
		if e := tpmError(io, err); e != err {
			return e
		}
		return openError(path, err)
	}
	defer f.Close()

	n, err := tpm.Reseal(ctx, f, tpm.NewFactor(t, sel, pw), keyfile.Calibrate(*target))
	if err != nil {
		return tpmError(io, err)
	}
	if err := keyfile.Replace(keyfile.OSFS{}, path, f); err != nil {
		return err
	}
	fmt.Fprintf(io.out, "sealed %s to this TPM and PCRs %v: protector %d, generation %d\n",
		path, sel, n, f.Header().Generation)
	return nil
}
