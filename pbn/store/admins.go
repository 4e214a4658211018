package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AdminRole is what an administrator may do on the key server.
type AdminRole string

// The roles of administrators.
const (
	// RoleAdmin may do everything the API offers administrators.
	RoleAdmin AdminRole = "admin"
	// RoleEnroll may only enroll devices: the credential that the imaging
	// image carries, where anyone who fetches the image can copy it.
	RoleEnroll AdminRole = "enroll"
)

// Check reports whether r is one of the roles.
func (r AdminRole) Check() error {
	switch r {
	case RoleAdmin, RoleEnroll:
		return nil
	}
	return fmt.Errorf("store: administrator role %q, want %q or %q", r, RoleAdmin, RoleEnroll)
}

// Admin is an administrator whose key the key server knows.
type Admin struct {
	// Name names the administrator in the audit trail.
	Name string
	Role AdminRole
	// Added is when the key was authorised; NewAdmin ignores it.
	Added time.Time
}

// ErrAdminExists is returned by NewAdmin when the name or the key is an
// administrator's already.
var ErrAdminExists = errors.New("an administrator of that name or key exists already")

// AddAdmin authorises the administrator key spki (a DER
// SubjectPublicKeyInfo) under name with RoleAdmin: pbnd's first
// administrator, whose file it keeps. Adding a key again renames it.
func (s *Store) AddAdmin(ctx context.Context, name string, spki []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO admins (key_hash, name, role, added) VALUES ($1, $2, $3, $4)
		ON CONFLICT (key_hash) DO UPDATE SET name = excluded.name, role = excluded.role`,
		KeyHash(spki), name, string(RoleAdmin), stamp(s.now()))
	if err != nil {
		return fmt.Errorf("store: add administrator %s: %w", name, err)
	}
	return nil
}

// NewAdmin authorises the administrator key spki (a DER
// SubjectPublicKeyInfo) under a.Name with a.Role. It returns
// ErrAdminExists when an administrator has the name or the key already,
// so that the audit trail's names stay one administrator's each.
func (s *Store) NewAdmin(ctx context.Context, a Admin, spki []byte) error {
	if err := a.Role.Check(); err != nil {
		return err
	}
	hash := KeyHash(spki)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM admins WHERE name = $1 OR key_hash = $2`,
			a.Name, hash).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return ErrAdminExists
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO admins (key_hash, name, role, added) VALUES ($1, $2, $3, $4)`,
			hash, a.Name, string(a.Role), stamp(s.now()))
		return err
	})
	if err != nil {
		return fmt.Errorf("store: new administrator %s: %w", a.Name, err)
	}
	return nil
}

// Admin returns the administrator whose key is spki, or ErrNotFound.
func (s *Store) Admin(ctx context.Context, spki []byte) (Admin, error) {
	var a Admin
	var added int64
	err := s.db.QueryRowContext(ctx, `SELECT name, role, added FROM admins WHERE key_hash = $1`,
		KeyHash(spki)).Scan(&a.Name, &a.Role, &added)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Admin{}, fmt.Errorf("store: administrator: %w", err)
	}
	a.Added = unstamp(added)
	return a, nil
}

// Admins returns the administrators, by name.
func (s *Store) Admins(ctx context.Context) ([]Admin, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, role, added FROM admins ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: administrators: %w", err)
	}
	defer rows.Close()
	var as []Admin
	for rows.Next() {
		var a Admin
		var added int64
		if err := rows.Scan(&a.Name, &a.Role, &added); err != nil {
			return nil, fmt.Errorf("store: administrators: %w", err)
		}
		a.Added = unstamp(added)
		as = append(as, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: administrators: %w", err)
	}
	return as, nil
}

// RemoveAdmin removes the administrator called name: its key is refused
// from then on. It returns ErrNotFound when there is none.
func (s *Store) RemoveAdmin(ctx context.Context, name string) error {
	err := oneRow(s.db.ExecContext(ctx, `DELETE FROM admins WHERE name = $1`, name))
	if err != nil {
		return fmt.Errorf("store: remove administrator %s: %w", name, err)
	}
	return nil
}
