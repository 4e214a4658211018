package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/pbn-project/pbn/keyfile"
)

// DeviceState is what an administrator says about a device.
type DeviceState string

// The device states.
const (
	// DeviceActive devices unlock and claim.
	DeviceActive DeviceState = "active"
	// DeviceLost devices are refused everything until retired.
	DeviceLost DeviceState = "lost"
	// DeviceRetired devices are refused everything until enrolled again.
	DeviceRetired DeviceState = "retired"
)

// ParseDeviceState parses the name of a device state.
func ParseDeviceState(s string) (DeviceState, error) {
	switch st := DeviceState(s); st {
	case DeviceActive, DeviceLost, DeviceRetired:
		return st, nil
	}
	return "", fmt.Errorf("unknown device state %q (want active, lost or retired)", s)
}

// Device is one enrolled laptop.
type Device struct {
	ID       keyfile.ID
	Hostname string
	// Group is the device group whose policy applies.
	Group string
	// EK and SRK are the TPM's endorsement key and storage root key, each
	// a DER SubjectPublicKeyInfo (TPM 2.0 Part 1, section 36 and 37).
	EK, SRK []byte
	// Key is the device's own signing key, a DER SubjectPublicKeyInfo: the
	// device proves itself to the server with it in TLS.
	Key      []byte
	State    DeviceState
	Enrolled time.Time
	Changed  time.Time
}

// KeyHash is how the store indexes a device or administrator key: the hex
// SHA-256 of its DER SubjectPublicKeyInfo.
func KeyHash(spki []byte) string {
	h := sha256.Sum256(spki)
	return hex.EncodeToString(h[:])
}

// PutDevice enrolls d, or enrolls it again with new keys (re-imaging): the
// device becomes active, every binding it had is revoked and its users are
// forgotten, so that the next claim makes a new primary user. Escrowed
// recovery keys stay. It returns
// ErrDeviceLost for a device marked lost.
func (s *Store) PutDevice(ctx context.Context, d Device) error {
	now := stamp(s.now())
	return s.tx(ctx, func(tx *sql.Tx) error {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM devices WHERE id = $1`+s.forUpdate(),
			d.ID.String()).Scan(&state)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO devices
				(id, hostname, device_group, tpm_ek, tpm_srk, device_key, device_key_hash,
				state, enrolled, changed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)`,
				d.ID.String(), d.Hostname, d.Group, d.EK, d.SRK, d.Key, KeyHash(d.Key),
				DeviceActive, now)
		case err != nil:
		case DeviceState(state) == DeviceLost:
			err = ErrDeviceLost
		default:
			err = s.reenroll(ctx, tx, d, now)
		}
		if err != nil {
			return fmt.Errorf("store: enroll device %s: %w", d.ID, err)
		}
		return nil
	})
}

func (s *Store) reenroll(ctx context.Context, tx *sql.Tx, d Device, now int64) error {
	_, err := tx.ExecContext(ctx, `UPDATE devices SET hostname = $2, device_group = $3,
		tpm_ek = $4, tpm_srk = $5, device_key = $6, device_key_hash = $7, state = $8,
		enrolled = $9, changed = $9 WHERE id = $1`,
		d.ID.String(), d.Hostname, d.Group, d.EK, d.SRK, d.Key, KeyHash(d.Key), DeviceActive, now)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE bindings SET state = $2, revoked = $3
		WHERE device_id = $1 AND state = $4`, d.ID.String(), BindingRevoked, now, BindingActive)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM owners WHERE device_id = $1`, d.ID.String())
	return err
}

// forUpdate locks the selected row on PostgreSQL; SQLite's immediate
// transactions already hold the database's write lock.
func (s *Store) forUpdate() string {
	if s.dialect == postgresDB {
		return " FOR UPDATE"
	}
	return ""
}

const deviceColumns = `id, hostname, device_group, tpm_ek, tpm_srk, device_key, state,
	enrolled, changed`

func scanDevice(row interface{ Scan(...any) error }) (Device, error) {
	var d Device
	var id, state string
	var enrolled, changed int64
	err := row.Scan(&id, &d.Hostname, &d.Group, &d.EK, &d.SRK, &d.Key, &state, &enrolled, &changed)
	if errors.Is(err, sql.ErrNoRows) {
		return d, ErrNotFound
	}
	if err != nil {
		return d, err
	}
	d.ID, err = keyfile.ParseID(id)
	d.State = DeviceState(state)
	d.Enrolled, d.Changed = unstamp(enrolled), unstamp(changed)
	return d, err
}

