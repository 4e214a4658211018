// Command pbnctl is the administrator's tool for PBN: key files, the TPM,
// Active Directory checks, the key server's devices and recovery keys, and
// boot images.
//
// Usage:
//
//	pbnctl COMMAND SUBCOMMAND [flags] [args]
//
// Run pbnctl COMMAND -h for a command's subcommands, flags and exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pbn-project/pbn/pbn/secret"
)

// stdio is what a command reads and writes.
type stdio struct {
	in       io.Reader
	out, err io.Writer
	log      *slog.Logger
}

// A command is one word after pbnctl.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, io stdio, args []string) error
}

// commands lists pbnctl's commands in the order -h shows them.
var commands = []command{
	// One line a command; each command's code lives in its own file.
	{"keyfile", "create, inspect and open key files; add and remove protectors", runKeyfile},
	{"ad", "Active Directory checks: ad login", runAD},
	{"tpm", "look at the TPM, check a key file against it, reseal a key file to it", runTPM},
	{"tang", "make, rotate, retire and show a Tang key directory", runTang},
	{"device", "the key server's devices: list, show, mark lost, retire", runDevice},
	{"recovery", "read a device's escrowed recovery key, with the reason recorded", runRecovery},
	{"audit", "the key server's audit trail: tail, export as JSON lines", runAudit},
	{"policy", "device group policies: show, set", runPolicy},
	{"admin", "the key server's administrators: add (with a role and a file each), list, remove", runAdmin},
	{"image", "build the pre-boot image (initramfs)", runImage},
	{"install", "set a system in use up for PBN: enrol it, its user's key file and keyslot, the image", runInstall},
}

// Exit codes shared by every command; each command documents its own above
// these in its -h text.
const (
	exitOK    = 0
	exitError = 1 // a failure that no more specific code describes
	exitUsage = 2 // bad flags or arguments
)

// exitErr carries a command's exit code with its error.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

// withCode gives err the exit code code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitErr{code, err}
}

// usageError reports a bad flag or argument.
func usageError(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := secret.DisableCoreDumps(); err != nil {
		log.Warn("secrets may reach a core dump", "err", err)
	}
	err := run(ctx, stdio{os.Stdin, os.Stdout, os.Stderr, log}, os.Args[1:])
	os.Exit(report(os.Stderr, err))
}

// report prints err for the administrator and returns the exit code.
func report(w io.Writer, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(w, "pbnctl: %v\n", err)
	var e *exitErr
	if errors.As(err, &e) {
		return e.code
	}
	return exitError
}

func run(ctx context.Context, io stdio, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(io.out, "usage: pbnctl COMMAND SUBCOMMAND [flags] [args]\n\ncommands:")
		for _, c := range commands {
			fmt.Fprintf(io.out, "  %-10s %s\n", c.name, c.summary)
		}
		fmt.Fprintln(io.out, "\nexit codes: 0 success, 1 failure, 2 usage; each command lists its own.")
		if len(args) == 0 {
			return withCode(exitUsage, errors.New("no command given"))
		}
		return nil
	}
	return dispatch(ctx, io, "pbnctl", commands, args)
}

// subcommands returns a command made of subcommands: with no arguments or
// -h it prints help, and otherwise it runs the subcommand args[0] names.
func subcommands(name, help string, subs []command) func(context.Context, stdio, []string) error {
	return func(ctx context.Context, io stdio, args []string) error {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(io.out, help)
			if len(args) == 0 {
				return usageError("%s: no subcommand given", name)
			}
			return nil
		}
		return dispatch(ctx, io, "pbnctl "+name, subs, args)
	}
}

// multiFlag is a flag that may be given more than once.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// dispatch runs the command of cmds that args[0] names. Commands with
// subcommands call it again with their own list.
func dispatch(ctx context.Context, io stdio, parent string, cmds []command, args []string) error {
	if len(args) == 0 {
		return usageError("%s: no subcommand given; run %s -h", parent, parent)
	}
	for _, c := range cmds {
		if c.name == args[0] {
			return c.run(ctx, io, args[1:])
		}
	}
	return usageError("%s: unknown subcommand %q; run %s -h", parent, args[0], parent)
}
