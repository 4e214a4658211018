package keyserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/store"
)

// Version 1 of the wire format: every request and response body of the TLS
// API is one JSON object with "v": 1, and is parsed strictly (no unknown
// field, nothing after the object, every field checked). Byte strings are
// standard base64 (RFC 4648 section 4); IDs are 32 hex digits. The audit
// export is JSON lines (one store.Event a line), each line parsed the same
// way.
const wireV1 = 1

// maxBody bounds every request and response body.
const maxBody = 64 << 10

// Bounds of free-text fields.
const (
	maxName   = 256  // hostnames, groups, accounts
	maxReason = 1024 // reasons an administrator gives
	maxKey    = 4096 // public keys, secrets
)

// errWire is wrapped by every error of decodeV1.
var errWire = errors.New("malformed message")

// versioned is a wire message: it says its version and checks its fields.
type versioned interface {
	version() int
	check() error
}

// v1 is embedded in every message of version 1.
type v1 struct {
	V int `json:"v"`
}

func (m v1) version() int { return m.V }

// decodeV1 parses b into m strictly.
func decodeV1(b []byte, m versioned) error {
	if len(b) > maxBody {
		return fmt.Errorf("%w: %d bytes, more than %d", errWire, len(b), maxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("%w: %v", errWire, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the object", errWire)
	}
	if m.version() != wireV1 {
		return fmt.Errorf("%w: version %d, want %d", errWire, m.version(), wireV1)
	}
	if err := m.check(); err != nil {
		return fmt.Errorf("%w: %v", errWire, err)
	}
	return nil
}

// hexID is a keyfile.ID on the wire: 32 hex digits.
type hexID keyfile.ID

func (id hexID) MarshalText() ([]byte, error) { return []byte(keyfile.ID(id).String()), nil }

func (id *hexID) UnmarshalText(b []byte) error {
	v, err := keyfile.ParseID(string(b))
	*id = hexID(v)
	return err
}

func (id hexID) isZero() bool { return keyfile.ID(id).IsZero() }

// checks collects field checks.
type checks []error

func (c *checks) need(ok bool, format string, args ...any) {
	if !ok {
		*c = append(*c, fmt.Errorf(format, args...))
	}
}

func (c *checks) text(name, s string, max int, required bool) {
	c.need(!required || s != "", "%s: empty", name)
	c.need(len(s) <= max, "%s: longer than %d bytes", name, max)
	c.need(utf8.ValidString(s), "%s: not UTF-8", name)
}

func (c *checks) bytes(name string, b []byte, required bool) {
	c.need(!required || len(b) > 0, "%s: empty", name)
	c.need(len(b) <= maxKey, "%s: longer than %d bytes", name, maxKey)
}

func (c *checks) id(name string, id hexID) { c.need(!id.isZero(), "%s: zero ID", name) }

func (c checks) err() error { return errors.Join(c...) }

// enrollV1 asks the server to enroll a device (POST /v1/enroll).
type enrollV1 struct {
	v1
	Device    hexID  `json:"device"`
	Hostname  string `json:"hostname"`
	Group     string `json:"group"`
	EK        []byte `json:"ek,omitempty"`
	SRK       []byte `json:"srk,omitempty"`
	DeviceKey []byte `json:"device_key"`
	// Binding is the ID of the device's provisioning key file; zero when
	// Owner is set.
	Binding hexID `json:"binding,omitzero"`
	// Owner is the account that owns the device from its imaging on, as
	// an administrator assigned it; the device gets no provisioning key
	// file but OwnerKeyFile, whose recovery key RecoveryKey the server
	// escrows under the owner.
	Owner        string `json:"owner,omitempty"`
	OwnerKeyFile hexID  `json:"owner_key_file,omitzero"`
	RecoveryKey  []byte `json:"recovery_key,omitempty"`
}

func (m *enrollV1) check() error {
	var c checks
	c.id("device", m.Device)
	c.text("hostname", m.Hostname, maxName, true)
	c.text("group", m.Group, maxName, true)
	c.bytes("ek", m.EK, false)
	c.bytes("srk", m.SRK, false)
	c.bytes("device_key", m.DeviceKey, true)
	c.text("owner", m.Owner, maxName, false)
	c.need(m.Binding.isZero() == (m.Owner != ""), "want exactly one of binding and owner")
	c.need(m.OwnerKeyFile.isZero() == (m.Owner == ""), "owner_key_file: wanted with owner, and only then")
	c.need((len(m.RecoveryKey) == 0) == (m.Owner == ""), "recovery_key: wanted with owner, and only then")
	c.bytes("recovery_key", m.RecoveryKey, false)
	return c.err()
}

// provisioningV1 answers enrollV1 with what the provisioning key file
// needs.
type provisioningV1 struct {
	v1
	URL       string `json:"url"`
	ServerKey []byte `json:"server_key"`
	// ExchangeKey is the server's P-256 exchange key (a JWK) that the
	// key file's network protector binds to in PBN mode.
	ExchangeKey json.RawMessage `json:"exchange_key,omitempty"`
	Policy      store.Policy    `json:"policy"`
	// Owner is the owner enrollV1 named, as the directory knows them,
	// with the keys of their key file.
	Owner *claimedV1 `json:"owner,omitempty"`
}

func (m *provisioningV1) check() error {
	var c checks
	c.text("url", m.URL, maxName, true)
	c.bytes("server_key", m.ServerKey, true)
	c.bytes("exchange_key", m.ExchangeKey, false)
	c.need(m.Policy.Check() == nil, "policy: %v", m.Policy.Check())
	if m.Owner != nil {
		c.need(m.Owner.V == wireV1, "owner: version %d", m.Owner.V)
		c.need(m.Owner.check() == nil, "owner: %v", m.Owner.check())
	}
	return c.err()
}

// claimV1 is the secure-moment claim (POST /v1/claim).
type claimV1 struct {
	v1
	// Binding is the provisioning key file the claim retires, if the
	// device has one; zero otherwise.
	Binding  hexID  `json:"binding,omitzero"`
	Account  string `json:"account"`
	Password []byte `json:"password"`
	// KeyFile is the ID of the user's new key file, and RecoveryKey that
	// key file's recovery key, taken into escrow.
	KeyFile     hexID  `json:"key_file"`
	RecoveryKey []byte `json:"recovery_key"`
}

func (m *claimV1) check() error {
	var c checks
	c.text("account", m.Account, maxName, true)
	c.bytes("password", m.Password, true)
	c.id("key_file", m.KeyFile)
	c.bytes("recovery_key", m.RecoveryKey, true)
	return c.err()
}

// groupKeyV1 is one group's key.
type groupKeyV1 struct {
	SID  string `json:"sid"`
	Name string `json:"name"`
	Key  []byte `json:"key"`
}

// claimedV1 answers claimV1.
type claimedV1 struct {
	v1
	UPN     string `json:"upn"`
	SID     string `json:"sid"`
	Primary bool   `json:"primary"`
	// Kind is the kind of key file the user gets: "user", or
	// "administrator" for an administrator account of the policy, which
	// the claim does not make an owner. Empty means "user".
	Kind       string       `json:"kind,omitempty"`
	Groups     []groupKeyV1 `json:"groups"`
	Enterprise []byte       `json:"enterprise_key"`
	Policy     store.Policy `json:"policy"`
}

func (m *claimedV1) check() error {
	var c checks
	c.text("upn", m.UPN, maxName, true)
	c.text("sid", m.SID, maxName, true)
	c.need(m.Kind == "" || m.Kind == "user" || m.Kind == "administrator",
		"kind: %q, want user or administrator", m.Kind)
	for _, g := range m.Groups {
		c.text("group sid", g.SID, maxName, true)
		c.text("group name", g.Name, maxName, false)
		c.bytes("group key", g.Key, true)
	}
	c.bytes("enterprise_key", m.Enterprise, true)
	return c.err()
}

// bindingV1 names a binding to revoke (POST /v1/revoke).
type bindingV1 struct {
	v1
	Binding hexID `json:"binding"`
}

func (m *bindingV1) check() error {
	var c checks
	c.id("binding", m.Binding)
	return c.err()
}

// okV1 is the answer that says only that it worked.
type okV1 struct{ v1 }

func (m *okV1) check() error { return nil }

// errorV1 is every error answer: Code is one of the codes of errors.go.
type errorV1 struct {
	v1
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (m *errorV1) check() error {
	var c checks
	c.text("code", m.Code, maxName, true)
	c.text("message", m.Message, maxReason, false)
	return c.err()
}

// deviceV1 describes a device to an administrator.
type deviceV1 struct {
	ID       hexID     `json:"id"`
	Hostname string    `json:"hostname"`
	Group    string    `json:"group"`
	State    string    `json:"state"`
	Enrolled time.Time `json:"enrolled"`
	Changed  time.Time `json:"changed"`
	Owners   []ownerV1 `json:"owners,omitempty"`
}

type ownerV1 struct {
	UPN     string    `json:"upn"`
	SID     string    `json:"sid"`
	Primary bool      `json:"primary"`
	Added   time.Time `json:"added"`
}

func (d *deviceV1) check(c *checks) {
	c.id("id", d.ID)
	c.text("hostname", d.Hostname, maxName, true)
	c.text("group", d.Group, maxName, true)
	_, err := store.ParseDeviceState(d.State)
	c.need(err == nil, "state: %v", err)
}

// devicesV1 lists devices (GET /v1/admin/devices, and one device from GET
// /v1/admin/devices/{id}).
type devicesV1 struct {
	v1
	Devices []deviceV1 `json:"devices"`
}

func (m *devicesV1) check() error {
	var c checks
	for i := range m.Devices {
		m.Devices[i].check(&c)
	}
	return c.err()
}

// deviceStateV1 marks a device (POST /v1/admin/devices/{id}/state).
type deviceStateV1 struct {
	v1
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func (m *deviceStateV1) check() error {
	var c checks
	_, err := store.ParseDeviceState(m.State)
	c.need(err == nil, "state: %v", err)
	c.text("reason", m.Reason, maxReason, false)
	return c.err()
}

// recoveryRequestV1 asks for a device's recovery keys (POST
// /v1/admin/recovery); the reason is required and recorded.
type recoveryRequestV1 struct {
	v1
	Device hexID  `json:"device"`
	Reason string `json:"reason"`
}

func (m *recoveryRequestV1) check() error {
	var c checks
	c.id("device", m.Device)
	c.text("reason", m.Reason, maxReason, true)
	return c.err()
}

type escrowV1 struct {
	KeyFile hexID     `json:"key_file"`
	UPN     string    `json:"upn"`
	Key     []byte    `json:"key"`
	Created time.Time `json:"created"`
}

// recoveryV1 answers recoveryRequestV1.
type recoveryV1 struct {
	v1
	Keys []escrowV1 `json:"keys"`
}

func (m *recoveryV1) check() error {
	var c checks
	for _, k := range m.Keys {
		c.id("key_file", k.KeyFile)
		c.bytes("key", k.Key, true)
	}
	return c.err()
}

// policyV1 carries a device group's policy (GET and PUT
// /v1/admin/policy/{group}).
type policyV1 struct {
	v1
	Policy store.Policy `json:"policy"`
}

func (m *policyV1) check() error {
	var c checks
	c.text("group", m.Policy.Group, maxName, true)
	c.need(len(m.Policy.Administrators) <= 64, "administrators: more than 64")
	c.need(len(m.Policy.AllowedGroups) <= 256, "allowed_groups: more than 256")
	return errors.Join(c.err(), m.Policy.Check())
}

// eventV1 is one line of the audit export.
type eventV1 struct {
	v1
	store.Event
}

func (m *eventV1) check() error {
	var c checks
	c.need(m.Seq > 0, "seq: not positive")
	c.text("kind", m.Kind, maxName, true)
	return c.err()
}

// unlockV1 is one PBN-mode unlock (POST /v1/unlock): the McCallum-Relyea
// exchange of Tang for exchange key KID with the client's blinded point X
// (uncompressed SEC 1), for the provisioning key file Binding. Account and
// Password, both or neither, are the user's at the prompt when someone is
// there (WithSignIn).
type unlockV1 struct {
	v1
	Binding  hexID  `json:"binding"`
	KID      string `json:"kid"`
	X        []byte `json:"x"`
	Account  string `json:"account,omitempty"`
	Password []byte `json:"password,omitempty"`
}

// maxPoint bounds an uncompressed point: 133 bytes on P-521.
const maxPoint = 1 + 2*66

func (m *unlockV1) check() error {
	var c checks
	c.id("binding", m.Binding)
	c.text("kid", m.KID, maxName, true)
	c.need(len(m.X) > 0 && len(m.X) <= maxPoint, "x: want 1 to %d bytes", maxPoint)
	c.text("account", m.Account, maxName, len(m.Password) > 0)
	c.bytes("password", m.Password, m.Account != "")
	return c.err()
}

// unlockedV1 answers unlockV1 with the server's point Y.
type unlockedV1 struct {
	v1
	Y []byte `json:"y"`
}

func (m *unlockedV1) check() error {
	var c checks
	c.need(len(m.Y) > 0 && len(m.Y) <= maxPoint, "y: want 1 to %d bytes", maxPoint)
	return c.err()
}

// exchangeKeyV1 answers GET /v1/exchange-key?curve=NAME with the server's
// advertised exchange key on that curve, a JWK as Tang advertises it. Its
// authenticity comes from the pinned TLS connection.
type exchangeKeyV1 struct {
	v1
	Key json.RawMessage `json:"key"`
}

func (m *exchangeKeyV1) check() error {
	var c checks
	c.bytes("key", m.Key, true)
	return c.err()
}
