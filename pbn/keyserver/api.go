package keyserver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/pbn-project/pbn/pbn/store"
)

// who may call a route.
type access int

const (
	anyone access = iota
	device
	// enroller is an administrator of any role: store.RoleEnroll, whose
	// credential the imaging image carries, or store.RoleAdmin.
	enroller
	// admin is an administrator of store.RoleAdmin only.
	admin
)

// caller is who sent a request, as its TLS client key tells.
type caller struct {
	// device is set for a device's request; admin for an
	// administrator's.
	device *store.Device
	admin  string
	role   store.AdminRole
	remote string
}

// actor names the caller in the audit trail.
func (c caller) actor() string {
	if c.admin != "" {
		return c.admin
	}
	return "device"
}

type handler func(w http.ResponseWriter, r *http.Request, c caller) error

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.route("GET /healthz", "healthz", anyone, s.healthz)
	s.route("POST /v1/enroll", "enroll", enroller, s.enroll)
	s.route("GET /v1/exchange-key", "exchange-key", anyone, s.exchangeKey)
	s.route("POST /v1/unlock", "unlock", device, s.unlock)
	s.route("POST /v1/claim", "claim", device, s.claim)
	s.route("POST /v1/revoke", "revoke", device, s.revokeOwn)
	s.route("POST /v1/signin", "signin", device, s.signIn)
	s.route("GET /v1/admin/devices", "devices", admin, s.devices)
	s.route("GET /v1/admin/devices/{id}", "device", admin, s.device)
	s.route("POST /v1/admin/devices/{id}/state", "device-state", admin, s.setDeviceState)
	s.route("POST /v1/admin/devices/{id}/owners/remove", "owner-remove", admin, s.removeOwner)
	s.route("POST /v1/admin/revoke", "admin-revoke", admin, s.revokeAny)
	s.route("POST /v1/admin/recovery", "recovery", admin, s.recovery)
	s.route("GET /v1/admin/audit", "audit", admin, s.audit)
	s.route("GET /v1/admin/policy/{group}", "policy", admin, s.policy)
	s.route("PUT /v1/admin/policy/{group}", "policy-set", admin, s.setPolicy)
	s.route("POST /v1/admin/admins", "admin-add", admin, s.addAdmin)
	s.route("GET /v1/admin/admins", "admins", admin, s.admins)
	s.route("POST /v1/admin/admins/remove", "admin-remove", admin, s.removeAdmin)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, "none", refuse(codeNotFound, "no such endpoint"))
	})
}

// route registers h for pattern, behind the authentication that a
// demands, counted in the metrics under name.
func (s *Server) route(pattern, name string, a access, h handler) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		c, err := s.authenticate(r, name, a)
		if err == nil {
			err = h(rec, r, c)
		}
		if err != nil {
			s.fail(rec, r, name, err)
		}
		s.metrics.observe(name, rec.status, time.Since(start))
	})
}

// authenticate finds who the request's TLS client key belongs to, and
// refuses an administrator whose role a does not admit, recording the
// refusal of route in the audit trail.
func (s *Server) authenticate(r *http.Request, route string, a access) (caller, error) {
	c := caller{remote: r.RemoteAddr}
	if a == anyone {
		return c, nil
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return c, refuse(codeUnknownKey, "no TLS client certificate")
	}
	spki := r.TLS.PeerCertificates[0].RawSubjectPublicKeyInfo
	if a == admin || a == enroller {
		return s.authenticateAdmin(r, c, spki, route, a)
	}

	d, err := s.cfg.Store.DeviceByKey(r.Context(), spki)
	if errors.Is(err, store.ErrNotFound) {
		return c, refuse(codeUnknownKey, "not an enrolled device's key")
	}
	if err != nil {
		return c, err
	}
	switch d.State {
	case store.DeviceLost:
		return c, refuse(codeDeviceLost, "device %s is marked lost", d.ID)
	case store.DeviceRetired:
		return c, refuse(codeDeviceRetired, "device %s is retired", d.ID)
	}
	c.device = &d
	return c, nil
}

func (s *Server) authenticateAdmin(r *http.Request, c caller, spki []byte, route string, a access) (caller, error) {
	ad, err := s.cfg.Store.Admin(r.Context(), spki)
	if errors.Is(err, store.ErrNotFound) {
		return c, refuse(codeUnknownKey, "not an administrator's key")
	}
	if err != nil {
		return c, err
	}
	c.admin, c.role = ad.Name, ad.Role
	if a == admin && c.role != store.RoleAdmin {
		if err := s.record(r, c, "admin-refused", map[string]string{"route": route,
			"role": string(c.role)}); err != nil {
			return c, err
		}
		return c, refuse(codeRoleRefused, "administrator %s has the role %s, which may not call %s",
			c.admin, c.role, route)
	}
	return c, nil
}

// fail answers with err: a refusal as it says, anything else as an
// internal error whose details stay in the log.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, route string, err error) {
	var ref *refusal
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &ref):
	case errors.As(err, &tooLarge):
		ref = &refusal{codeTooLarge, "request body too large"}
	case errors.Is(err, errWire):
		ref = &refusal{codeBadRequest, err.Error()}
	case errors.Is(err, store.ErrNotFound):
		ref = &refusal{codeNotFound, "no such device or binding"}
	default:
		s.log.Error("request failed", "route", route, "remote", r.RemoteAddr, "err", err)
		ref = &refusal{codeInternal, "internal error; the server's log has the details"}
	}
	if ref.code != codeInternal {
		s.log.Info("request refused", "route", route, "remote", r.RemoteAddr,
			"code", ref.code.name, "message", ref.message)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ref.code.status)
	b, _ := json.Marshal(&errorV1{v1{wireV1}, ref.code.name, ref.message})
	w.Write(b)
}

// readRequest reads and strictly parses a request body into m. The caller
// wipes the returned raw body when m holds secrets.
func readRequest(w http.ResponseWriter, r *http.Request, m versioned) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		clear(b)
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, err
		}
		return nil, refuse(codeBadRequest, "reading the request body: %v", err)
	}
	if err := decodeV1(b, m); err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}

// reply writes m as the answer. It wipes its encoding afterwards, since m
// may hold secrets.
func reply(w http.ResponseWriter, m any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	defer clear(b)
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(b)
	return err
}

// recorder remembers the status a handler answered with.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request, _ caller) error {
	if err := s.cfg.Store.Ping(r.Context()); err != nil {
		s.log.Error("health check: database", "err", err)
		return refuse(codeUnavailable, "the database does not answer")
	}
	return reply(w, &okV1{v1{wireV1}})
}

// record adds an event to the audit trail; a request whose event cannot be
// recorded fails. detail["device"], when set, names the device concerned.
func (s *Server) record(r *http.Request, c caller, kind string, detail map[string]string) error {
	e := store.Event{Kind: kind, Actor: c.actor(), Remote: c.remote, Detail: detail}
	if c.device != nil {
		e.Device = c.device.ID.String()
	}
	if dev, ok := detail["device"]; ok {
		e.Device = dev
		delete(detail, "device")
	}
	_, err := s.cfg.Store.Append(r.Context(), e)
	return err
}
