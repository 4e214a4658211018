package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Exit codes of pbnctl keyfile.
const (
	exitBadKeyFile   = 3 // the file is damaged or not a valid key file
	exitWrongSecret  = 4 // wrong password or recovery key
	exitNoProtector  = 5 // no protector opens with what was given
	exitTampered     = 6 // the file was changed without its keys
	exitExists       = 7 // create: the file exists (use --force)
	fdeSecretSize    = 64
	enterpriseKeyLen = 32
	groupKeyLen      = 32
)

const keyfileHelp = `usage: pbnctl keyfile SUBCOMMAND [flags] FILE

subcommands:
  create            make a key file with fresh random keys
  inspect           show a key file's header and protectors (never a secret)
  open              check that a password or recovery key opens a key file
  add-protector     add a password or recovery key protector
  remove-protector  remove a protector

Secrets are read from the terminal without echo, or with --password-stdin
(--recovery-key-stdin) one a line from standard input: for add-protector,
the secret that opens the file first, then the new password.

exit codes:
  0  success (for open: the key file opens)
  1  any other failure
  2  bad flags or arguments
  3  the file is damaged or not a valid key file
  4  wrong password or recovery key
  5  no protector of the file opens with what was given
  6  the file was modified without its keys
  7  create: the file exists (use --force)
`

var runKeyfile = subcommands("keyfile", keyfileHelp, []command{
	{"create", "", keyfileCreate},
	{"inspect", "", keyfileInspect},
	{"open", "", keyfileOpen},
	{"add-protector", "", keyfileAddProtector},
	{"remove-protector", "", keyfileRemoveProtector},
})

// newFlags returns a flag set for a keyfile subcommand that prints its
// usage and the exit codes to io.err.
func newFlags(io stdio, name, usage string) *flag.FlagSet {
	fl := flag.NewFlagSet("pbnctl keyfile "+name, flag.ContinueOnError)
	fl.SetOutput(io.err)
	fl.Usage = func() {
		fmt.Fprintf(io.err, "usage: pbnctl keyfile %s %s\n\nflags:\n", name, usage)
		fl.PrintDefaults()
		fmt.Fprintf(io.err, "\nexit codes: see pbnctl keyfile -h\n")
	}
	return fl
}

// parseFile parses flags and the one FILE argument.
func parseFile(fl *flag.FlagSet, args []string) (string, error) {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", err
		}
		return "", withCode(exitUsage, err)
	}
	if fl.NArg() != 1 {
		return "", usageError("%s: want exactly one FILE, have %d arguments", fl.Name(), fl.NArg())
	}
	return fl.Arg(0), nil
}

// openFlags are the flags that say how to open an existing key file.
type openFlags struct {
	passwordStdin, recoveryStdin, recovery bool
}

func (o *openFlags) register(fl *flag.FlagSet) {
	fl.BoolVar(&o.passwordStdin, "password-stdin", false, "read the password from standard input")
	fl.BoolVar(&o.recoveryStdin, "recovery-key-stdin", false, "open with a recovery key read from standard input")
	fl.BoolVar(&o.recovery, "recovery-key", false, "open with a recovery key typed at the terminal")
}

// factor reads the secret that opens the file and returns it as a factor,
// with a function that wipes it.
func (o *openFlags) factor(io stdio) (keyfile.Factor, func(), error) {
	if o.recovery || o.recoveryStdin {
		typed, err := secretReader{stdin: o.recoveryStdin, io: io}.read("recovery key", false)
		if err != nil {
			return nil, nil, err
		}
		defer typed.Wipe()
		k, err := keyfile.ParseRecoveryKey(typed)
		if err != nil {
			return nil, nil, withCode(exitWrongSecret, err)
		}
		return keyfile.Recovery(k), k.Wipe, nil
	}
	pw, err := secretReader{stdin: o.passwordStdin, io: io}.read("password", false)
	if err != nil {
		return nil, nil, err
	}
	return keyfile.Password(pw), pw.Wipe, nil
}

// load reads and parses a key file, giving a damaged one its exit code.
func load(path string) (*keyfile.KeyFile, error) {
	f, err := keyfile.Load(keyfile.OSFS{}, path)
	if errors.Is(err, keyfile.ErrDamaged) || errors.Is(err, keyfile.ErrFormat) {
		return nil, withCode(exitBadKeyFile, err)
	}
	return f, err
}

