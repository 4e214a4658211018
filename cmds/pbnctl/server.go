package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// Exit codes of the commands that talk to the key server (device,
// recovery, audit, policy, admin).
const (
	exitUnreachable = 10 // the key server cannot be reached, or is not the pinned one
	exitNotAdmin    = 11 // the key server does not know the administrator's key
	exitNoDevice    = 12 // no such device (or administrator)
	exitRole        = 13 // the administrator's role does not allow the command
)

// defaultAdminFile is where --admin looks when neither it nor PBN_ADMIN is
// set.
const defaultAdminFile = "/etc/pbn/admin.json"

// defaultServerTimeout bounds one command's talk with the key server.
const defaultServerTimeout = 30 * time.Second

const serverHelp = `
The key server is reached with an administrator file (--admin FILE, or the
PBN_ADMIN environment variable, or ` + defaultAdminFile + `): pbnd writes
one for its first administrator as DIR/admin.json. It holds the server's
URL and pinned TLS key and the administrator's private key; keep it to
yourself. Every change and every recovery key read is recorded in the
server's audit trail under the administrator's name.

DEVICE is a device's ID (32 hex digits) or its hostname.

exit codes:
  0   success
  1   any other failure
  2   bad flags or arguments
  10  the key server cannot be reached, or its key is not the pinned one
  11  the key server does not know the administrator's key
  12  no such device (or administrator)
  13  the administrator's role does not allow this (an enrol-only one's)
`

var deviceHelp = `usage: pbnctl device SUBCOMMAND [flags] [DEVICE]

subcommands:
  list                              list the enrolled devices
  show DEVICE                       show a device and its users
  lost DEVICE --reason TEXT         mark a device lost: refused until retired
  retire DEVICE --reason TEXT       retire a device: refused until enrolled again
  activate DEVICE --reason TEXT     mark a lost or retired device active again
` + serverHelp

var recoveryHelp = `usage: pbnctl recovery show DEVICE --reason TEXT

Prints the device's escrowed recovery keys, newest first. The reason (a
ticket number, say) is recorded in the audit trail before any key is shown.
` + serverHelp

var auditHelp = `usage: pbnctl audit SUBCOMMAND [flags]

subcommands:
  tail [-n N]              show the last N events (default 20)
  export [--after SEQ]     write the events after SEQ as JSON lines
` + serverHelp

var policyHelp = `usage: pbnctl policy SUBCOMMAND [flags] GROUP

subcommands:
  show GROUP [--json]      show a device group's policy
  set GROUP [flags]        change the flags given, keep the rest
` + serverHelp

var runDevice = subcommands("device", deviceHelp, []command{
	{"list", "", deviceList},
	{"show", "", deviceShow},
	{"lost", "", deviceState(store.DeviceLost)},
	{"retire", "", deviceState(store.DeviceRetired)},
	{"activate", "", deviceState(store.DeviceActive)},
})

var runRecovery = subcommands("recovery", recoveryHelp, []command{{"show", "", recoveryShow}})

var runAudit = subcommands("audit", auditHelp, []command{
	{"tail", "", auditTail},
	{"export", "", auditExport},
})

var runPolicy = subcommands("policy", policyHelp, []command{
	{"show", "", policyShow},
	{"set", "", policySet},
})

// serverFlags are the flags of every command that talks to the key server.
type serverFlags struct {
	fl      *flag.FlagSet
	admin   string
	url     string
	timeout time.Duration
}

func newServerFlags(io stdio, name, usage string) *serverFlags {
	s := &serverFlags{fl: flag.NewFlagSet("pbnctl "+name, flag.ContinueOnError)}
	s.fl.SetOutput(io.err)
	def := os.Getenv("PBN_ADMIN")
	if def == "" {
		def = defaultAdminFile
	}
	s.fl.StringVar(&s.admin, "admin", def, "administrator `file` (default $PBN_ADMIN or "+defaultAdminFile+")")
	s.fl.StringVar(&s.url, "server", "", "the key server's `URL`, instead of the administrator file's")
	s.fl.DurationVar(&s.timeout, "timeout", defaultServerTimeout, "how long to wait for the key server")
	s.fl.Usage = func() {
		fmt.Fprintf(io.err, "usage: pbnctl %s %s\n\nflags:\n", name, usage)
		s.fl.PrintDefaults()
		fmt.Fprintf(io.err, "\nexit codes: see pbnctl %s -h\n", strings.Fields(name)[0])
	}
	return s
}

