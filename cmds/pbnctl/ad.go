package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/secret"
)

const adHelp = `usage: pbnctl ad SUBCOMMAND [flags] [args]

subcommands:
  login    sign an account in as the pre-boot prompt does, and say why not

Run pbnctl ad login -h for its flags and exit codes.
`

var runAD = subcommands("ad", adHelp, []command{{"login", "", adLogin}})

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
	{ad.PasswordRejected, 23},
}

// adLoginFlags are pbnctl ad login's flags.
type adLoginFlags struct {
	dcs, owners, admins       multiFlag
	caFile, domain, changeAs  string
	ldaps, stdin              bool
	connectTimeout, dcTimeout time.Duration
}

func (f *adLoginFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.dcs, "dc", "domain controller `URL`, ldaps://host[:port] or ldap://host[:port] "+
		"for StartTLS; repeat to fail over (default: DNS SRV of the domain)")
	fs.StringVar(&f.caFile, "ca", "", "PEM `file` of the CA to pin (required)")
	fs.StringVar(&f.domain, "domain", "", "the domain's DNS `name` (default: the account's UPN suffix)")
	fs.BoolVar(&f.ldaps, "ldaps", false, "reach DCs found in DNS by LDAPS on port 636 instead of StartTLS")
	fs.BoolVar(&f.stdin, "password-stdin", false,
		"read the passwords from standard input, one a line, not the terminal")
	fs.Var(&f.owners, "owner-group", "`group` (SID or name) whose members may own devices; repeatable")
	fs.Var(&f.admins, "admin-group", "administrators' `group` (SID or name); repeatable")
	fs.StringVar(&f.changeAs, "change-account", "", "when the password has expired or must change, "+
		"set a new one as the prompt does, carried by this `account` "+
		"(its password is read after the user's, the new one last)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", ad.DefaultConnect, "most time to reach one DC")
	fs.DurationVar(&f.dcTimeout, "dc-timeout", ad.DefaultDC, "most time spent on one DC")
}

func adLoginUsage(io stdio, fs *flag.FlagSet) func() {
	return func() {
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
}

func adLogin(ctx context.Context, io stdio, args []string) error {
	var f adLoginFlags
	fs := flag.NewFlagSet("pbnctl ad login", flag.ContinueOnError)
	fs.SetOutput(io.err)
	f.register(fs)
	fs.Usage = adLoginUsage(io, fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return withCode(exitUsage, err)
	}
	if fs.NArg() != 1 || f.caFile == "" {
		fs.Usage()
		return usageError("ad login: want --ca FILE and one ACCOUNT")
	}
	account := fs.Arg(0)
	cfg, err := f.config(account)
	if err != nil {
		return adFailure(io, err)
	}
	cfg.Logger = io.log
	client, err := ad.New(cfg)
	if err != nil {
		return usageError("ad login: %v", err)
	}

	secrets := secretReader{f.stdin, io}
	pw, err := secrets.read("password", false)
	if err != nil {
		return fmt.Errorf("ad login: %w", err)
	}
	defer pw.Wipe()
	id, err := client.Login(ctx, account, pw)
	if ad.NeedsNewPassword(err) && f.changeAs != "" {
		fmt.Fprintln(io.out, ad.Sentence(err))
		id, err = changeAndLogin(ctx, secrets, cfg, account, pw)
	}
	if err != nil {
		return adFailure(io, err)
	}
	printIdentity(io.out, id)
	return nil
}

// config returns the client configuration the flags describe.
func (f *adLoginFlags) config(account string) (ad.Config, error) {
	a, err := ad.ParseAccount(account)
	if err != nil {
		return ad.Config{}, err
	}
	domain := f.domain
	if domain == "" && a.Form != ad.Principal {
		return ad.Config{}, usageError("ad login: give --domain for %q", account)
	}
	if domain == "" {
		domain = a.Domain
	}
	ca, err := os.ReadFile(f.caFile)
	if err != nil {
		return ad.Config{}, usageError("ad login: %v", err)
	}
	return ad.Config{
		Domain: domain, DCs: f.dcs, LDAPS: f.ldaps, CA: ca,
		OwnerGroups: f.owners, AdminGroups: f.admins,
		ChangeAccount: f.changeAs,
		Timeouts:      ad.Timeouts{Connect: f.connectTimeout, DC: f.dcTimeout},
	}, nil
}

// changeAndLogin reads the change account's password and a new password,
// changes the account's password from old and signs in with the new one.
func changeAndLogin(ctx context.Context, secrets secretReader, cfg ad.Config, account string, old secret.Bytes) (*ad.Identity, error) {
	carrier, err := secrets.read("password of "+cfg.ChangeAccount, false)
	if err != nil {
		return nil, fmt.Errorf("ad login: %w", err)
	}
	defer carrier.Wipe()
	cfg.ChangeAccountPassword = carrier
	client, err := ad.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("ad login: %w", err)
	}
	pw, err := secrets.read("new password", true)
	if err != nil {
		return nil, fmt.Errorf("ad login: %w", err)
	}
	defer pw.Wipe()
	if err := client.ChangePassword(ctx, account, old, pw); err != nil {
		return nil, err
	}
	return client.Login(ctx, account, pw)
}

// adFailure prints the sentence for a failed login and gives err its exit
// code; usage errors pass through.
func adFailure(io stdio, err error) error {
	var ee *exitErr
	if errors.As(err, &ee) {
		return err
	}
	fmt.Fprintln(io.out, ad.Sentence(err))
	return withCode(adExitCode(err), err)
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
