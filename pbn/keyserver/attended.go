package keyserver

import (
	"context"
	"net/http"
	"slices"

	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// attended checks an unlock on a device whose group's policy turns
// autoboot off (store.Policy.Autoboot): it is allowed only with someone at
// the prompt, a user whom the directory accepts now and who has claimed
// the device (claim), as in the secure moment, whose steps after the claim
// open the provisioning key file to add the user's keyslot and to kill its
// own. An unattended boot carries no account and stays refused. It
// returns the user's UPN, for the audit trail.
func (s *Server) attended(r *http.Request, c caller, m *unlockV1, p store.Policy) (string, error) {
	if m.Account == "" {
		return "", refuse(codeNotAllowed, "the policy of group %q does not allow unattended boot", p.Group)
	}
	id, err := s.login(r.Context(), m.Account, secret.Bytes(m.Password))
	if err != nil {
		return "", err
	}
	owners, err := s.cfg.Store.Owners(r.Context(), c.device.ID)
	if err != nil {
		return "", err
	}
	if !slices.ContainsFunc(owners, func(o store.Owner) bool { return o.SID == id.SID }) {
		return "", refuse(codeNotAllowed, "%s has not claimed device %s, and the policy of group %q "+
			"does not allow unattended boot", id.UPN, c.device.ID, p.Group)
	}
	return id.UPN, nil
}

// signInKey is the context key of WithSignIn.
type signInKey struct{}

// attendee is the user at the prompt, as WithSignIn carries them.
type attendee struct {
	account  string
	password secret.Bytes
}

// WithSignIn returns a context under which Transport's unlocks carry the
// account and password that a user just typed at the prompt, as the secure
// moment's do: the key server then opens a provisioning key file whose
// device's group does not allow autoboot, for a user the directory accepts
// and who has claimed the device. The password is not copied: the caller
// wipes it once the context is no longer used.
func WithSignIn(ctx context.Context, account string, password secret.Bytes) context.Context {
	return context.WithValue(ctx, signInKey{}, attendee{account: account, password: password})
}

// signInOf returns what WithSignIn put in ctx, if anything.
func signInOf(ctx context.Context) (string, secret.Bytes) {
	si, _ := ctx.Value(signInKey{}).(attendee)
	return si.account, si.password
}
