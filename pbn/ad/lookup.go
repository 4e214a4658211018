package ad

import (
	"context"
	"errors"
)

// Lookup returns the identity of account, its groups included, without
// its password: it binds as the configured LookupAccount and searches
// for the account as Login does after its own bind (two LDAP round trips
// after the bind). An account that cannot sign in (disabled, locked,
// expired) is refused as Login refuses it, so that nobody is named the
// owner of a device they could not use.
//
// It returns an *Error whose Reason is BadAccount or LookupUnavailable
// before anything is sent; WrongCredentials (with nothing bound: the
// account is not found) or the account state's reason when the DC has no
// usable account of that name; Unreachable or PinMismatch when no DC
// answers; Other when the lookup account cannot bind.
func (c *Client) Lookup(ctx context.Context, account string) (*Identity, error) {
	a, err := c.parse(account)
	if err != nil {
		return nil, err
	}
	if c.cfg.LookupAccount == "" || len(c.cfg.LookupAccountPassword) == 0 {
		return nil, &Error{Reason: LookupUnavailable, Account: a.String()}
	}
	var id *Identity
	dc, trips, err := c.withDC(ctx, a.String(), func(s *session) error {
		if err := s.bind(c.cfg.LookupAccount, c.cfg.LookupAccountPassword); err != nil {
			if retryable(err) {
				return err
			}
			return &Error{Reason: Other, Account: a.String(), DC: s.dc.raw,
				Err: errors.Join(errors.New("bind as the lookup account"), err)}
		}
		var err error
		id, err = c.identity(s, a)
		return err
	})
	if err != nil {
		return nil, err
	}
	id.DC, id.RoundTrips = dc, trips
	id.Owner, id.Admin = c.membership(id.Groups)
	if !id.Owner && !id.Admin {
		return nil, &Error{Reason: NotAllowed, Account: a.String(), DC: dc}
	}
	return id, nil
}