// openFile loads and opens a key file as o says.
func (o *openFlags) openFile(ctx context.Context, io stdio, path string) (*keyfile.KeyFile, error) {
	f, err := load(path)
	if err != nil {
		return nil, err
	}
	fc, wipe, err := o.factor(io)
	if err != nil {
		return nil, err
	}
	defer wipe()
	if err := f.Open(ctx, fc); err != nil {
		return nil, openError(path, err)
	}
	return f, nil
}

// openError gives an Open error its exit code.
func openError(path string, err error) error {
	code := exitError
	switch {
	case errors.Is(err, keyfile.ErrWrongPassword), errors.Is(err, keyfile.ErrWrongRecoveryKey):
		code = exitWrongSecret
	case errors.Is(err, keyfile.ErrNoProtector):
		code = exitNoProtector
	case errors.Is(err, keyfile.ErrTampered):
		code = exitTampered
	case errors.Is(err, keyfile.ErrFormat):
		code = exitBadKeyFile
	}
	return withCode(code, fmt.Errorf("%s: %w", path, err))
}

// newProtector reads a new password or makes a recovery key, and returns the
// factor with a function that wipes it. A new recovery key is printed on
// out: it is shown this once.
func newProtector(io stdio, kind string, stdin bool, target time.Duration) (keyfile.Factor, func(), error) {
	switch kind {
	case "password":
		pw, err := secretReader{stdin: stdin, io: io}.read("new password", true)
		if err != nil {
			return nil, nil, err
		}
		if len(pw) == 0 {
			return nil, nil, usageError("the password is empty")
		}
		return keyfile.PasswordWith(pw, keyfile.Calibrate(target)), pw.Wipe, nil
	case "recovery":
		k := keyfile.NewRecoveryKey()
		d := k.Digits()
		defer d.Wipe()
		fmt.Fprintf(io.out, "recovery key: ")
		io.out.Write(d)
		fmt.Fprintln(io.out, "\n(write it down or escrow it now: it is not shown again)")
		return keyfile.Recovery(k), k.Wipe, nil
	}
	return nil, nil, usageError("unknown protector %q (want password or recovery)", kind)
}

func keyfileCreate(ctx context.Context, io stdio, args []string) error {
	fl := newFlags(io, "create", "[flags] FILE")
	kind := fl.String("kind", "user", "the key file's kind: user, provisioning or administrator")
	upn := fl.String("upn", "", "the user's userPrincipalName")
	sid := fl.String("sid", "", "the user's objectSid (S-1-5-21-...)")
	device := fl.String("device", "", "the device ID, 32 hex digits (default: a new random ID)")
	serverURL := fl.String("server-url", "", "the key server's URL")
	serverKey := fl.String("server-key", "", "a PEM or DER file with the key server's public key to pin")
	offline := fl.Duration("offline-limit", 0, "how long the key file may open the device offline (0: no limit)")
	pwStdin := fl.Bool("password-stdin", false, "read the password from standard input")
	noPassword := fl.Bool("no-password", false, "add no password protector")
	recovery := fl.Bool("recovery", false, "add a recovery key protector and print the recovery key")
	target := fl.Duration("argon2-target", keyfile.DefaultArgon2Target, "how long a password derivation should take on this machine")
	force := fl.Bool("force", false, "replace an existing key file")
	var groups multiFlag
	fl.Var(&groups, "group", "a group to make a key for, as SID or SID=NAME (repeatable)")
	path, err := parseFile(fl, args)
	if err != nil {
		return err
	}

	h := keyfile.Header{ID: keyfile.NewID(), DeviceID: keyfile.NewID(), UPN: *upn, SID: *sid,
		OfflineLimit: *offline, Server: keyfile.Server{URL: *serverURL}}
	if h.Kind, err = keyfile.ParseKind(*kind); err != nil {
		return withCode(exitUsage, err)
	}
	if *device != "" {
		if h.DeviceID, err = keyfile.ParseID(*device); err != nil {
			return withCode(exitUsage, err)
		}
	}
	if *serverKey != "" {
		if h.Server.PublicKey, err = readPublicKey(*serverKey); err != nil {
			return withCode(exitUsage, err)
		}
	}
	if *noPassword && !*recovery {
		return usageError("create: --no-password needs --recovery: a key file needs a protector")
	}
	if _, err := os.Stat(path); err == nil && !*force {
		return withCode(exitExists, fmt.Errorf("create: %s exists (use --force to replace it)", path))
	}
	ring := &keyfile.Keyring{FDE: secret.Random(fdeSecretSize), Enterprise: secret.Random(enterpriseKeyLen)}
	for _, g := range groups {
		sid, name, _ := strings.Cut(g, "=")
		ring.Groups = append(ring.Groups, keyfile.GroupKey{SID: sid, Name: name, Key: secret.Random(groupKeyLen)})
	}
	f, err := keyfile.New(h, ring)
	if err != nil {
		ring.Wipe()
		return withCode(exitUsage, err)
	}
	defer f.Close()

	var protectors []string
	if !*noPassword {
		if err := addNew(ctx, io, f, "password", *pwStdin, *target); err != nil {
			return err
		}
		protectors = append(protectors, "password")
	}
	if *recovery {
		if err := addNew(ctx, io, f, "recovery", false, *target); err != nil {
			return err
		}
		protectors = append(protectors, "recovery key")
	}
	if *force {
		keyfile.Remove(keyfile.OSFS{}, path)
	}
	if err := keyfile.Replace(keyfile.OSFS{}, path, f); err != nil {
		return err
	}
	fmt.Fprintf(io.out, "created %s: %s key file %s, protectors: %s\n", path, h.Kind, h.ID, strings.Join(protectors, ", "))
	return nil
}

