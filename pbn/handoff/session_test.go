package handoff

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

var testSession = Session{UPN: "alice@corp.example.test", SID: "S-1-5-21-1-2-3-1105",
	KeyFile: keyfile.NewID(), Kind: keyfile.KindUser, Stage: StageDeployed, Online: true, Keyring: KeyringName}

func TestSession(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run/pbn/session")
	if err := WriteSession(path, testSession); err != nil {
		t.Fatalf("WriteSession = %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("session file mode %v, %v; want 0600", fi.Mode(), err)
	}
	got, err := ReadSession(path)
	if err != nil || *got != testSession {
		t.Errorf("ReadSession = %+v, %v; want %+v", got, err, testSession)
	}
}

func TestParseSession(t *testing.T) {
	good, _ := testSession.marshal()
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"good", string(good), true},
		{"version 2", strings.Replace(string(good), `"v":1`, `"v":2`, 1), false},
		{"unknown stage", strings.Replace(string(good), `"deployed"`, `"later"`, 1), false},
		{"unknown kind", strings.Replace(string(good), `"user"`, `"guest"`, 1), false},
		{"unknown field", strings.Replace(string(good), `"v":1`, `"v":1,"password":"x"`, 1), false},
		{"bad key file", strings.Replace(string(good), testSession.KeyFile.String(), "xyz", 1), false},
		{"data after", string(good) + "1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSession([]byte(tt.in))
			if (err == nil) != tt.ok || err != nil && !errors.Is(err, errSession) {
				t.Errorf("ParseSession(%s) = %v, want ok %v", tt.in, err, tt.ok)
			}
		})
	}
}

// FuzzParseSession: ParseSession never panics, and a session it accepts
// writes back to one it accepts, the same.
func FuzzParseSession(f *testing.F) {
	good, _ := testSession.marshal()
	f.Add(good)
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSession(b)
		if err != nil {
			return
		}
		again, err := s.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if s2, err := ParseSession(again); err != nil || *s2 != *s {
			t.Fatalf("%q accepted, but its encoding %q gives %+v, %v", b, again, s2, err)
		}
	})
}

// TestPutKeys puts keys into a keyring linked into a keyring of the test
// process's own, not root's user keyring, which the host shares, and
// reads them back. It does not prove that the OS after switch_root finds
// them: the lab's boot test does.
func TestPutKeys(t *testing.T) {
	testenv.Root(t)
	dest, err := unix.AddKey("keyring", "pbn-test-"+strconv.Itoa(os.Getpid()), nil, unix.KEY_SPEC_PROCESS_KEYRING)
	if err != nil {
		t.Fatalf("add_key: %v", err)
	}
	t.Cleanup(func() { unix.KeyctlInt(unix.KEYCTL_REVOKE, dest, 0, 0, 0) })
	ring := &keyfile.Keyring{FDE: secret.Bytes("the FDE secret"), Enterprise: secret.Bytes("enterprise"),
		Groups: []keyfile.GroupKey{{SID: "S-1-5-21-1-2-3-1200", Name: "staff", Key: secret.Bytes("staff key")}}}
	kr, err := PutKeys(dest, ring)
	if err != nil {
		t.Fatalf("PutKeys = %v", err)
	}
	if found, err := unix.KeyctlSearch(dest, "keyring", KeyringName, 0); err != nil || found != kr {
		t.Errorf("search for keyring %s = %d, %v; want %d", KeyringName, found, err, kr)
	}
	tests := []struct{ desc, want string }{
		{EnterpriseKey, "enterprise"},
		{GroupKeyPrefix + "S-1-5-21-1-2-3-1200", "staff key"},
	}
	for _, tt := range tests {
		id, err := unix.KeyctlSearch(kr, "user", tt.desc, 0)
		if err != nil {
			t.Errorf("search for %s: %v", tt.desc, err)
			continue
		}
		buf := make([]byte, 64)
		n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, buf, 0)
		if err != nil || string(buf[:n]) != tt.want {
			t.Errorf("read %s = %q, %v; want %q", tt.desc, buf[:n], err, tt.want)
		}
		d, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id)
		if want := "user;0;0;3f0b0000;" + tt.desc; err != nil || d != want {
			t.Errorf("describe %s = %q, %v; want %q", tt.desc, d, err, want)
		}
	}
	// The FDE secret stays out of the keyring: the OS has the disk open.
	n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, kr, make([]byte, 64), 0)
	if err != nil || n != 2*4 {
		t.Errorf("the keyring holds %d bytes of serials, %v; want 2 keys", n, err)
	}
}
