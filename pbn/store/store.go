// Package store keeps the key server's data: devices, provisioning key file
// bindings, owners, escrowed recovery keys, server-held keys, policies per
// device group, administrators, and the append-only audit trail.
//
// Two databases are supported behind one API: SQLite (modernc.org/sqlite, one
// file, no set-up) by default, and PostgreSQL (pgx) for fleets that need
// several key servers. Nothing the store needs is kept in process memory, so
// several pbnd processes on one PostgreSQL database serve the same fleet.
//
// Secrets (escrowed recovery keys, the enterprise key, group keys) are sealed
// under a master key that is kept outside the database ([LoadMasterKey]): a
// stolen database alone reveals none of them.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
)

// Errors that callers branch on.
var (
	// ErrNotFound is returned by the lookups (Device, DeviceByKey, Binding,
	// Admin) and by the state changes when the row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrTooManyUsers is returned by AddOwner when the device already has
	// as many users as its policy allows.
	ErrTooManyUsers = errors.New("the device has as many users as its policy allows")
	// ErrDeviceLost is returned by PutDevice for a device marked lost: a
	// lost device is never enrolled again without an administrator first
	// retiring it.
	ErrDeviceLost = errors.New("the device is marked lost")
	// ErrSealed is returned when a sealed secret does not open under the
	// master key: the wrong master key, or a database changed by hand.
	ErrSealed = errors.New("a sealed secret does not open under the master key")
)

// dialect is the database behind a Store.
type dialect int

const (
	sqliteDB dialect = iota
	postgresDB
)

// Store is the key server's database. Its methods are safe for concurrent
// use, also by several processes sharing one PostgreSQL database.
type Store struct {
	db      *sql.DB
	dialect dialect
	seal    *sealer
	now     func() time.Time
	log     *slog.Logger
	// stmts holds the statements of an unlock's path (query string to
	// *sql.Stmt), prepared on first use by queryRow: SQLite would parse
	// and plan each of them again on every unlock otherwise.
	stmts sync.Map

	// appends hands Append's events to batchAppends (SQLite only; nil
	// with PostgreSQL, whose connections commit concurrently); closing
	// stops it, and batcherDone is closed when it has.
	appends     chan *appendReq
	closing     chan struct{}
	closeOnce   sync.Once
	batcherDone chan struct{}
}

// Options tunes Open.
type Options struct {
	// Log receives the store's messages (migrations applied); nil discards
	// them.
	Log *slog.Logger
}

// Open opens the database that dsn names, applies pending schema
// migrations, and returns the store. A dsn starting with postgres:// or
// postgresql:// is a PostgreSQL connection string (pgx's syntax); anything
// else is the path of an SQLite database file, created when missing.
// masterKey seals and opens secrets; Open keeps a copy, and Close wipes it.
func Open(ctx context.Context, dsn string, masterKey secret.Bytes, opts Options) (*Store, error) {
	seal, err := newSealer(masterKey)
	if err != nil {
		return nil, err
	}
	s := &Store{seal: seal, now: time.Now, log: opts.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}

	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		s.dialect = postgresDB
		s.db, err = sql.Open("pgx", dsn)
	} else {
		s.dialect = sqliteDB
		s.db, err = sql.Open("sqlite", sqliteDSN(dsn))
	}
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if s.dialect == sqliteDB {
		// SQLite has one writer at a time, and a writer that finds the
		// database busy sleeps in back-off steps of milliseconds. One
		// connection queues requests in Go instead, which is far faster
		// under load; statements are short.
		s.db.SetMaxOpenConns(1)
	}
	if err := s.migrateWhenFree(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	if s.dialect == sqliteDB {
		s.appends, s.closing, s.batcherDone = make(chan *appendReq), make(chan struct{}), make(chan struct{})
		go s.batchAppends()
	}
	return s, nil
}

// Bounds on waiting for another process that opens the same SQLite file.
const (
	busyTries = 50
	busyPause = 20 * time.Millisecond
)

// migrateWhenFree migrates the schema, waiting a bounded time while another
// process opening the same SQLite file holds it: SQLite answers SQLITE_BUSY
// at once, without its busy timeout, while a first connection switches the
// file to WAL.
func (s *Store) migrateWhenFree(ctx context.Context) error {
	for try := 1; ; try++ {
		err := s.migrate(ctx)
		if !isBusy(err) || try == busyTries {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(busyPause):
		}
	}
}

// sqliteBusy is SQLite's primary result code SQLITE_BUSY.
const sqliteBusy = 5

// sqliteDSN makes a modernc.org/sqlite connection string for the file at
// path: a busy timeout first, so that concurrent writers (and the switch to
// WAL itself) wait instead of failing; WAL, so that readers do not block
// the writer; synchronous FULL, so that a commit survives the host's power
// loss, not only pbnd's crash (an unlock is never answered before its
// audit record is on disk; batchAppends keeps that cheap); and immediate
// transactions, so that a read-then-write transaction never fails half-way
// on a lock upgrade.
func sqliteDSN(path string) string {
	return "file:" + path + "?_txlock=immediate" +
		"&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)&_pragma=foreign_keys(ON)"
}

// Close waits for the audit events being written, closes the database
// and wipes the master key. Closing again does nothing more.
func (s *Store) Close() error {
	if s.closing != nil {
		s.closeOnce.Do(func() { close(s.closing) })
		<-s.batcherDone
	}
	s.seal.wipe()
	s.stmts.Range(func(_, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
	return s.db.Close()
}

// queryRow runs a query that returns at most one row, as
// db.QueryRowContext does, on a statement prepared once and kept.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) interface{ Scan(...any) error } {
	st, ok := s.stmts.Load(query)
	if !ok {
		prepared, err := s.db.PrepareContext(ctx, query)
		if err != nil {
			return errRow{err}
		}
		if st, ok = s.stmts.LoadOrStore(query, prepared); ok {
			prepared.Close()
		}
	}
	return st.(*sql.Stmt).QueryRowContext(ctx, args...)
}

// errRow is a row whose query failed before it ran.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// Ping checks that the database answers, for health checks.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.PingContext(ctx)
}

// tx runs fn in a transaction and commits it when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// stamp is how times are stored: Unix nanoseconds, the same in both
// databases.
func stamp(t time.Time) int64 { return t.UTC().UnixNano() }

// unstamp turns a stored time back into a time.Time; zero stays zero.
func unstamp(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// oneRow turns "no rows changed" into ErrNotFound.
func oneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}
