package keyserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// AccountLookup is a Directory that also finds an account without its
// password, as the server does for an owner assigned before imaging. The
// Directory that AD returns is one when its ad.Config has a lookup
// account. Lookup returns an error matching ErrUnavailable when the
// directory does not answer, and any other error for an account that
// does not exist or may not sign in.
type AccountLookup interface {
	Lookup(ctx context.Context, account string) (*Identity, error)
}

func (d adDirectory) Lookup(ctx context.Context, account string) (*Identity, error) {
	id, err := d.c.Lookup(ctx, account)
	if r := ad.ReasonOf(err); r == ad.Unreachable || r == ad.PinMismatch || r == ad.LookupUnavailable {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return nil, err
	}
	return identityOf(id), nil
}

// lookupOwner finds the owner an administrator assigned to a device at its
// enrolment: the account must exist in the directory, be able to sign in,
// and be allowed on the group's devices.
func (s *Server) lookupOwner(ctx context.Context, p store.Policy, account string) (*Identity, error) {
	l, ok := s.cfg.Directory.(AccountLookup)
	if !ok {
		return nil, refuse(codeUnavailable, "this server's directory cannot look accounts up")
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LoginTimeout)
	defer cancel()
	id, err := l.Lookup(ctx, account)
	if err != nil {
		s.log.Info("enroll: directory has no such owner", "account", account, "err", err)
		if ctx.Err() != nil || errors.Is(err, ErrUnavailable) {
			return nil, refuse(codeUnavailable, "the directory did not answer")
		}
		return nil, refuse(codeUnknownAccount, "the directory has no account %q that may sign in", account)
	}
	if id.UPN == "" || id.SID == "" {
		return nil, refuse(codeUnknownAccount, "the directory has no identity for %q", account)
	}
	if !allowed(p, id) {
		return nil, refuse(codeNotAllowed, "%s is in none of the groups allowed on group %q's devices",
			id.UPN, p.Group)
	}
	return id, nil
}

// assignOwner records id as the primary owner of device d, escrows the
// recovery key of their key file kf under them, and returns their keys.
func (s *Server) assignOwner(ctx context.Context, d store.Device, p store.Policy, id *Identity,
	kf keyfile.ID, recovery secret.Bytes) (*claimedV1, error) {
	owner, err := s.cfg.Store.AddOwner(ctx, store.Owner{DeviceID: d.ID, UPN: id.UPN, SID: id.SID},
		p.UsersPerDevice)
	if errors.Is(err, store.ErrTooManyUsers) {
		return nil, refuse(codeTooManyUsers, "device %s has %d users already", d.ID, p.UsersPerDevice)
	}
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Store.PutEscrow(ctx, store.Escrow{DeviceID: d.ID, KeyFileID: kf, UPN: id.UPN,
		Key: recovery}); err != nil {
		return nil, err
	}
	ans, err := s.keys(ctx, id)
	if err != nil {
		return nil, err
	}
	ans.Primary, ans.Policy = owner.Primary, p
	return ans, nil
}

// Owner names a device's owner at its enrolment, before its imaging.
type Owner struct {
	// Account is the owner's account, which the server looks up in the
	// directory.
	Account string
	// KeyFile is the ID of the key file the device makes for them, and
	// RecoveryKey its recovery key, which the server keeps in escrow
	// under the owner.
	KeyFile     keyfile.ID
	RecoveryKey secret.Bytes
}

// EnrollOwned enrolls device d as Enroll does, owned from the start by
// o.Account: no provisioning key file is bound, and the answer's Owner
// holds the owner as the directory knows them and the keys of their key
// file, which the caller wipes. It returns Enroll's errors, and errors
// matching ErrUnknownAccount when the directory has no such account that
// may sign in, ErrNotAllowed when the policy does not allow it on the
// group's devices, and ErrUnavailable when the server cannot look
// accounts up. An administrator's client only.
func (c *Client) EnrollOwned(ctx context.Context, d store.Device, o Owner) (*Provisioning, error) {
	var ans provisioningV1
	err := c.call(ctx, http.MethodPost, "/v1/enroll", &enrollV1{v1: v1{wireV1},
		Device: hexID(d.ID), Hostname: d.Hostname, Group: d.Group, EK: d.EK, SRK: d.SRK,
		DeviceKey: d.Key, Owner: o.Account, OwnerKeyFile: hexID(o.KeyFile),
		RecoveryKey: o.RecoveryKey}, &ans)
	if err != nil {
		return nil, err
	}
	if ans.Owner == nil {
		return nil, errors.New("keyserver: enroll: the answer names no owner")
	}
	p, err := provisioning(&ans)
	if err != nil {
		wipeClaimed(ans.Owner)
		return nil, err
	}
	if p.Owner, err = claim(ans.Owner); err != nil {
		return nil, err
	}
	return p, nil
}
