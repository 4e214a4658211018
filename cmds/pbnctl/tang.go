package main

import (
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"

	"github.com/pbn-project/pbn/pbn/tang"
)

// Exit codes of pbnctl tang.
const (
	exitNoTangKeys  = 3 // the directory has no advertised keys
	exitHasTangKeys = 4 // keygen: the directory already has keys
)

const tangHelp = `usage: pbnctl tang SUBCOMMAND DIR

Manages a Tang key directory, as pbnd and tangd keep it (one JWK file a key).

subcommands:
  keygen  make the keys: an ES512 signing key and ECMR exchange keys on P-521
          (Tang's default) and P-256 (PBN mode)
  rotate  make new keys and stop advertising the current ones; they still
          answer, so existing bindings keep working
  retire  remove the rotated-out keys: bindings to them no longer recover
  show    print the signing key to pin (PEM, for pbnctl keyfile create
          --server-key), its thumbprint (clevis's "thp") and the exchange keys

A running server loads its keys at start; restart or reload it after rotate
and retire.

exit codes:
  0  success
  1  any other failure
  2  bad flags or arguments
  3  the directory has no advertised keys (run keygen)
  4  keygen: the directory already has keys (use rotate)
`

var runTang = subcommands("tang", tangHelp, []command{
	{"keygen", "", tangDir(tangKeygen)},
	{"rotate", "", tangDir(tangRotate)},
	{"retire", "", tangDir(tangRetire)},
	{"show", "", tangDir(tangShow)},
})

// tangDir makes a subcommand that takes no flags and one DIR argument.
func tangDir(run func(io stdio, dir string) error) func(context.Context, stdio, []string) error {
	return func(_ context.Context, io stdio, args []string) error {
		fl := flag.NewFlagSet("pbnctl tang", flag.ContinueOnError)
		fl.SetOutput(io.err)
		fl.Usage = func() { fmt.Fprint(io.err, tangHelp) }
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return withCode(exitUsage, err)
		}
		if fl.NArg() != 1 {
			return usageError("tang: want exactly one DIR, have %d arguments", fl.NArg())
		}
		return run(io, fl.Arg(0))
	}
}

// loadTangKeys loads dir, giving an empty one its exit code.
func loadTangKeys(dir string) (*tang.Keys, error) {
	ks, err := tang.LoadKeys(dir)
	if errors.Is(err, tang.ErrNoKeys) {
		return nil, withCode(exitNoTangKeys, fmt.Errorf("tang: %s: %w", dir, err))
	}
	return ks, err
}

func tangKeygen(io stdio, dir string) error {
	if _, err := tang.LoadKeys(dir); err == nil {
		return withCode(exitHasTangKeys, fmt.Errorf("tang: %s already has keys; use rotate", dir))
	}
	if err := tang.GenerateKeys(dir); err != nil {
		return err
	}
	return tangShow(io, dir)
}

func tangRotate(io stdio, dir string) error {
	if _, err := loadTangKeys(dir); err != nil {
		return err
	}
	if err := tang.RotateKeys(dir); err != nil {
		return err
	}
	return tangShow(io, dir)
}

func tangRetire(io stdio, dir string) error {
	ids, err := tang.RetireKeys(dir)
	if err != nil {
		return err
	}
	for _, id := range ids {
		fmt.Fprintf(io.out, "retired %s\n", id)
	}
	if len(ids) == 0 {
		fmt.Fprintln(io.out, "no rotated-out keys to retire")
	}
	return nil
}

func tangShow(io stdio, dir string) error {
	ks, err := loadTangKeys(dir)
	if err != nil {
		return err
	}
	thp, err := tang.PinThumbprint(ks.Pin())
	if err != nil {
		return err
	}
	fmt.Fprintf(io.out, "signing key thumbprint (thp): %s\n", thp)
	for _, crv := range []string{"P-521", "P-256"} {
		if k, ok := ks.ExchangeKey(crv); ok {
			fmt.Fprintf(io.out, "exchange key %s: %s\n", crv, k.ID)
		}
	}
	return pem.Encode(io.out, &pem.Block{Type: "PUBLIC KEY", Bytes: ks.Pin()})
}
