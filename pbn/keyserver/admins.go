package keyserver

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"

	"github.com/pbn-project/pbn/pbn/store"
)

// addAdmin authorises a new administrator's key with its role.
func (s *Server) addAdmin(w http.ResponseWriter, r *http.Request, c caller) error {
	var m adminAddV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	if _, err := x509.ParsePKIXPublicKey(m.Key); err != nil {
		return refuse(codeBadRequest, "key: not a DER SubjectPublicKeyInfo: %v", err)
	}
	err := s.cfg.Store.NewAdmin(r.Context(), store.Admin{Name: m.Name, Role: store.AdminRole(m.Role)}, m.Key)
	if errors.Is(err, store.ErrAdminExists) {
		return refuse(codeBadRequest, "an administrator called %q, or with that key, exists already", m.Name)
	}
	if err != nil {
		return err
	}
	if err := s.record(r, c, "admin-add", map[string]string{"name": m.Name, "role": m.Role,
		"key": store.KeyHash(m.Key)}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}

// admins lists the administrators.
func (s *Server) admins(w http.ResponseWriter, r *http.Request, _ caller) error {
	as, err := s.cfg.Store.Admins(r.Context())
	if err != nil {
		return err
	}
	ans := &adminsV1{v1: v1{wireV1}, Admins: []adminV1{}}
	for _, a := range as {
		ans.Admins = append(ans.Admins, adminV1{Name: a.Name, Role: string(a.Role), Added: a.Added})
	}
	return reply(w, ans)
}

// removeAdmin removes an administrator other than the caller, whose key
// the server refuses from then on.
func (s *Server) removeAdmin(w http.ResponseWriter, r *http.Request, c caller) error {
	var m adminRemoveV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	if m.Name == c.admin {
		return refuse(codeBadRequest, "administrator %s may not remove itself", m.Name)
	}
	err := s.cfg.Store.RemoveAdmin(r.Context(), m.Name)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(codeNotFound, "no administrator called %q", m.Name)
	}
	if err != nil {
		return err
	}
	if err := s.record(r, c, "admin-remove", map[string]string{"name": m.Name,
		"reason": m.Reason}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}

// AddAdmin authorises the administrator key spki (a DER
// SubjectPublicKeyInfo, as PublicKey returns it) under name with role, so
// that an AdminFile holding its private key acts as that administrator.
// An administrator of store.RoleAdmin only: others get an error matching
// ErrRoleRefused.
func (c *Client) AddAdmin(ctx context.Context, name string, role store.AdminRole, spki []byte) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/admins", &adminAddV1{v1: v1{wireV1}, Name: name,
		Role: string(role), Key: spki}, &okV1{})
}

// Admins lists the administrators, by name. An administrator of
// store.RoleAdmin only.
func (c *Client) Admins(ctx context.Context) ([]store.Admin, error) {
	var ans adminsV1
	if err := c.call(ctx, http.MethodGet, "/v1/admin/admins", nil, &ans); err != nil {
		return nil, err
	}
	var as []store.Admin
	for _, a := range ans.Admins {
		as = append(as, store.Admin{Name: a.Name, Role: store.AdminRole(a.Role), Added: a.Added})
	}
	return as, nil
}

// RemoveAdmin removes the administrator called name, with the reason
// recorded; its key is refused from then on. It returns an error matching
// ErrNotFound when there is none; an administrator may not remove itself.
// An administrator of store.RoleAdmin only.
func (c *Client) RemoveAdmin(ctx context.Context, name, reason string) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/admins/remove", &adminRemoveV1{v1: v1{wireV1},
		Name: name, Reason: reason}, &okV1{})
}