// parse parses the flags and wants exactly n arguments.
func (s *serverFlags) parse(args []string, n int) error {
	if err := s.fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return withCode(exitUsage, err)
	}
	if s.fl.NArg() != n {
		return usageError("%s: want %d arguments, have %d", s.fl.Name(), n, s.fl.NArg())
	}
	return nil
}

// adminFile reads the administrator file, with --server's URL if given.
func (s *serverFlags) adminFile() (*keyserver.AdminFile, error) {
	a, err := keyserver.ReadAdminFile(s.admin)
	if err != nil {
		return nil, err
	}
	if s.url != "" {
		a.URL = s.url
	}
	return a, nil
}

// client connects as the administrator file's administrator, and returns
// a context bounded by --timeout.
func (s *serverFlags) client(ctx context.Context) (*keyserver.Client, context.Context, context.CancelFunc, error) {
	a, err := s.adminFile()
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := a.Client()
	if err != nil {
		return nil, nil, nil, withCode(exitUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return c, ctx, cancel, nil
}

// serverCode gives the key server's errors their exit codes.
func serverCode(err error) error {
	switch {
	case errors.Is(err, keyserver.ErrUnknownKey):
		return withCode(exitNotAdmin, err)
	case errors.Is(err, keyserver.ErrNotFound):
		return withCode(exitNoDevice, err)
	case errors.Is(err, keyserver.ErrRoleRefused):
		return withCode(exitRole, err)
	case errors.Is(err, keyserver.ErrUnreachable), errors.Is(err, keyserver.ErrUnavailable),
		errors.Is(err, keyserver.ErrServerNotPinned):
		return withCode(exitUnreachable, err)
	}
	return err
}

// findDevice resolves DEVICE: an ID, or a unique hostname.
// deviceClient connects to the key server and finds the device that the
// command's one argument names. The caller defers cancel.
func (s *serverFlags) deviceClient(ctx context.Context) (*keyserver.Client, keyfile.ID, context.Context, context.CancelFunc, error) {
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return nil, keyfile.ID{}, nil, nil, err
	}
	id, err := findDevice(ctx, c, s.fl.Arg(0))
	if err != nil {
		cancel()
		return nil, keyfile.ID{}, nil, nil, err
	}
	return c, id, ctx, cancel, nil
}

// reasonFlag adds the --reason flag that the audit trail records for an
// action; parse it with requireReason.
func (s *serverFlags) reasonFlag() *string {
	return s.fl.String("reason", "", "why, for the audit trail (required)")
}

func requireReason(name, reason string) error {
	if reason == "" {
		return usageError("%s: --reason is required", name)
	}
	return nil
}

func findDevice(ctx context.Context, c *keyserver.Client, arg string) (keyfile.ID, error) {
	if id, err := keyfile.ParseID(arg); err == nil {
		return id, nil
	}
	ds, err := c.Devices(ctx)
	if err != nil {
		return keyfile.ID{}, serverCode(err)
	}
	var found []keyfile.ID
	for _, d := range ds {
		if strings.EqualFold(d.Hostname, arg) {
			found = append(found, d.ID)
		}
	}
	switch len(found) {
	case 0:
		return keyfile.ID{}, withCode(exitNoDevice, fmt.Errorf("no device with ID or hostname %q", arg))
	case 1:
		return found[0], nil
	}
	return keyfile.ID{}, usageError("%d devices are called %q; give the ID", len(found), arg)
}

func deviceList(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "device list", "[flags]")
	asJSON := s.fl.Bool("json", false, "print JSON")
	if err := s.parse(args, 0); err != nil {
		return err
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	ds, err := c.Devices(ctx)
	if err != nil {
		return serverCode(err)
	}
	if *asJSON {
		return printJSON(io, ds)
	}
	tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tGROUP\tSTATE\tENROLLED")
	for _, d := range ds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.ID, d.Hostname, d.Group, d.State,
			d.Enrolled.Format(time.RFC3339))
	}
	return tw.Flush()
}

