// Command pbnd is PBN's enterprise key server.
//
// Usage:
//
//	pbnd --data DIR [--listen ADDR] [--tang-listen ADDR] [flags]
//
// pbnd --data DIR --tang-listen ADDR alone starts a server with SQLite and
// fresh keys in DIR: Tang's protocol over plain HTTP on ADDR, and the TLS
// API (devices, unlock in PBN mode, claims, administration) on --listen.
// On first start it writes into DIR:
//
//	master.key   the key that seals escrowed secrets (keep it off the
//	             database's backups; --master-key puts it elsewhere)
//	tls.key      the TLS API's ECDSA P-256 key, which key files pin
//	tang/        Tang's signing and exchange keys, as tangd keeps them
//	admin.json   the first administrator's credentials, for pbnctl --admin
//	pbnd.db      the SQLite database, unless --db names a PostgreSQL one
//
// Several pbnd processes serve one fleet from one PostgreSQL database
// (--db postgres://...) when they share the master key, tls.key and the
// Tang keys. SIGHUP reloads the Tang keys after a rotation; SIGINT or
// SIGTERM stop the server after the requests in flight.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, errUsage) {
		fmt.Fprintf(os.Stderr, "pbnd: %v\n", err)
	}
	os.Exit(exitCode(err))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the server failed to start or to serve
	exitUsage = 2 // bad flags
)

// errUsage marks a bad command line; the flag package has said why.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	}
	return exitError
}
