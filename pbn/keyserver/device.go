package keyserver

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// Exchanger is the server's half of the McCallum-Relyea exchange of Tang,
// which PBN-mode unlock runs over the TLS API; *tang.Keys is one.
type Exchanger interface {
	// ExchangeKey returns the advertised exchange key on curve, and
	// whether there is one.
	ExchangeKey(curve string) (tang.ExchangeKey, bool)
	// Exchange multiplies the client's point x by exchange key kid. It
	// returns tang.ErrUnknownKey for an unknown kid and an error for a
	// point not on the curve.
	Exchange(kid string, x []byte) ([]byte, error)
}

// enroll records a device at imaging and binds its provisioning key file,
// or, when the administrator named its owner, records the owner and
// escrows the recovery key of the key file imaging makes for them
// (enrollOwned).
func (s *Server) enroll(w http.ResponseWriter, r *http.Request, c caller) error {
	var m enrollV1
	raw, err := readRequest(w, r, &m)
	if err != nil {
		return err
	}
	defer clear(raw)
	recovery := secret.Bytes(m.RecoveryKey)
	defer recovery.Wipe()
	ctx := r.Context()
	if _, err := s.cfg.Store.Binding(ctx, keyfile.ID(m.Binding)); err == nil {
		return refuse(codeBadRequest, "key file %s is bound already", keyfile.ID(m.Binding))
	}
	p, err := s.cfg.Store.Policy(ctx, m.Group)
	if err != nil {
		return err
	}
	var owner *Identity
	if m.Owner != "" && c.role != store.RoleAdmin {
		// The answer holds the owner's group keys and the enterprise
		// key, which a copy of an imaging credential must not get.
		if err := s.record(r, c, "admin-refused", map[string]string{"route": "enroll an owned device",
			"role": string(c.role)}); err != nil {
			return err
		}
		return refuse(codeRoleRefused, "administrator %s has the role %s, which may not name a device's owner",
			c.admin, c.role)
	}
	if m.Owner != "" {
		if owner, err = s.lookupOwner(ctx, p, m.Owner); err != nil {
			return err
		}
	}

	d := store.Device{ID: keyfile.ID(m.Device), Hostname: m.Hostname, Group: m.Group,
		EK: m.EK, SRK: m.SRK, Key: m.DeviceKey}
	err = s.cfg.Store.PutDevice(ctx, d)
	if errors.Is(err, store.ErrDeviceLost) {
		return refuse(codeDeviceLost, "device %s is marked lost; retire it before enrolling it again", d.ID)
	}
	ans := &provisioningV1{v1: v1{wireV1}, URL: s.cfg.URL, ServerKey: s.pub,
		ExchangeKey: s.pbnExchangeKey(), Policy: p}
	detail := map[string]string{"device": d.ID.String(), "hostname": d.Hostname, "group": d.Group}
	switch {
	case err != nil:
	case owner == nil:
		err = s.cfg.Store.AddBinding(ctx, keyfile.ID(m.Binding), d.ID)
		detail["binding"] = keyfile.ID(m.Binding).String()
	default:
		ans.Owner, err = s.assignOwner(ctx, d, p, owner, keyfile.ID(m.OwnerKeyFile), recovery)
		detail["owner"], detail["key_file"] = owner.UPN, keyfile.ID(m.OwnerKeyFile).String()
	}
	if ans.Owner != nil {
		defer wipeClaimed(ans.Owner)
	}
	if err == nil {
		err = s.record(r, c, "enroll", detail)
	}
	if err != nil {
		return err
	}
	return reply(w, ans)
}

// pbnExchangeKey returns the P-256 exchange key as a JWK, or nothing when
// the server has no exchange.
func (s *Server) pbnExchangeKey() json.RawMessage {
	if s.cfg.Exchange == nil {
		return nil
	}
	k, ok := s.cfg.Exchange.ExchangeKey(PBNCurve)
	if !ok {
		return nil
	}
	return k.JWK()
}

// activeBinding checks that key file id is bound to the calling device and
// not revoked.
func (s *Server) activeBinding(r *http.Request, c caller, id keyfile.ID) error {
	b, err := s.cfg.Store.Binding(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || err == nil && b.DeviceID != c.device.ID {
		return refuse(codeBindingRevoked, "key file %s is not bound to this device", id)
	}
	if err != nil {
		return err
	}
	if b.State != store.BindingActive {
		return refuse(codeBindingRevoked, "key file %s is revoked", id)
	}
	return nil
}

// revokeOwn revokes one of the calling device's bindings: the last step of
// the secure moment, once the owner's key file is stored.
func (s *Server) revokeOwn(w http.ResponseWriter, r *http.Request, c caller) error {
	var m bindingV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	b, err := s.cfg.Store.Binding(r.Context(), keyfile.ID(m.Binding))
	if errors.Is(err, store.ErrNotFound) || err == nil && b.DeviceID != c.device.ID {
		return refuse(codeNotFound, "key file %s is not bound to this device", keyfile.ID(m.Binding))
	}
	if err != nil {
		return err
	}
	return s.revoke(w, r, c, b)
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request, c caller, b store.Binding) error {
	if err := s.cfg.Store.RevokeBinding(r.Context(), b.ID); err != nil {
		return err
	}
	if err := s.record(r, c, "revoke", map[string]string{"device": b.DeviceID.String(),
		"binding": b.ID.String()}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}