func deviceShow(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "device show", "[flags] DEVICE")
	asJSON := s.fl.Bool("json", false, "print JSON")
	if err := s.parse(args, 1); err != nil {
		return err
	}
	c, id, ctx, cancel, err := s.deviceClient(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	d, err := c.Device(ctx, id)
	if err != nil {
		return serverCode(err)
	}
	if *asJSON {
		return printJSON(io, d)
	}
	fmt.Fprintf(io.out, "device:   %s\nhostname: %s\ngroup:    %s\nstate:    %s\n"+
		"enrolled: %s\nchanged:  %s\n", d.ID, d.Hostname, d.Group, d.State,
		d.Enrolled.Format(time.RFC3339), d.Changed.Format(time.RFC3339))
	for _, o := range d.Owners {
		role := "user"
		if o.Primary {
			role = "primary user"
		}
		fmt.Fprintf(io.out, "%s: %s (%s), since %s\n", role, o.UPN, o.SID, o.Added.Format(time.RFC3339))
	}
	return nil
}

func deviceState(st store.DeviceState) func(context.Context, stdio, []string) error {
	return func(ctx context.Context, io stdio, args []string) error {
		s := newServerFlags(io, "device "+string(st), "--reason TEXT [flags] DEVICE")
		reason := s.reasonFlag()
		if err := s.parse(args, 1); err != nil {
			return err
		}
		if err := requireReason("device", *reason); err != nil {
			return err
		}
		c, id, ctx, cancel, err := s.deviceClient(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		if err := c.SetDeviceState(ctx, id, st, *reason); err != nil {
			return serverCode(err)
		}
		fmt.Fprintf(io.out, "device %s is now %s\n", id, st)
		return nil
	}
}

func recoveryShow(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "recovery show", "--reason TEXT [flags] DEVICE")
	reason := s.reasonFlag()
	if err := s.parse(args, 1); err != nil {
		return err
	}
	if err := requireReason("recovery show", *reason); err != nil {
		return err
	}
	c, id, ctx, cancel, err := s.deviceClient(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	keys, err := c.Recovery(ctx, id, *reason)
	if err != nil {
		return serverCode(err)
	}
	defer func() {
		for _, k := range keys {
			k.Key.Wipe()
		}
	}()
	if len(keys) == 0 {
		return fmt.Errorf("device %s has no escrowed recovery key", id)
	}
	for _, k := range keys {
		who := k.UPN
		if who == "" {
			who = "(provisioning)"
		}
		fmt.Fprintf(io.out, "key file %s of %s, escrowed %s:\n  ", k.KeyFileID, who,
			k.Created.Format(time.RFC3339))
		io.out.Write(k.Key)
		fmt.Fprintln(io.out)
	}
	return nil
}

func auditTail(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "audit tail", "[-n N] [flags]")
	n := s.fl.Int64("n", 20, "how many events")
	if err := s.parse(args, 0); err != nil {
		return err
	}
	if *n < 1 {
		return usageError("audit tail: -n wants 1 or more")
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tDEVICE\tACTOR\tREMOTE\tDETAIL")
	err = c.Audit(ctx, keyserver.AuditQuery{Tail: *n}, func(e store.Event) error {
		var detail []string
		for k, v := range e.Detail {
			detail = append(detail, k+"="+strconv.Quote(v))
		}
		slices.Sort(detail)
		_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339),
			e.Kind, e.Device, e.Actor, e.Remote, strings.Join(detail, " "))
		return err
	})
	if err != nil {
		return serverCode(err)
	}
	return tw.Flush()
}

// defaultExportPage is how many events each request of an audit export
// asks for: small enough that each answer streams well within the
// server's write timeout, large enough that a long trail needs few requests.
const defaultExportPage = 5000

