package keyserver

import "github.com/pbn-project/pbn/pbn/store"

// adminAddV1 asks the server to authorise a new administrator's key
// (POST /v1/admin/admins).
type adminAddV1 struct {
	v1
	Name string `json:"name"`
	// Role is a store.AdminRole.
	Role string `json:"role"`
	// Key is the administrator's public key, a DER SubjectPublicKeyInfo.
	Key []byte `json:"key"`
}

func (m *adminAddV1) check() error {
	var c checks
	c.text("name", m.Name, maxName, true)
	c.need(store.AdminRole(m.Role).Check() == nil, "role: %q is not %q or %q", m.Role,
		store.RoleAdmin, store.RoleEnroll)
	c.bytes("key", m.Key, true)
	return c.err()
}