// addNew adds a new password or recovery key protector to an open key file.
func addNew(ctx context.Context, io stdio, f *keyfile.KeyFile, kind string, stdin bool, target time.Duration) error {
	fc, wipe, err := newProtector(io, kind, stdin, target)
	if err != nil {
		return err
	}
	defer wipe()
	_, err = f.AddProtector(ctx, kind, fc)
	return err
}

func keyfileInspect(ctx context.Context, io stdio, args []string) error {
	fl := newFlags(io, "inspect", "[--json] FILE")
	asJSON := fl.Bool("json", false, "print JSON")
	path, err := parseFile(fl, args)
	if err != nil {
		return err
	}
	f, err := load(path)
	if err != nil {
		return err
	}
	d := describe(path, f)
	if *asJSON {
		enc := json.NewEncoder(io.out)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	d.print(io.out)
	return nil
}

// description is what inspect shows: never a secret.
type description struct {
	File         string          `json:"file"`
	ID           string          `json:"id"`
	Kind         string          `json:"kind"`
	Device       string          `json:"device"`
	UPN          string          `json:"upn,omitempty"`
	SID          string          `json:"sid,omitempty"`
	Generation   uint64          `json:"generation"`
	Created      time.Time       `json:"created"`
	ServerURL    string          `json:"server_url,omitempty"`
	ServerKey    string          `json:"server_key_sha256,omitempty"`
	OfflineLimit string          `json:"offline_limit,omitempty"`
	Protectors   []protectorDesc `json:"protectors"`
}

type protectorDesc struct {
	Index   int      `json:"index"`
	Label   string   `json:"label,omitempty"`
	Factors []string `json:"factors"`
	Details []string `json:"details,omitempty"`
}

func describe(path string, f *keyfile.KeyFile) description {
	h := f.Header()
	d := description{File: path, ID: h.ID.String(), Kind: h.Kind.String(), Device: h.DeviceID.String(),
		UPN: h.UPN, SID: h.SID, Generation: h.Generation, Created: h.Created, ServerURL: h.Server.URL}
	if len(h.Server.PublicKey) > 0 {
		sum := sha256.Sum256(h.Server.PublicKey)
		d.ServerKey = hex.EncodeToString(sum[:])
	}
	if h.OfflineLimit > 0 {
		d.OfflineLimit = h.OfflineLimit.String()
	}
	for i, p := range f.Protectors() {
		pd := protectorDesc{Index: i, Label: p.Label}
		for j, t := range p.Factors {
			pd.Factors = append(pd.Factors, t.String())
			if t == keyfile.FactorPassword {
				if a, err := keyfile.PasswordParams(p.Params[j]); err == nil {
					pd.Details = append(pd.Details, fmt.Sprintf("argon2id %d passes over %d MiB, %d lanes", a.Time, a.Memory>>10, a.Threads))
				}
			}
		}
		d.Protectors = append(d.Protectors, pd)
	}
	return d
}

func (d description) print(w io.Writer) {
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-12s %s\n", k+":", v)
		}
	}
	line("file", d.File)
	line("key file", d.ID)
	line("kind", d.Kind)
	line("device", d.Device)
	line("upn", d.UPN)
	line("sid", d.SID)
	line("generation", strconv.FormatUint(d.Generation, 10))
	line("created", d.Created.Format(time.RFC3339))
	line("server", d.ServerURL)
	if d.ServerKey != "" {
		line("server key", "sha256:"+d.ServerKey)
	}
	line("offline", d.OfflineLimit)
	for _, p := range d.Protectors {
		s := strings.Join(p.Factors, " + ")
		if p.Label != "" {
			s += fmt.Sprintf(" %q", p.Label)
		}
		if len(p.Details) > 0 {
			s += " (" + strings.Join(p.Details, "; ") + ")"
		}
		line(fmt.Sprintf("protector %d", p.Index), s)
	}
}

