package keyserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/secret"
)

// AD returns a Directory that checks claims against Active Directory
// through c: the server's own LDAP bind as the user, never the device's
// word. The account must have a userPrincipalName, which the server records
// as the owner. When no domain controller answers, Login's error matches
// ErrUnavailable, and the device is told to try again rather than that
// the password is wrong.
func AD(c *ad.Client) Directory { return adDirectory{c} }

type adDirectory struct{ c *ad.Client }

func (d adDirectory) Login(ctx context.Context, account string, password secret.Bytes) (*Identity, error) {
	id, err := d.c.Login(ctx, account, password)
	var e *ad.Error
	if errors.As(err, &e) && (e.Reason == ad.Unreachable || e.Reason == ad.PinMismatch) {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return nil, err
	}
	return identityOf(id), nil
}

// identityOf is the directory's identity as the server records it.
func identityOf(id *ad.Identity) *Identity {
	out := &Identity{UPN: id.UPN, SID: id.SID}
	for _, g := range id.Groups {
		out.Groups = append(out.Groups, Group{SID: g.SID, Name: g.Name})
	}
	return out
}
