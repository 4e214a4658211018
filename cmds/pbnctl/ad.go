package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/secret"
	"golang.org/x/term"
)

// adCommands are pbnctl ad's subcommands.
var adCommands = []command{
	{"login", "sign an account in as the pre-boot prompt does, and say why not", adLogin},
}

func runAD(ctx context.Context, io stdio, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(io.out, "usage: pbnctl ad SUBCOMMAND [flags] [args]\n\nsubcommands:")
		for _, c := range adCommands {
			fmt.Fprintf(io.out, "  %-8s %s\n", c.name, c.summary)
		}
		return nil
	}
	return dispatch(ctx, io, "pbnctl ad", adCommands, args)
}

// adExitCodes are pbnctl ad login's exit codes, one for each reason a
// login fails; the help text lists them.
var adExitCodes = []struct {
	reason ad.Reason
	code   int
}{
	{ad.WrongCredentials, 10},
	{ad.AccountDisabled, 11},
	{ad.AccountLocked, 12},
	{ad.AccountExpired, 13},
	{ad.PasswordExpired, 14},
	{ad.PasswordMustChange, 15},
	{ad.LogonHours, 16},
	{ad.Workstation, 17},
	{ad.NotAllowed, 18},
	{ad.Unreachable, 19},
	{ad.PinMismatch, 20},
	{ad.BadAccount, 21},
	{ad.EmptyPassword, 22},
}

// maxPassword bounds a password read from standard input.
const maxPassword = 1024

// repeated is a flag that may be given many times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(s string) error { *r = append(*r, s); return nil }

func adLogin(ctx context.Context, io stdio, args []string) error {
	fs := flag.NewFlagSet("pbnctl ad login", flag.ContinueOnError)
	fs.SetOutput(io.err)
	var dcs, owners, admins repeated
	fs.Var(&dcs, "dc", "domain controller `URL`, ldaps://host[:port] or ldap://host[:port] for StartTLS; repeat to fail over (default: DNS SRV of the domain)")
	caFile := fs.String("ca", "", "PEM `file` of the CA to pin (required)")
	domain := fs.String("domain", "", "the domain's DNS `name` (default: the account's UPN suffix)")
	ldaps := fs.Bool("ldaps", false, "reach DCs found in DNS by LDAPS on port 636 instead of StartTLS")
	stdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input, not the terminal")
	fs.Var(&owners, "owner-group", "`group` (SID or name) whose members may own devices; repeatable")
	fs.Var(&admins, "admin-group", "administrators' `group` (SID or name); repeatable")
	connect := fs.Duration("connect-timeout", ad.DefaultConnect, "most time to reach one DC")
	perDC := fs.Duration("dc-timeout", ad.DefaultDC, "most time spent on one DC")
	fs.Usage = func() {
		fmt.Fprintln(io.err, "usage: pbnctl ad login --ca FILE [--dc URL]... [flags] ACCOUNT\n\n"+
			"ACCOUNT is alice@corp.example.test, CORP\\alice or alice (with --domain).\n"+
			"Prints the identity the pre-boot prompt would get, or why the login fails.\n\nflags:")
		fs.PrintDefaults()
		fmt.Fprintln(io.err, "\nexit codes:\n  0  signed in")
		for _, e := range adExitCodes {
			fmt.Fprintf(io.err, "  %d %s\n", e.code, e.reason)
		}
		fmt.Fprintln(io.err, "  1  any other failure\n  2  bad flags or arguments")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return withCode(exitUsage, err)
	}
	if fs.NArg() != 1 || *caFile == "" {
		fs.Usage()
		return usageError("ad login: want --ca FILE and one ACCOUNT")
	}
	account := fs.Arg(0)
	a, err := ad.ParseAccount(account)
	if err != nil {
		fmt.Fprintln(io.out, ad.Sentence(err))
		return withCode(adExitCode(err), err)
	}
	if *domain == "" && a.Form != ad.Principal {
		return usageError("ad login: give --domain for %q", account)
	}
	if *domain == "" {
		*domain = a.Domain
	}
	ca, err := os.ReadFile(*caFile)
	if err != nil {
		return usageError("ad login: %v", err)
	}
	client, err := ad.New(ad.Config{
		Domain: *domain, DCs: dcs, LDAPS: *ldaps, CA: ca,
		OwnerGroups: owners, AdminGroups: admins,
		Timeouts: ad.Timeouts{Connect: *connect, DC: *perDC},
		Logger:   io.log,
	})
	if err != nil {
		return usageError("ad login: %v", err)
	}

	pw, err := readPassword(io, *stdin)
	if err != nil {
		return fmt.Errorf("ad login: %w", err)
	}
	defer pw.Wipe()
	id, err := client.Login(ctx, account, pw)
	if err != nil {
		fmt.Fprintln(io.out, ad.Sentence(err))
		return withCode(adExitCode(err), err)
	}
	printIdentity(io.out, id)
	return nil
}

// adExitCode returns the exit code for a failed login.
func adExitCode(err error) int {
	r := ad.ReasonOf(err)
	for _, e := range adExitCodes {
		if e.reason == r {
			return e.code
		}
	}
	return exitError
}

// readPassword reads the password from the first line of standard input, or
// without echo from the terminal.
func readPassword(io stdio, fromStdin bool) (secret.Bytes, error) {
	if fromStdin {
		return readLine(io.in)
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("no terminal to read the password from (use --password-stdin): %w", err)
	}
	defer tty.Close()
	fmt.Fprint(tty, "Password: ")
	pw, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	return pw, err
}

// readLine reads one line of at most maxPassword bytes into a secret, one
// byte at a time so that nothing past the line is consumed or copied.
func readLine(r io.Reader) (secret.Bytes, error) {
	buf := make(secret.Bytes, maxPassword)
	n := 0
	var b [1]byte
	for {
		_, err := io.ReadFull(r, b[:])
		if err != nil && (!errors.Is(err, io.EOF) || n == 0) {
			buf.Wipe()
			return nil, fmt.Errorf("read the password: %w", err)
		}
		if err != nil || b[0] == '\n' {
			break
		}
		if n == maxPassword {
			buf.Wipe()
			return nil, fmt.Errorf("password longer than %d bytes", maxPassword)
		}
		buf[n] = b[0]
		n++
	}
	b[0] = 0
	if n > 0 && buf[n-1] == '\r' {
		n--
	}
	return buf[:n], nil
}

// printIdentity prints who signed in, one field a line.
func printIdentity(w io.Writer, id *ad.Identity) {
	yes := map[bool]string{true: "yes", false: "no"}
	fmt.Fprintf(w, "upn:            %s\n", id.UPN)
	fmt.Fprintf(w, "sAMAccountName: %s\n", id.SAMAccountName)
	fmt.Fprintf(w, "displayName:    %s\n", id.DisplayName)
	fmt.Fprintf(w, "objectSid:      %s\n", id.SID)
	fmt.Fprintf(w, "objectGUID:     %s\n", id.GUID)
	fmt.Fprintf(w, "dn:             %s\n", id.DN)
	fmt.Fprintf(w, "owner:          %s\n", yes[id.Owner])
	fmt.Fprintf(w, "admin:          %s\n", yes[id.Admin])
	for _, g := range id.Groups {
		fmt.Fprintf(w, "group:          %s %s\n", g.SID, g.Name)
	}
	fmt.Fprintf(w, "dc:             %s (%d LDAP round trips)\n", id.DC, id.RoundTrips)
}
