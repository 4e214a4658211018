package keyserver

import (
	"errors"
	"net/http"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/tang"
)

// PBNCurve is the curve of PBN mode's exchange keys: P-256 keeps an unlock
// to one cheap scalar multiplication.
const PBNCurve = "P-256"

// unlock runs one Tang exchange for a device's provisioning key file: the
// device is known by its TLS key and active, the binding is its own and
// active, the group's policy allows autoboot or the user at the prompt has
// claimed the device (attended), and the unlock is recorded with the
// device's address before the answer leaves.
func (s *Server) unlock(w http.ResponseWriter, r *http.Request, c caller) error {
	var m unlockV1
	raw, err := readRequest(w, r, &m)
	if err != nil {
		return err
	}
	defer clear(raw)
	defer clear(m.Password)
	binding := keyfile.ID(m.Binding)
	if err := s.activeBinding(r, c, binding); err != nil {
		return err
	}
	if s.cfg.Exchange == nil {
		return refuse(codeUnavailable, "this server does not serve network unlock")
	}
	p, err := s.cfg.Store.Policy(r.Context(), c.device.Group)
	if err != nil {
		return err
	}
	detail := map[string]string{"binding": binding.String()}
	if !p.Autoboot {
		upn, err := s.attended(r, c, &m, p)
		if err != nil {
			return err
		}
		detail["upn"] = upn
	}

	y, err := s.cfg.Exchange.Exchange(m.KID, m.X)
	if errors.Is(err, tang.ErrUnknownKey) {
		return refuse(codeUnknownExchangeKey, "no exchange key %q", m.KID)
	}
	if err != nil {
		return refuse(codeBadRequest, "exchange: %v", err)
	}
	if err := s.record(r, c, "unlock", detail); err != nil {
		return err
	}
	return reply(w, &unlockedV1{v1: v1{wireV1}, Y: y})
}

// exchangeKey hands out the advertised exchange key on ?curve= (PBNCurve
// when absent) for new bindings.
func (s *Server) exchangeKey(w http.ResponseWriter, r *http.Request, _ caller) error {
	curve := r.URL.Query().Get("curve")
	if curve == "" {
		curve = PBNCurve
	}
	if s.cfg.Exchange == nil {
		return refuse(codeUnavailable, "this server does not serve network unlock")
	}
	k, ok := s.cfg.Exchange.ExchangeKey(curve)
	if !ok {
		return refuse(codeUnknownExchangeKey, "no exchange key on curve %q", curve)
	}
	return reply(w, &exchangeKeyV1{v1{wireV1}, k.JWK()})
}
