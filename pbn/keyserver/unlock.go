package keyserver

import (
	"net/http"

	"github.com/pbn-project/pbn/keyfile"
)

// unlock runs one Tang exchange for a device's provisioning key file: the
// device is known by its TLS key and active, the binding is its own and
// active, the group's policy allows autoboot, and the unlock is recorded
// with the device's address before the answer leaves.
func (s *Server) unlock(w http.ResponseWriter, r *http.Request, c caller) error {
	var m unlockV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
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
	if !p.Autoboot {
		return refuse(codeNotAllowed, "the policy of group %q does not allow unattended boot", p.Group)
	}

	key, err := s.cfg.Exchange.Recover(m.KID, m.Key)
	if err != nil {
		return refuse(codeBadRequest, "exchange: %v", err)
	}
	if err := s.record(r, c, "unlock", map[string]string{"binding": binding.String()}); err != nil {
		return err
	}
	return reply(w, &unlockedV1{v1: v1{wireV1}, Key: key})
}
