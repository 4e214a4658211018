package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
)

// RemoveOwner removes the user whose objectSid is sid from a device, so
// that the deployed stage refuses them at their next online sign-in. The
// recovery keys held for their key files stay: the help desk may still
// need them. It returns ErrNotFound when the device has no such user.
func (s *Store) RemoveOwner(ctx context.Context, device keyfile.ID, sid string) error {
	err := oneRow(s.db.ExecContext(ctx, `DELETE FROM owners WHERE device_id = $1 AND sid = $2`,
		device.String(), sid))
	if err != nil {
		return fmt.Errorf("store: remove owner %s from device %s: %w", sid, device, err)
	}
	return nil
}

// EscrowOf returns the recovery key held for one key file of a device,
// opened, or ErrNotFound. The caller wipes its Key.
func (s *Store) EscrowOf(ctx context.Context, device, keyFile keyfile.ID) (Escrow, error) {
	e := Escrow{DeviceID: device, KeyFileID: keyFile}
	var sealed []byte
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT upn, sealed, created FROM escrow
		WHERE device_id = $1 AND keyfile_id = $2`, device.String(), keyFile.String()).
		Scan(&e.UPN, &sealed, &created)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err == nil {
		e.Created = unstamp(created)
		e.Key, err = s.seal.open(escrowPurpose(device, keyFile), sealed)
	}
	if err != nil {
		return Escrow{}, fmt.Errorf("store: recovery key of key file %s: %w", keyFile, err)
	}
	return e, nil
}
