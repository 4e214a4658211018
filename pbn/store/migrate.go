package store

import (
	"context"
	"database/sql"
	"fmt"
)

// A migration moves the schema from version N-1 to version N, where N is
// its index in migrations plus one. Migrations are never edited once
// released: a change to the schema is a new migration at the end.
type migration struct {
	sqlite, postgres []string
}

// migrations is the schema's history. Times are Unix nanoseconds (BIGINT)
// in both databases; IDs are the 32 hex digits of keyfile.ID.
var migrations = []migration{
	{
		sqlite: []string{
			`CREATE TABLE devices (
				id TEXT PRIMARY KEY,
				hostname TEXT NOT NULL,
				device_group TEXT NOT NULL,
				tpm_ek BLOB,
				tpm_srk BLOB,
				device_key BLOB NOT NULL,
				device_key_hash TEXT NOT NULL UNIQUE,
				state TEXT NOT NULL,
				enrolled BIGINT NOT NULL,
				changed BIGINT NOT NULL)`,
			`CREATE TABLE bindings (
				id TEXT PRIMARY KEY,
				device_id TEXT NOT NULL REFERENCES devices(id),
				state TEXT NOT NULL,
				created BIGINT NOT NULL,
				revoked BIGINT NOT NULL DEFAULT 0)`,
			`CREATE TABLE owners (
				device_id TEXT NOT NULL REFERENCES devices(id),
				sid TEXT NOT NULL,
				upn TEXT NOT NULL,
				is_primary BOOLEAN NOT NULL,
				added BIGINT NOT NULL,
				PRIMARY KEY (device_id, sid))`,
			`CREATE TABLE escrow (
				device_id TEXT NOT NULL REFERENCES devices(id),
				keyfile_id TEXT NOT NULL,
				upn TEXT NOT NULL,
				sealed BLOB NOT NULL,
				created BIGINT NOT NULL,
				PRIMARY KEY (device_id, keyfile_id))`,
			`CREATE TABLE server_keys (
				name TEXT PRIMARY KEY,
				sealed BLOB NOT NULL,
				created BIGINT NOT NULL)`,
			`CREATE TABLE policies (
				device_group TEXT PRIMARY KEY,
				doc TEXT NOT NULL,
				changed BIGINT NOT NULL)`,
			`CREATE TABLE admins (
				key_hash TEXT PRIMARY KEY,
				name TEXT NOT NULL,
				added BIGINT NOT NULL)`,
			`CREATE TABLE audit (
				seq INTEGER PRIMARY KEY AUTOINCREMENT,
				at BIGINT NOT NULL,
				kind TEXT NOT NULL,
				device_id TEXT NOT NULL,
				actor TEXT NOT NULL,
				remote TEXT NOT NULL,
				detail TEXT NOT NULL)`,
			`CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
				BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END`,
			`CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
				BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END`,
		},
		postgres: []string{
			`CREATE TABLE devices (
				id TEXT PRIMARY KEY,
				hostname TEXT NOT NULL,
				device_group TEXT NOT NULL,
				tpm_ek BYTEA,
				tpm_srk BYTEA,
				device_key BYTEA NOT NULL,
				device_key_hash TEXT NOT NULL UNIQUE,
				state TEXT NOT NULL,
				enrolled BIGINT NOT NULL,
				changed BIGINT NOT NULL)`,
			`CREATE TABLE bindings (
				id TEXT PRIMARY KEY,
				device_id TEXT NOT NULL REFERENCES devices(id),
				state TEXT NOT NULL,
				created BIGINT NOT NULL,
				revoked BIGINT NOT NULL DEFAULT 0)`,
			`CREATE TABLE owners (
				device_id TEXT NOT NULL REFERENCES devices(id),
				sid TEXT NOT NULL,
				upn TEXT NOT NULL,
				is_primary BOOLEAN NOT NULL,
				added BIGINT NOT NULL,
				PRIMARY KEY (device_id, sid))`,
			`CREATE TABLE escrow (
				device_id TEXT NOT NULL REFERENCES devices(id),
				keyfile_id TEXT NOT NULL,
				upn TEXT NOT NULL,
				sealed BYTEA NOT NULL,
				created BIGINT NOT NULL,
				PRIMARY KEY (device_id, keyfile_id))`,
			`CREATE TABLE server_keys (
				name TEXT PRIMARY KEY,
				sealed BYTEA NOT NULL,
				created BIGINT NOT NULL)`,
			`CREATE TABLE policies (
				device_group TEXT PRIMARY KEY,
				doc TEXT NOT NULL,
				changed BIGINT NOT NULL)`,
			`CREATE TABLE admins (
				key_hash TEXT PRIMARY KEY,
				name TEXT NOT NULL,
				added BIGINT NOT NULL)`,
			`CREATE TABLE audit (
				seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
				at BIGINT NOT NULL,
				kind TEXT NOT NULL,
				device_id TEXT NOT NULL,
				actor TEXT NOT NULL,
				remote TEXT NOT NULL,
				detail TEXT NOT NULL)`,
			`CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$`,
			`CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
				FOR EACH ROW EXECUTE FUNCTION audit_append_only()`,
			`CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
				FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()`,
		},
	},
	{
		// Administrators' roles (AdminRole); the administrators of version
		// 1 keep every right.
		sqlite:   []string{`ALTER TABLE admins ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'`},
		postgres: []string{`ALTER TABLE admins ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'`},
	},
}

// migrate brings the schema up to the newest version. On PostgreSQL an
// advisory lock held for the transaction keeps two pbnd processes starting
// at once from migrating together; on SQLite the immediate transaction
// does the same.
func (s *Store) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if s.dialect == postgresDB {
			// 0x70626e64 is "pbnd": the lock's name among the database's locks.
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(1885499492)`); err != nil {
				return fmt.Errorf("store: migrate: lock: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx,
			`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
		var have int
		err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&have)
		if err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
		if have > len(migrations) {
			return fmt.Errorf("store: the database has schema version %d, newer than this pbnd's %d",
				have, len(migrations))
		}
		for v := have + 1; v <= len(migrations); v++ {
			if err := s.apply(ctx, tx, v); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) apply(ctx context.Context, tx *sql.Tx, v int) error {
	stmts := migrations[v-1].sqlite
	if s.dialect == postgresDB {
		stmts = migrations[v-1].postgres
	}
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("store: migrate to schema version %d: %w", v, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, v); err != nil {
		return fmt.Errorf("store: migrate to schema version %d: %w", v, err)
	}
	s.log.Info("schema migrated", "version", v)
	return nil
}