func keyfileOpen(ctx context.Context, io stdio, args []string) error {
	fl := newFlags(io, "open", "[--password-stdin | --recovery-key | --recovery-key-stdin] FILE")
	var o openFlags
	o.register(fl)
	path, err := parseFile(fl, args)
	if err != nil {
		return err
	}
	f, err := o.openFile(ctx, io, path)
	if err != nil {
		return err
	}
	f.Close()
	fmt.Fprintf(io.out, "%s opens\n", path)
	return nil
}

func keyfileAddProtector(ctx context.Context, io stdio, args []string) error {
	fl := newFlags(io, "add-protector", "--new password|recovery [open flags] FILE")
	var o openFlags
	o.register(fl)
	kind := fl.String("new", "", "the protector to add: password or recovery")
	label := fl.String("label", "", "the new protector's label (default: its kind)")
	target := fl.Duration("argon2-target", keyfile.DefaultArgon2Target, "how long a password derivation should take on this machine")
	path, err := parseFile(fl, args)
	if err != nil {
		return err
	}
	if *kind != "password" && *kind != "recovery" {
		return usageError("add-protector: --new must be password or recovery")
	}
	f, err := o.openFile(ctx, io, path)
	if err != nil {
		return err
	}
	defer f.Close()
	fc, wipe, err := newProtector(io, *kind, o.passwordStdin || o.recoveryStdin, *target)
	if err != nil {
		return err
	}
	defer wipe()
	if *label == "" {
		*label = *kind
	}
	i, err := f.AddProtector(ctx, *label, fc)
	if err != nil {
		return err
	}
	if err := keyfile.Replace(keyfile.OSFS{}, path, f); err != nil {
		return err
	}
	fmt.Fprintf(io.out, "added protector %d (%s) to %s, generation %d\n", i, *kind, path, f.Header().Generation)
	return nil
}

func keyfileRemoveProtector(ctx context.Context, io stdio, args []string) error {
	fl := newFlags(io, "remove-protector", "--index N [open flags] FILE")
	var o openFlags
	o.register(fl)
	index := fl.Int("index", -1, "the index of the protector to remove, as inspect shows it")
	path, err := parseFile(fl, args)
	if err != nil {
		return err
	}
	if *index < 0 {
		return usageError("remove-protector: --index is required")
	}
	f, err := o.openFile(ctx, io, path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.RemoveProtector(*index); err != nil {
		return withCode(exitUsage, err)
	}
	if err := keyfile.Replace(keyfile.OSFS{}, path, f); err != nil {
		return err
	}
	fmt.Fprintf(io.out, "removed protector %d from %s, generation %d\n", *index, path, f.Header().Generation)
	return nil
}

// readPublicKey reads a public key to pin from a PEM or DER file, as a DER
// SubjectPublicKeyInfo. A certificate's key is taken too.
func readPublicKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	if _, err := x509.ParsePKIXPublicKey(b); err == nil {
		return b, nil
	}
	cert, err := x509.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("%s: not a public key or certificate", path)
	}
	return cert.RawSubjectPublicKeyInfo, nil
}