// Device returns the device with the given ID, or ErrNotFound.
func (s *Store) Device(ctx context.Context, id keyfile.ID) (Device, error) {
	d, err := scanDevice(s.db.QueryRowContext(ctx,
		`SELECT `+deviceColumns+` FROM devices WHERE id = $1`, id.String()))
	if err != nil {
		return d, fmt.Errorf("store: device %s: %w", id, err)
	}
	return d, nil
}

// DeviceByKey returns the device whose signing key is the DER
// SubjectPublicKeyInfo spki, or ErrNotFound.
func (s *Store) DeviceByKey(ctx context.Context, spki []byte) (Device, error) {
	d, err := scanDevice(s.queryRow(ctx,
		`SELECT `+deviceColumns+` FROM devices WHERE device_key_hash = $1`, KeyHash(spki)))
	if err != nil {
		return d, fmt.Errorf("store: device by key: %w", err)
	}
	return d, nil
}

// Devices returns every device, ordered by hostname.
func (s *Store) Devices(ctx context.Context) ([]Device, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+deviceColumns+` FROM devices ORDER BY hostname, id`)
	if err != nil {
		return nil, fmt.Errorf("store: devices: %w", err)
	}
	defer rows.Close()
	var ds []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("store: devices: %w", err)
		}
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: devices: %w", err)
	}
	return ds, nil
}

// SetDeviceState marks a device active, lost or retired. It returns
// ErrNotFound for an unknown device.
func (s *Store) SetDeviceState(ctx context.Context, id keyfile.ID, state DeviceState) error {
	err := oneRow(s.db.ExecContext(ctx, `UPDATE devices SET state = $2, changed = $3 WHERE id = $1`,
		id.String(), state, stamp(s.now())))
	if err != nil {
		return fmt.Errorf("store: mark device %s %s: %w", id, state, err)
	}
	return nil
}

// BindingState tells whether a provisioning key file still opens with the
// server's help.
type BindingState string

// The binding states.
const (
	BindingActive  BindingState = "active"
	BindingRevoked BindingState = "revoked"
)

// Binding ties a provisioning key file to its device.
type Binding struct {
	// ID is the provisioning key file's ID (keyfile.Header.ID).
	ID       keyfile.ID
	DeviceID keyfile.ID
	State    BindingState
	Created  time.Time
	Revoked  time.Time
}

// AddBinding records a new active binding of key file id to a device.
func (s *Store) AddBinding(ctx context.Context, id, device keyfile.ID) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO bindings (id, device_id, state, created)
		VALUES ($1, $2, $3, $4)`, id.String(), device.String(), BindingActive, stamp(s.now()))
	if err != nil {
		return fmt.Errorf("store: bind key file %s to device %s: %w", id, device, err)
	}
	return nil
}

// Binding returns the binding of key file id, or ErrNotFound.
func (s *Store) Binding(ctx context.Context, id keyfile.ID) (Binding, error) {
	var b Binding
	var dev, state string
	var created, revoked int64
	err := s.queryRow(ctx, `SELECT device_id, state, created, revoked FROM bindings
		WHERE id = $1`, id.String()).Scan(&dev, &state, &created, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return b, fmt.Errorf("store: binding %s: %w", id, err)
	}
	b.ID, b.State = id, BindingState(state)
	b.Created, b.Revoked = unstamp(created), unstamp(revoked)
	b.DeviceID, err = keyfile.ParseID(dev)
	return b, err
}

// RevokeBinding revokes the binding of key file id. Revoking a revoked
// binding changes nothing; an unknown one returns ErrNotFound.
func (s *Store) RevokeBinding(ctx context.Context, id keyfile.ID) error {
	err := oneRow(s.db.ExecContext(ctx, `UPDATE bindings SET state = $2,
		revoked = CASE WHEN state = $4 THEN $3 ELSE revoked END WHERE id = $1`,
		id.String(), BindingRevoked, stamp(s.now()), BindingActive))
	if err != nil {
		return fmt.Errorf("store: revoke binding %s: %w", id, err)
	}
	return nil
}
