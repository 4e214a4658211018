package keyserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/store"
)

// auditPage is how many events the audit export reads from the store at a
// time.
const auditPage = 500

func deviceWire(d store.Device) deviceV1 {
	return deviceV1{ID: hexID(d.ID), Hostname: d.Hostname, Group: d.Group,
		State: string(d.State), Enrolled: d.Enrolled, Changed: d.Changed}
}

func (s *Server) devices(w http.ResponseWriter, r *http.Request, _ caller) error {
	ds, err := s.cfg.Store.Devices(r.Context())
	if err != nil {
		return err
	}
	ans := &devicesV1{v1: v1{wireV1}, Devices: []deviceV1{}}
	for _, d := range ds {
		ans.Devices = append(ans.Devices, deviceWire(d))
	}
	return reply(w, ans)
}

// pathID parses the {id} of the request's path.
func pathID(r *http.Request) (keyfile.ID, error) {
	id, err := keyfile.ParseID(r.PathValue("id"))
	if err != nil {
		return id, refuse(codeBadRequest, "%v", err)
	}
	return id, nil
}

func (s *Server) device(w http.ResponseWriter, r *http.Request, _ caller) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	d, err := s.cfg.Store.Device(r.Context(), id)
	if err != nil {
		return err
	}
	owners, err := s.cfg.Store.Owners(r.Context(), id)
	if err != nil {
		return err
	}
	dw := deviceWire(d)
	for _, o := range owners {
		dw.Owners = append(dw.Owners, ownerV1{UPN: o.UPN, SID: o.SID, Primary: o.Primary, Added: o.Added})
	}
	return reply(w, &devicesV1{v1: v1{wireV1}, Devices: []deviceV1{dw}})
}

func (s *Server) setDeviceState(w http.ResponseWriter, r *http.Request, c caller) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var m deviceStateV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	if err := s.cfg.Store.SetDeviceState(r.Context(), id, store.DeviceState(m.State)); err != nil {
		return err
	}
	if err := s.record(r, c, "device-state", map[string]string{"device": id.String(),
		"state": m.State, "reason": m.Reason}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}

func (s *Server) revokeAny(w http.ResponseWriter, r *http.Request, c caller) error {
	var m bindingV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	b, err := s.cfg.Store.Binding(r.Context(), keyfile.ID(m.Binding))
	if err != nil {
		return err
	}
	return s.revoke(w, r, c, b)
}

// recovery gives a help desk a device's escrowed recovery keys. The
// reading is recorded, with its reason, before any key leaves.
func (s *Server) recovery(w http.ResponseWriter, r *http.Request, c caller) error {
	var m recoveryRequestV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	id := keyfile.ID(m.Device)
	if _, err := s.cfg.Store.Device(r.Context(), id); err != nil {
		return err
	}
	if err := s.record(r, c, "recovery", map[string]string{"device": id.String(),
		"reason": m.Reason}); err != nil {
		return err
	}
	es, err := s.cfg.Store.Escrowed(r.Context(), id)
	if err != nil {
		return err
	}
	ans := &recoveryV1{v1: v1{wireV1}, Keys: []escrowV1{}}
	for _, e := range es {
		ans.Keys = append(ans.Keys, escrowV1{KeyFile: hexID(e.KeyFileID), UPN: e.UPN,
			Key: e.Key, Created: e.Created})
	}
	defer func() {
		for _, e := range es {
			e.Key.Wipe()
		}
	}()
	return reply(w, ans)
}

// audit exports the audit trail as JSON lines: ?after=SEQ&limit=N for
// the events after SEQ (all of them without a limit), or ?tail=N for the
// last N. An answer is bounded by the write timeout, so a long trail is
// read in pages (pbnctl audit export does).
func (s *Server) audit(w http.ResponseWriter, r *http.Request, _ caller) error {
	q := r.URL.Query()
	after, err1 := queryInt(q.Get("after"), 0)
	limit, err2 := queryInt(q.Get("limit"), -1)
	tail, err3 := queryInt(q.Get("tail"), 0)
	if err := errors.Join(err1, err2, err3); err != nil {
		return refuse(codeBadRequest, "%v", err)
	}

	w.Header().Set("Content-Type", "application/jsonl")
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	write := func(es []store.Event) error {
		for _, e := range es {
			if err := enc.Encode(&eventV1{v1{wireV1}, e}); err != nil {
				return err
			}
		}
		return nil
	}
	if tail > 0 {
		es, err := s.cfg.Store.Tail(r.Context(), int(tail))
		if err == nil {
			err = write(es)
		}
		return errors.Join(err, bw.Flush())
	}
	for limit != 0 {
		n := auditPage
		if limit > 0 && limit < auditPage {
			n = int(limit)
		}
		es, err := s.cfg.Store.Events(r.Context(), after, n)
		if err != nil {
			return errors.Join(err, bw.Flush())
		}
		if err := write(es); err != nil {
			return err
		}
		if len(es) < n {
			break
		}
		after = es[len(es)-1].Seq
		limit -= int64(len(es))
	}
	return bw.Flush()
}

// queryInt parses a query parameter, def when absent.
func queryInt(v string, def int64) (int64, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("query parameters after, limit and tail take a number 0 or more")
	}
	return n, nil
}

func (s *Server) policy(w http.ResponseWriter, r *http.Request, _ caller) error {
	p, err := s.cfg.Store.Policy(r.Context(), r.PathValue("group"))
	if err != nil {
		return err
	}
	return reply(w, &policyV1{v1{wireV1}, p})
}

func (s *Server) setPolicy(w http.ResponseWriter, r *http.Request, c caller) error {
	var m policyV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	if m.Policy.Group != r.PathValue("group") {
		return refuse(codeBadRequest, "the policy is for group %q, not %q", m.Policy.Group,
			r.PathValue("group"))
	}
	if err := s.cfg.Store.SetPolicy(r.Context(), m.Policy); err != nil {
		return err
	}
	doc, _ := json.Marshal(m.Policy)
	if err := s.record(r, c, "policy", map[string]string{"group": m.Policy.Group,
		"policy": string(doc)}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}
