package signin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/pbn-project/pbn/keyfile"
)

// Version 1 of the sign-in state file: one JSON object, parsed strictly
// (no unknown field, nothing after the object, every field checked):
//
//	{"v": 1, "seq": 7,
//	 "contacts": [{"key_file": "<32 hex digits>", "server_time": "<RFC 3339>",
//	   "floor": "<RFC 3339>", "offline_limit": <ns>, "tpm_clock": <ns>,
//	   "mac": "<base64 of 32 bytes>"}],
//	 "recoveries": [{"key_file": "<32 hex digits>", "at": "<RFC 3339>"}]}
//
// Contacts are sorted by key file, one each; tpm_clock is absent when the
// TPM's Clock was not read.
const stateV1 = 1

// Bounds of a state file.
const (
	maxStateSize  = 64 << 10
	maxContacts   = 64
	maxRecoveries = 32
)

// errState is wrapped by every error of parseState.
var errState = errors.New("not a valid sign-in state file")

type stateFileV1 struct {
	V          int          `json:"v"`
	Seq        uint64       `json:"seq"`
	Contacts   []contactV1  `json:"contacts"`
	Recoveries []recoveryV1 `json:"recoveries"`
}

type contactV1 struct {
	KeyFile      hexID          `json:"key_file"`
	ServerTime   time.Time      `json:"server_time"`
	Floor        time.Time      `json:"floor"`
	OfflineLimit time.Duration  `json:"offline_limit"`
	TPMClock     *time.Duration `json:"tpm_clock,omitempty"`
	MAC          []byte         `json:"mac"`
}

type recoveryV1 struct {
	KeyFile hexID     `json:"key_file"`
	At      time.Time `json:"at"`
}

// hexID is a keyfile.ID as 32 hex digits.
type hexID keyfile.ID

func (id hexID) MarshalText() ([]byte, error) { return []byte(keyfile.ID(id).String()), nil }

func (id *hexID) UnmarshalText(b []byte) error {
	v, err := keyfile.ParseID(string(b))
	*id = hexID(v)
	return err
}

// The times a state file may hold: Unix nanoseconds must hold them.
var (
	minTime = time.Unix(0, 0)
	maxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

func checkTime(name string, t time.Time) error {
	if t.Before(minTime) || t.After(maxTime) {
		return fmt.Errorf("%s %v out of range", name, t)
	}
	return nil
}

// parseState parses a state file of version 1.
func parseState(b []byte) (*state, error) {
	if len(b) > maxStateSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errState, len(b), maxStateSize)
	}
	var f stateFileV1
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", errState, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the object", errState)
	}
	if f.V != stateV1 {
		return nil, fmt.Errorf("%w: version %d, want %d", errState, f.V, stateV1)
	}
	if len(f.Contacts) > maxContacts || len(f.Recoveries) > maxRecoveries {
		return nil, fmt.Errorf("%w: more than %d contacts or %d recoveries", errState, maxContacts, maxRecoveries)
	}
	s := &state{seq: f.Seq, contacts: map[keyfile.ID]contact{}}
	var last keyfile.ID
	for i, c := range f.Contacts {
		id := keyfile.ID(c.KeyFile)
		switch {
		case id.IsZero():
			return nil, fmt.Errorf("%w: contact %d: zero key file", errState, i)
		case i > 0 && bytes.Compare(id[:], last[:]) <= 0:
			return nil, fmt.Errorf("%w: contacts not sorted by key file, or repeated", errState)
		case c.OfflineLimit < 0 || c.TPMClock != nil && *c.TPMClock < 0:
			return nil, fmt.Errorf("%w: contact %d: negative duration", errState, i)
		case len(c.MAC) != macSize:
			return nil, fmt.Errorf("%w: contact %d: MAC of %d bytes, want %d", errState, i, len(c.MAC), macSize)
		}
		if err := errors.Join(checkTime("server_time", c.ServerTime), checkTime("floor", c.Floor)); err != nil {
			return nil, fmt.Errorf("%w: contact %d: %v", errState, i, err)
		}
		last = id
		s.contacts[id] = contact{ServerTime: c.ServerTime.UTC(), Floor: c.Floor.UTC(),
			Limit: c.OfflineLimit, TPMClock: c.TPMClock, mac: c.MAC}
	}
	for i, r := range f.Recoveries {
		if keyfile.ID(r.KeyFile).IsZero() {
			return nil, fmt.Errorf("%w: recovery %d: zero key file", errState, i)
		}
		if err := checkTime("at", r.At); err != nil {
			return nil, fmt.Errorf("%w: recovery %d: %v", errState, i, err)
		}
		s.recoveries = append(s.recoveries, recovery{keyfile.ID(r.KeyFile), r.At.UTC()})
	}
	return s, nil
}

// marshal encodes s in version 1.
func (s *state) marshal() ([]byte, error) {
	f := stateFileV1{V: stateV1, Seq: s.seq, Contacts: []contactV1{}, Recoveries: []recoveryV1{}}
	ids := make([]keyfile.ID, 0, len(s.contacts))
	for id := range s.contacts {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b keyfile.ID) int { return bytes.Compare(a[:], b[:]) })
	for _, id := range ids {
		c := s.contacts[id]
		f.Contacts = append(f.Contacts, contactV1{KeyFile: hexID(id), ServerTime: c.ServerTime,
			Floor: c.Floor, OfflineLimit: c.Limit, TPMClock: c.TPMClock, MAC: c.mac})
	}
	for _, r := range s.recoveries {
		f.Recoveries = append(f.Recoveries, recoveryV1{hexID(r.KeyFile), r.At})
	}
	return json.Marshal(&f)
}
