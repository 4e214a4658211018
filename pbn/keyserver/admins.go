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

// AddAdmin authorises the administrator key spki (a DER
// SubjectPublicKeyInfo, as PublicKey returns it) under name with role, so
// that an AdminFile holding its private key acts as that administrator.
// An administrator of store.RoleAdmin only: others get an error matching
// ErrRoleRefused.
func (c *Client) AddAdmin(ctx context.Context, name string, role store.AdminRole, spki []byte) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/admins", &adminAddV1{v1: v1{wireV1}, Name: name,
		Role: string(role), Key: spki}, &okV1{})
}
