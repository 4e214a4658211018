package keyserver

import (
	"context"
	"errors"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/store"
)

// claimant decides what a claim makes of id on the device. An owner (a
// claim repeated after a power cut) stays one; an administrator account
// of the policy (store.Policy.Administrators) who installs the device
// gets an administrator's key file and is not recorded as an owner, so
// that the first user to sign in afterwards becomes the primary user;
// anyone else is admitted as an owner by the policy (addOwner). It
// returns the kind of key file id gets and the owner as stored, zero for
// an administrator.
func (s *Server) claimant(ctx context.Context, c caller, p store.Policy, id *Identity) (keyfile.Kind, store.Owner, error) {
	kind, err := s.userKind(ctx, c, p, id)
	if err != nil {
		return 0, store.Owner{}, err
	}
	if kind == keyfile.KindAdministrator {
		return kind, store.Owner{}, nil
	}
	o, err := s.addOwner(ctx, c, p, id)
	return keyfile.KindUser, o, err
}

// addOwner records id as a user of the device, within the policy's
// allowed groups and users per device; a user recorded already stays as
// they were (store.Store.AddOwner). The first user of a device is its
// primary user.
func (s *Server) addOwner(ctx context.Context, c caller, p store.Policy, id *Identity) (store.Owner, error) {
	if !allowed(p, id) {
		return store.Owner{}, refuse(codeNotAllowed, "%s is in none of the groups allowed on group %q's devices",
			id.UPN, p.Group)
	}
	o, err := s.cfg.Store.AddOwner(ctx, store.Owner{DeviceID: c.device.ID, UPN: id.UPN, SID: id.SID},
		p.UsersPerDevice)
	if errors.Is(err, store.ErrTooManyUsers) {
		return o, refuse(codeTooManyUsers, "device %s has %d users already", c.device.ID, p.UsersPerDevice)
	}
	return o, err
}
