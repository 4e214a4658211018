package securemoment

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"path"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// changingFS is an ESP that reads back the user's key file (any name
// starting with a SID) changed by change. It is a fake because no real
// medium returns other bytes than it was given on demand.
type changingFS struct {
	keyfile.FS
	change func(b []byte) []byte
}

func (c changingFS) ReadFile(name string) ([]byte, error) {
	b, err := c.FS.ReadFile(name)
	if err != nil || !strings.HasPrefix(path.Base(name), "S-1-") {
		return b, err
	}
	return c.change(bytes.Clone(b)), nil
}

// withChecksum sets a changed file's checksum right, so that the change
// reaches the checks after the checksum: a medium's error would not, a
// deliberate change would.
func withChecksum(b []byte) []byte {
	sum := sha256.Sum256(b[:len(b)-sha256.Size])
	copy(b[len(b)-sha256.Size:], sum[:])
	return b
}

// passwordSalt returns the offset of a byte of the salt of the first
// password factor in an encoded key file.
func passwordSalt(t *testing.T, b []byte) int {
	t.Helper()
	f, err := keyfile.Parse(b)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	for _, p := range f.Protectors() {
		for i, typ := range p.Factors {
			if typ == keyfile.FactorPassword {
				if at := bytes.Index(b, p.Params[i]); at >= 0 {
					return at + 1 // the version byte precedes the salt
				}
			}
		}
	}
	t.Fatal("no password factor")
	return 0
}

// TestStoreCatchesChanges checks that the store step, which verifies the
// stored key file without deriving the password's Argon2id secret again,
// still refuses a key file that reads back other than written: damaged, or
// changed with its checksum set right in the header, the password's salt
// or the sealed keyring. It does not prove anything about a change to the
// TPM's sealed object (which the TPM would count as a wrong password) or
// about a change that appears only after the store step.
func TestStoreCatchesChanges(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name    string
		change  func(t *testing.T, b []byte) []byte
		wantErr error
	}{
		{"a flipped bit", func(t *testing.T, b []byte) []byte {
			b[len(b)/2] ^= 0x10
			return b
		}, keyfile.ErrDamaged},
		{"the header", func(t *testing.T, b []byte) []byte {
			at := bytes.Index(b, []byte(user+"@"))
			if at < 0 {
				t.Fatal("no UPN in the key file")
			}
			b[at] = 'A'
			return withChecksum(b)
		}, keyfile.ErrTampered},
		{"the password's salt", func(t *testing.T, b []byte) []byte {
			b[passwordSalt(t, b)] ^= 1
			return withChecksum(b)
		}, keyfile.ErrWrongPassword},
		{"the sealed keyring", func(t *testing.T, b []byte) []byte {
			b[len(b)-sha256.Size-1] ^= 1
			return withChecksum(b)
		}, keyfile.ErrTampered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.newDevice(t)
			d.ESP = changingFS{FS: d.ESP, change: func(b []byte) []byte { return tc.change(t, b) }}
			_, err := d.Run(testContext(t), user, secret.Bytes(password))
			var se *StepError
			if !errors.As(err, &se) || se.Step != StepStore || !errors.Is(err, tc.wantErr) {
				t.Errorf("Run = %v, want the store step to fail with %v", err, tc.wantErr)
			}
		})
	}
}
