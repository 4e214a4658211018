package signin

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/crypto/hkdf"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// The sign-in state is what the deployed stage remembers between boots on
// the ESP, beside the key files: for each key file, the last contact with
// the key server (the server's time then, the policy's offline limit and
// the TPM's Clock), and the recovery-key uses not yet reported. It is
// written to two files in turn (stateFiles), each with a sequence number,
// so that a power cut while one is written leaves the other whole.
//
// A contact is authenticated with a MAC under a key derived from its key
// file's FDE secret, so only someone who could open the key file can make
// one; a contact that does not authenticate counts as none. Deleting the
// state makes the device stricter, never laxer: without a contact the key
// file does not open offline. The recovery reports are not authenticated:
// they are a report to the server, never a decision.
var stateFiles = [2]string{"signin.0.state", "signin.1.state"}

// state is the sign-in state.
type state struct {
	seq        uint64
	slot       int // the file it was read from
	contacts   map[keyfile.ID]contact
	recoveries []recovery
}

// contact is a key file's last contact with the key server.
type contact struct {
	// ServerTime is the server's clock then; Floor is the latest time
	// seen since, by the server or by an offline sign-in within the
	// limit. The pre-boot clock may not be earlier.
	ServerTime, Floor time.Time
	// Limit is the policy's offline limit then; zero means none.
	Limit time.Duration
	// TPMClock is the TPM's Clock then, nil when it was not read.
	TPMClock *time.Duration
	mac      []byte
}

// recovery is one use of a key file's recovery key.
type recovery struct {
	KeyFile keyfile.ID
	At      time.Time
}

const macSize = sha256.Size

// macKey derives the key that authenticates key file id's contact from
// the FDE secret of its keyring (HKDF-SHA256, RFC 5869).
func macKey(id keyfile.ID, fde secret.Bytes) secret.Bytes {
	k := make(secret.Bytes, 32)
	io.ReadFull(hkdf.New(sha256.New, fde, id[:], []byte("pbn sign-in state v1")), k)
	return k
}

// sum is the MAC of c for key file id.
func (c contact) sum(id keyfile.ID, key secret.Bytes) []byte {
	var b []byte
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(c.ServerTime.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(c.Floor.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(c.Limit))
	if c.TPMClock != nil {
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, uint64(*c.TPMClock))
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(nil)
}

// contactOf returns the contact of the open key file f, if one is
// recorded and authenticates.
func (s *state) contactOf(f *keyfile.KeyFile) (contact, bool) {
	id := f.Header().ID
	c, ok := s.contacts[id]
	if !ok {
		return contact{}, false
	}
	key := macKey(id, f.Keyring().FDE)
	defer key.Wipe()
	return c, hmac.Equal(c.mac, c.sum(id, key))
}

// setContact records c as the contact of the open key file f.
func (s *state) setContact(f *keyfile.KeyFile, c contact) {
	id := f.Header().ID
	key := macKey(id, f.Keyring().FDE)
	defer key.Wipe()
	c.ServerTime, c.Floor = c.ServerTime.UTC(), c.Floor.UTC()
	c.mac = c.sum(id, key)
	s.contacts[id] = c
	for len(s.contacts) > maxContacts {
		delete(s.contacts, s.oldest())
	}
}

// oldest returns the key file whose contact is the oldest.
func (s *state) oldest() keyfile.ID {
	var id keyfile.ID
	var at time.Time
	for k, c := range s.contacts {
		if at.IsZero() || c.ServerTime.Before(at) {
			id, at = k, c.ServerTime
		}
	}
	return id
}

// addRecovery records a recovery-key use, dropping the oldest beyond
// maxRecoveries.
func (s *state) addRecovery(r recovery) {
	s.recoveries = append(s.recoveries, r)
	if n := len(s.recoveries) - maxRecoveries; n > 0 {
		s.recoveries = slices.Delete(s.recoveries, 0, n)
	}
}

// loadState reads the newest whole state file in dir; none is an empty
// state. It returns the errors of files that are there but do not parse
// as damaged, for the log.
func loadState(fsys keyfile.FS, dir string) (s *state, damaged []error) {
	s = &state{slot: len(stateFiles) - 1, contacts: map[keyfile.ID]contact{}}
	found := false
	for i, name := range stateFiles {
		p := filepath.Join(dir, name)
		b, err := fsys.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var got *state
		if err == nil {
			got, err = parseState(b)
		}
		if err != nil {
			damaged = append(damaged, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if !found || got.seq > s.seq {
			got.slot, s, found = i, got, true
		}
	}
	return s, damaged
}

// save writes s as the next state, into the file it was not read from,
// durably.
func (s *state) save(fsys keyfile.FS, dir string) error {
	s.seq++
	s.slot = (s.slot + 1) % len(stateFiles)
	b, err := s.marshal()
	if err != nil {
		return fmt.Errorf("sign-in state: %w", err)
	}
	p := filepath.Join(dir, stateFiles[s.slot])
	w, err := fsys.Create(p)
	if err != nil {
		return fmt.Errorf("sign-in state: %w", err)
	}
	_, err = w.Write(b)
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("sign-in state: write %s: %w", p, err)
	}
	return nil
}
