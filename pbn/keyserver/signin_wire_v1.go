package keyserver

import (
	"slices"
	"time"

	"github.com/pbn-project/pbn/pbn/store"
)

// maxRecoveryUses bounds the recovery-key uses one sign-in reports.
const maxRecoveryUses = 32

// signInV1 is a sign-in of the deployed stage (POST /v1/signin), in
// version 1 of the wire format (wire_v1.go): the user's credentials, which
// the server checks with the directory itself, and what the device needs.
type signInV1 struct {
	v1
	Account  string `json:"account"`
	Password []byte `json:"password"`
	// KeyFile is the user's key file on the device; zero when the user
	// has none there yet and NewKeyFile is to be made.
	KeyFile hexID `json:"key_file,omitzero"`
	// NewKeyFile is the ID of a key file the device makes for the user,
	// and RecoveryKey its recovery key, taken into escrow.
	NewKeyFile  hexID  `json:"new_key_file,omitzero"`
	RecoveryKey []byte `json:"recovery_key,omitempty"`
	// Open asks for the escrowed recovery key of a key file of the
	// device: the user's own (KeyFile) to re-protect it with a password
	// changed in the directory, or another one to authorize the keyslot
	// of NewKeyFile.
	Open hexID `json:"open,omitzero"`
	// Reason says why the device opens the user's own key file with its
	// escrowed recovery key (one of the Reseal reasons); required then,
	// and only then.
	Reason string `json:"reason,omitempty"`
	// Recoveries are the uses of recovery keys on the device since its
	// last report.
	Recoveries []recoveryUseV1 `json:"recoveries,omitempty"`
}

// recoveryUseV1 is one use of a key file's recovery key at the prompt.
type recoveryUseV1 struct {
	KeyFile hexID     `json:"key_file"`
	At      time.Time `json:"at"`
}

func (m *signInV1) check() error {
	var c checks
	c.text("account", m.Account, maxName, true)
	c.bytes("password", m.Password, true)
	c.need(m.KeyFile.isZero() != m.NewKeyFile.isZero(), "want exactly one of key_file and new_key_file")
	c.need(m.NewKeyFile.isZero() == (len(m.RecoveryKey) == 0),
		"recovery_key: wanted with new_key_file, and only then")
	c.bytes("recovery_key", m.RecoveryKey, false)
	c.need(m.Open.isZero() || m.Open == m.KeyFile || !m.NewKeyFile.isZero(),
		"open: another key file than the user's is opened only for a new one")
	c.need(m.Open.isZero() || m.Open != m.NewKeyFile, "open: the new key file has no escrow yet")
	own := !m.Open.isZero() && m.Open == m.KeyFile
	c.need(own == (m.Reason != ""), "reason: wanted when the user's own key file is opened, and only then")
	c.need(m.Reason == "" || slices.Contains(resealReasons, m.Reason), "reason: %q is not a reseal reason",
		m.Reason)
	c.need(len(m.Recoveries) <= maxRecoveryUses, "recoveries: more than %d", maxRecoveryUses)
	for _, u := range m.Recoveries {
		c.id("recoveries key_file", u.KeyFile)
	}
	return c.err()
}

// signedInV1 answers signInV1.
type signedInV1 struct {
	v1
	UPN string `json:"upn"`
	SID string `json:"sid"`
	// Kind is the kind of key file the user has on the device: "user",
	// or "administrator" for an account of the policy's administrators.
	Kind string `json:"kind"`
	// Time is the server's clock when it answered.
	Time time.Time `json:"time"`
	// Policy is the device group's policy: its offline limit applies
	// from now on.
	Policy store.Policy `json:"policy"`
	// RecoveryKey is the escrowed recovery key of signInV1.Open.
	RecoveryKey []byte `json:"recovery_key,omitempty"`
	// Groups and Enterprise are the keys of a new key file.
	Groups     []groupKeyV1 `json:"groups,omitempty"`
	Enterprise []byte       `json:"enterprise_key,omitempty"`
}

func (m *signedInV1) check() error {
	var c checks
	c.text("upn", m.UPN, maxName, true)
	c.text("sid", m.SID, maxName, true)
	c.need(m.Kind == "user" || m.Kind == "administrator", "kind: %q, want user or administrator", m.Kind)
	c.need(!m.Time.IsZero(), "time: zero")
	c.need(m.Policy.Check() == nil, "policy: %v", m.Policy.Check())
	c.bytes("recovery_key", m.RecoveryKey, false)
	for _, g := range m.Groups {
		c.text("group sid", g.SID, maxName, true)
		c.text("group name", g.Name, maxName, false)
		c.bytes("group key", g.Key, true)
	}
	c.bytes("enterprise_key", m.Enterprise, false)
	return c.err()
}

// ownerRemoveV1 removes a user from a device (POST
// /v1/admin/devices/{id}/owners/remove); the reason is recorded.
type ownerRemoveV1 struct {
	v1
	SID    string `json:"sid"`
	Reason string `json:"reason"`
}

func (m *ownerRemoveV1) check() error {
	var c checks
	c.text("sid", m.SID, maxName, true)
	c.text("reason", m.Reason, maxReason, true)
	return c.err()
}
