package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Policy is what applies to every device of a device group.
type Policy struct {
	// Group names the device group.
	Group string `json:"group"`
	// Provisioning tells whether devices start with a provisioning key
	// file; when false, key files are made for known owners directly.
	Provisioning bool `json:"provisioning"`
	// Autoboot lets a provisioning key file open its device unattended on
	// the enterprise network.
	Autoboot bool `json:"autoboot"`
	// OfflineLimit is how long a user's key file opens its device without
	// contact with the server; zero means no limit. JSON carries it in
	// nanoseconds.
	OfflineLimit time.Duration `json:"offline_limit"`
	// Administrators are the userPrincipalNames of the administrator
	// accounts added to every key file package of the group.
	Administrators []string `json:"administrators"`
	// PCRs are the SHA-256 PCRs that the TPM seals the FDE key to.
	PCRs []int `json:"pcrs"`
	// UsersPerDevice is how many users a device may have.
	UsersPerDevice int `json:"users_per_device"`
	// AllowedGroups are the SIDs of the AD groups whose members may claim
	// a device; empty allows every account the directory accepts.
	AllowedGroups []string `json:"allowed_groups"`
}

// DefaultPolicy is the policy of a group that no administrator has set:
// provisioning with autoboot, one user per device, 30 days offline, and the
// PCRs of the firmware, the boot loader and Secure Boot's state.
func DefaultPolicy(group string) Policy {
	return Policy{
		Group:          group,
		Provisioning:   true,
		Autoboot:       true,
		OfflineLimit:   30 * 24 * time.Hour,
		PCRs:           []int{0, 2, 4, 7},
		UsersPerDevice: 1,
	}
}

// Check reports what is wrong with p, if anything.
func (p Policy) Check() error {
	var errs []error
	if p.Group == "" {
		errs = append(errs, errors.New("no device group"))
	}
	if p.OfflineLimit < 0 {
		errs = append(errs, errors.New("negative offline limit"))
	}
	if p.UsersPerDevice < 1 {
		errs = append(errs, errors.New("users per device below 1"))
	}
	if len(p.PCRs) == 0 {
		errs = append(errs, errors.New("empty PCR set (the TPM would seal to nothing)"))
	}
	seen := map[int]bool{}
	for _, i := range p.PCRs {
		if i < 0 || i > 23 || seen[i] {
			errs = append(errs, fmt.Errorf("PCR %d out of range 0-23 or repeated", i))
		}
		seen[i] = true
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("policy %q: %w", p.Group, err)
	}
	return nil
}

// Policy returns the policy of a device group, DefaultPolicy when none was
// set.
func (s *Store) Policy(ctx context.Context, group string) (Policy, error) {
	var doc []byte
	err := s.queryRow(ctx, `SELECT doc FROM policies WHERE device_group = $1`,
		group).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return DefaultPolicy(group), nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("store: policy %q: %w", group, err)
	}
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("store: policy %q: %w", group, err)
	}
	return p, nil
}

// SetPolicy sets the policy of p.Group, after checking it.
func (s *Store) SetPolicy(ctx context.Context, p Policy) error {
	if err := p.Check(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	doc, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("store: policy %q: %w", p.Group, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO policies (device_group, doc, changed)
		VALUES ($1, $2, $3) ON CONFLICT (device_group)
		DO UPDATE SET doc = excluded.doc, changed = excluded.changed`,
		p.Group, string(doc), stamp(s.now()))
	if err != nil {
		return fmt.Errorf("store: set policy %q: %w", p.Group, err)
	}
	return nil
}
