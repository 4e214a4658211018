package keyserver

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// groupKeySize and enterpriseKeySize are the sizes of the keys the server
// makes for groups and for the enterprise.
const (
	groupKeySize      = 32
	enterpriseKeySize = 32
)

// claim is the server's side of the secure moment: it checks the user
// against the directory itself, checks the policy, records the owner (not
// an administrator account of the policy: see claimant), takes the new
// key file's recovery key into escrow and returns the user's group keys
// and the enterprise key.
func (s *Server) claim(w http.ResponseWriter, r *http.Request, c caller) error {
	var m claimV1
	raw, err := readRequest(w, r, &m)
	if err != nil {
		return err
	}
	defer clear(raw)
	password := secret.Bytes(m.Password)
	defer password.Wipe()
	recovery := secret.Bytes(m.RecoveryKey)
	defer recovery.Wipe()

	if !m.Binding.isZero() {
		if err := s.activeBinding(r, c, keyfile.ID(m.Binding)); err != nil {
			return err
		}
	}
	id, err := s.login(r.Context(), m.Account, password)
	if err != nil {
		return err
	}
	p, err := s.cfg.Store.Policy(r.Context(), c.device.Group)
	if err != nil {
		return err
	}
	kind, owner, err := s.claimant(r.Context(), c, p, id)
	if err != nil {
		return err
	}

	ans, err := s.keys(r.Context(), id)
	if err != nil {
		return err
	}
	defer wipeClaimed(ans)
	ans.Primary, ans.Kind, ans.Policy = owner.Primary, kind.String(), p
	if err := s.cfg.Store.PutEscrow(r.Context(), store.Escrow{DeviceID: c.device.ID,
		KeyFileID: keyfile.ID(m.KeyFile), UPN: id.UPN, Key: recovery}); err != nil {
		return err
	}
	if err := s.record(r, c, "claim", map[string]string{"upn": id.UPN, "sid": id.SID,
		"key_file": keyfile.ID(m.KeyFile).String(), "binding": keyfile.ID(m.Binding).String(),
		"primary": strconv.FormatBool(owner.Primary), "kind": kind.String()}); err != nil {
		return err
	}
	return reply(w, ans)
}

// login has the directory check the account, within the login timeout.
func (s *Server) login(ctx context.Context, account string, password secret.Bytes) (*Identity, error) {
	if s.cfg.Directory == nil {
		return nil, refuse(codeUnavailable, "this server has no directory to check accounts against")
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LoginTimeout)
	defer cancel()
	id, err := s.cfg.Directory.Login(ctx, account, password)
	// TODO: tell the device why the directory refused (disabled, locked,
	// password expired; ad.Reason), so that the prompt can say more than
	// that the sign-in was refused; the agent's own LDAP check says it
	// before the claim today.
	if err != nil {
		s.log.Info("claim: directory refused the account", "account", account, "err", err)
		if ctx.Err() != nil || errors.Is(err, ErrUnavailable) {
			return nil, refuse(codeUnavailable, "the directory did not answer")
		}
		return nil, refuse(codeLoginRefused, "the directory refused the sign-in")
	}
	if id.UPN == "" || id.SID == "" {
		return nil, refuse(codeLoginRefused, "the directory returned no identity")
	}
	return id, nil
}

// allowed reports whether the policy lets id claim a device: when it names
// allowed groups, id must belong to one of them.
func allowed(p store.Policy, id *Identity) bool {
	if len(p.AllowedGroups) == 0 {
		return true
	}
	return slices.ContainsFunc(id.Groups, func(g Group) bool {
		return slices.Contains(p.AllowedGroups, g.SID)
	})
}

// keys returns the identity's group keys and the enterprise key, made on
// first use and kept sealed in the store.
func (s *Server) keys(ctx context.Context, id *Identity) (*claimedV1, error) {
	ans := &claimedV1{v1: v1{wireV1}, UPN: id.UPN, SID: id.SID}
	ent, err := s.cfg.Store.ServerKey(ctx, "enterprise", enterpriseKeySize)
	if err != nil {
		return nil, err
	}
	ans.Enterprise = ent
	for _, g := range id.Groups {
		k, err := s.cfg.Store.ServerKey(ctx, "group "+g.SID, groupKeySize)
		if err != nil {
			wipeClaimed(ans)
			return nil, err
		}
		ans.Groups = append(ans.Groups, groupKeyV1{SID: g.SID, Name: g.Name, Key: k})
	}
	return ans, nil
}

func wipeClaimed(m *claimedV1) {
	clear(m.Enterprise)
	for _, g := range m.Groups {
		clear(g.Key)
	}
}
