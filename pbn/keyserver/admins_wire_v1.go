package keyserver

import (
	"time"

	"github.com/pbn-project/pbn/pbn/store"
)

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

// adminsV1 lists the administrators (GET /v1/admin/admins).
type adminsV1 struct {
	v1
	Admins []adminV1 `json:"admins"`
}

type adminV1 struct {
	Name  string    `json:"name"`
	Role  string    `json:"role"`
	Added time.Time `json:"added"`
}

func (m *adminsV1) check() error {
	var c checks
	for _, a := range m.Admins {
		c.text("name", a.Name, maxName, true)
		c.text("role", a.Role, maxName, true)
	}
	return c.err()
}

// adminRemoveV1 removes an administrator (POST /v1/admin/admins/remove);
// the reason is recorded.
type adminRemoveV1 struct {
	v1
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

func (m *adminRemoveV1) check() error {
	var c checks
	c.text("name", m.Name, maxName, true)
	c.text("reason", m.Reason, maxReason, true)
	return c.err()
}
