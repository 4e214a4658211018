package handoff

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/pbn-project/pbn/keyfile"
)

// Version 1 of the session file: one JSON object, parsed strictly (no
// unknown field, nothing after it, every field checked):
//
//	{"v": 1, "upn": "alice@corp.example", "sid": "S-1-5-21-...",
//	 "key_file": "<32 hex digits>", "kind": "user", "stage": "deployed",
//	 "online": true, "keyring": "pbn"}
const sessionV1 = 1

// maxSessionFile bounds the session file; maxSessionField each text field.
const (
	maxSessionFile  = 16 << 10
	maxSessionField = 256
)

// errSession is wrapped by every error of ParseSession.
var errSession = errors.New("not a valid session file")

type sessionV1File struct {
	V       int    `json:"v"`
	UPN     string `json:"upn"`
	SID     string `json:"sid"`
	KeyFile string `json:"key_file"`
	Kind    string `json:"kind"`
	Stage   string `json:"stage"`
	Online  bool   `json:"online"`
	Keyring string `json:"keyring"`
}

func (s Session) marshal() ([]byte, error) {
	return json.Marshal(&sessionV1File{V: sessionV1, UPN: s.UPN, SID: s.SID, KeyFile: s.KeyFile.String(),
		Kind: s.Kind.String(), Stage: string(s.Stage), Online: s.Online, Keyring: s.Keyring})
}

// ParseSession parses a session file strictly.
func ParseSession(b []byte) (*Session, error) {
	if len(b) > maxSessionFile {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errSession, len(b), maxSessionFile)
	}
	var f sessionV1File
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", errSession, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the object", errSession)
	}
	if f.V != sessionV1 {
		return nil, fmt.Errorf("%w: version %d, want %d", errSession, f.V, sessionV1)
	}
	for _, field := range []string{f.UPN, f.SID, f.Keyring} {
		if len(field) > maxSessionField || !utf8.ValidString(field) {
			return nil, fmt.Errorf("%w: a field longer than %d bytes or not UTF-8", errSession, maxSessionField)
		}
	}
	id, err := keyfile.ParseID(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: key_file: %v", errSession, err)
	}
	kind, err := keyfile.ParseKind(f.Kind)
	if err != nil {
		return nil, fmt.Errorf("%w: kind: %v", errSession, err)
	}
	st := Stage(f.Stage)
	switch st {
	case StageProvisioning, StageSecureMoment, StageDeployed, StageRecovery:
	default:
		return nil, fmt.Errorf("%w: stage %q", errSession, f.Stage)
	}
	return &Session{UPN: f.UPN, SID: f.SID, KeyFile: id, Kind: kind, Stage: st, Online: f.Online,
		Keyring: f.Keyring}, nil
}
