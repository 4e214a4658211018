package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Owner is one user of a device, recorded at the secure moment.
type Owner struct {
	DeviceID keyfile.ID
	// UPN and SID are the user's userPrincipalName and objectSid
	// (MS-ADTS 2.2.16 and 2.4.2.2).
	UPN, SID string
	// Primary is the device's first user.
	Primary bool
	Added   time.Time
}

// AddOwner records o as a user of its device, unless the device already has
// limit users: then it returns ErrTooManyUsers. A user that is already
// recorded stays, with its UPN brought up to date. It returns the owner as
// stored (Primary tells whether it is the device's first user) and
// ErrNotFound for an unknown device.
func (s *Store) AddOwner(ctx context.Context, o Owner, limit int) (Owner, error) {
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var id string
		err := tx.QueryRowContext(ctx, `SELECT id FROM devices WHERE id = $1`+s.forUpdate(),
			o.DeviceID.String()).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}

		var added int64
		err = tx.QueryRowContext(ctx, `SELECT is_primary, added FROM owners
			WHERE device_id = $1 AND sid = $2`, id, o.SID).Scan(&o.Primary, &added)
		if err == nil {
			o.Added = unstamp(added)
			_, err = tx.ExecContext(ctx, `UPDATE owners SET upn = $3 WHERE device_id = $1 AND sid = $2`,
				id, o.SID, o.UPN)
			return err
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}

		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM owners WHERE device_id = $1`,
			id).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return ErrTooManyUsers
		}
		o.Primary, o.Added = n == 0, now.UTC()
		_, err = tx.ExecContext(ctx, `INSERT INTO owners (device_id, sid, upn, is_primary, added)
			VALUES ($1, $2, $3, $4, $5)`, id, o.SID, o.UPN, o.Primary, stamp(now))
		return err
	})
	if err != nil {
		return o, fmt.Errorf("store: add owner %s to device %s: %w", o.UPN, o.DeviceID, err)
	}
	return o, nil
}

// Owners returns the users of a device, the primary one first.
func (s *Store) Owners(ctx context.Context, device keyfile.ID) ([]Owner, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT sid, upn, is_primary, added FROM owners
		WHERE device_id = $1 ORDER BY is_primary DESC, added, sid`, device.String())
	if err != nil {
		return nil, fmt.Errorf("store: owners of %s: %w", device, err)
	}
	defer rows.Close()
	var owners []Owner
	for rows.Next() {
		o := Owner{DeviceID: device}
		var added int64
		if err := rows.Scan(&o.SID, &o.UPN, &o.Primary, &added); err != nil {
			return nil, fmt.Errorf("store: owners of %s: %w", device, err)
		}
		o.Added = unstamp(added)
		owners = append(owners, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: owners of %s: %w", device, err)
	}
	return owners, nil
}

// Escrow is a recovery key held for a device's key file.
type Escrow struct {
	DeviceID  keyfile.ID
	KeyFileID keyfile.ID
	// UPN is the key file's user; empty for a provisioning key file.
	UPN string
	// Key is the recovery key as the device sent it. The caller wipes it.
	Key     secret.Bytes
	Created time.Time
}

func escrowPurpose(device, keyFile keyfile.ID) string {
	return "escrow " + device.String() + " " + keyFile.String()
}

// PutEscrow seals e.Key under the master key and keeps it, replacing what
// was held for the same key file.
func (s *Store) PutEscrow(ctx context.Context, e Escrow) error {
	sealed := s.seal.sealBlob(escrowPurpose(e.DeviceID, e.KeyFileID), e.Key)
	_, err := s.db.ExecContext(ctx, `INSERT INTO escrow (device_id, keyfile_id, upn, sealed, created)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, keyfile_id)
		DO UPDATE SET upn = excluded.upn, sealed = excluded.sealed, created = excluded.created`,
		e.DeviceID.String(), e.KeyFileID.String(), e.UPN, sealed, stamp(s.now()))
	if err != nil {
		return fmt.Errorf("store: escrow recovery key of %s: %w", e.DeviceID, err)
	}
	return nil
}

// Escrowed returns the recovery keys held for a device, newest first,
// opened. It returns ErrSealed when one does not open under the master key.
func (s *Store) Escrowed(ctx context.Context, device keyfile.ID) ([]Escrow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT keyfile_id, upn, sealed, created FROM escrow
		WHERE device_id = $1 ORDER BY created DESC, keyfile_id`, device.String())
	if err != nil {
		return nil, fmt.Errorf("store: recovery keys of %s: %w", device, err)
	}
	defer rows.Close()
	var es []Escrow
	for rows.Next() {
		e, err := s.scanEscrow(rows, device)
		if err != nil {
			for _, e := range es {
				e.Key.Wipe()
			}
			return nil, fmt.Errorf("store: recovery keys of %s: %w", device, err)
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: recovery keys of %s: %w", device, err)
	}
	return es, nil
}

func (s *Store) scanEscrow(rows *sql.Rows, device keyfile.ID) (Escrow, error) {
	e := Escrow{DeviceID: device}
	var kf string
	var sealed []byte
	var created int64
	if err := rows.Scan(&kf, &e.UPN, &sealed, &created); err != nil {
		return e, err
	}
	var err error
	if e.KeyFileID, err = keyfile.ParseID(kf); err != nil {
		return e, err
	}
	e.Created = unstamp(created)
	e.Key, err = s.seal.open(escrowPurpose(device, e.KeyFileID), sealed)
	return e, err
}

// ServerKey returns the server-held secret called name, of size bytes,
// making it on first use. Every pbnd sharing the database gets the same
// one: the first to insert it wins. The caller wipes the result. Names in
// use: "enterprise" (the enterprise key for file sync) and "group " followed
// by a group's SID (that group's key).
func (s *Store) ServerKey(ctx context.Context, name string, size int) (secret.Bytes, error) {
	purpose := "server key " + name
	fresh := secret.Random(size)
	sealed := s.seal.sealBlob(purpose, fresh)
	fresh.Wipe()
	_, err := s.db.ExecContext(ctx, `INSERT INTO server_keys (name, sealed, created)
		VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING`, name, sealed, stamp(s.now()))
	if err == nil {
		err = s.db.QueryRowContext(ctx, `SELECT sealed FROM server_keys WHERE name = $1`,
			name).Scan(&sealed)
	}
	if err != nil {
		return nil, fmt.Errorf("store: server key %q: %w", name, err)
	}
	k, err := s.seal.open(purpose, sealed)
	if err != nil {
		return nil, fmt.Errorf("store: server key %q: %w", name, err)
	}
	return k, nil
}
