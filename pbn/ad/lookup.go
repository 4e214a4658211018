package ad

import (
	"context"
	"fmt"

	"github.com/pbn-project/pbn/pbn/secret"
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
	return c.identify(ctx, a, func(s *session) error {
		return s.bindAs(a, "lookup", c.cfg.LookupAccount, c.cfg.LookupAccountPassword)
	})
}

// bindAs binds s as one of the configuration's own accounts, the change
// or the lookup account (role), for an operation on a. A DC that cannot
// be reached gives the error to try the next; any other failure is
// Other: the configuration's, not the person's.
func (s *session) bindAs(a Account, role, account string, password secret.Bytes) error {
	if err := s.bind(account, password); err != nil {
		if retryable(err) {
			return err
		}
		return &Error{Reason: Other, Account: a.String(), DC: s.dc.raw,
			Err: fmt.Errorf("bind as the %s account: %w", role, err)}
	}
	return nil
}