// auditExport pages through the trail with --after, each page a request
// of its own under --timeout, until a page comes back empty: a page cut
// short by the server's timeout is then followed by the rest, not taken
// for the end.
func auditExport(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "audit export", "[--after SEQ] [--page N] [flags]")
	after := s.fl.Int64("after", 0, "export the events after this sequence number")
	page := s.fl.Int64("page", defaultExportPage, "events per request (--timeout bounds each)")
	if err := s.parse(args, 0); err != nil {
		return err
	}
	if *page < 1 {
		return usageError("audit export: --page wants 1 or more")
	}
	c, _, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	cancel()
	enc := json.NewEncoder(io.out)
	for {
		n := 0
		pctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := c.Audit(pctx, keyserver.AuditQuery{After: *after, Limit: *page}, func(e store.Event) error {
			n++
			*after = e.Seq
			return enc.Encode(e)
		})
		cancel()
		if err != nil {
			return serverCode(err)
		}
		if n == 0 {
			return nil
		}
	}
}

func policyShow(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "policy show", "[--json] [flags] GROUP")
	asJSON := s.fl.Bool("json", false, "print JSON")
	if err := s.parse(args, 1); err != nil {
		return err
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	p, err := c.Policy(ctx, s.fl.Arg(0))
	if err != nil {
		return serverCode(err)
	}
	if *asJSON {
		return printJSON(io, p)
	}
	limit := "none"
	if p.OfflineLimit > 0 {
		limit = p.OfflineLimit.String()
	}
	fmt.Fprintf(io.out, "group:            %s\nprovisioning:     %t\nautoboot:         %t\n"+
		"offline limit:    %s\nPCRs:             %s\nusers per device: %d\n"+
		"administrators:   %s\nallowed groups:   %s\n", p.Group, p.Provisioning, p.Autoboot, limit,
		joinInts(p.PCRs), p.UsersPerDevice, orAny(p.Administrators, "none"),
		orAny(p.AllowedGroups, "any"))
	return nil
}

func policySet(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "policy set", "[flags] GROUP")
	fl := s.fl
	provisioning := fl.Bool("provisioning", true, "devices start with a provisioning key file")
	autoboot := fl.Bool("autoboot", true, "provisioning key files open unattended on the network")
	offline := fl.Duration("offline-limit", 0, "how long a key file opens without the server; 0: no limit")
	pcrs := fl.String("pcrs", "", "comma-separated SHA-256 PCRs the TPM seals to, e.g. 0,2,4,7")
	users := fl.Int("users", 1, "users per device")
	admins := fl.String("admins", "", "comma-separated UPNs of administrators added to every package")
	allowed := fl.String("allowed-groups", "", "comma-separated SIDs of the groups that may claim; empty: any")
	if err := s.parse(args, 1); err != nil {
		return err
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	p, err := c.Policy(ctx, fl.Arg(0))
	if err != nil {
		return serverCode(err)
	}

	var errs []error
	fl.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "provisioning":
			p.Provisioning = *provisioning
		case "autoboot":
			p.Autoboot = *autoboot
		case "offline-limit":
			p.OfflineLimit = *offline
		case "users":
			p.UsersPerDevice = *users
		case "admins":
			p.Administrators = splitList(*admins)
		case "allowed-groups":
			p.AllowedGroups = splitList(*allowed)
		case "pcrs":
			var err error
			p.PCRs, err = parseInts(*pcrs)
			errs = append(errs, err)
		}
	})
	if err := errors.Join(append(errs, p.Check())...); err != nil {
		return withCode(exitUsage, err)
	}
	if err := c.SetPolicy(ctx, p); err != nil {
		return serverCode(err)
	}
	fmt.Fprintf(io.out, "policy of group %s set\n", p.Group)
	return nil
}

func printJSON(io stdio, v any) error {
	enc := json.NewEncoder(io.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("--pcrs: %q is not a number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(ns []int) string {
	var ss []string
	for _, n := range ns {
		ss = append(ss, strconv.Itoa(n))
	}
	return strings.Join(ss, ",")
}

func orAny(ss []string, none string) string {
	if len(ss) == 0 {
		return none
	}
	return strings.Join(ss, ", ")
}
