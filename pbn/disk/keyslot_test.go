package disk

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// newVolume formats a LUKS2 volume in an image file with one keyslot for
// key and returns its Keyslots.
func newVolume(t *testing.T, key secret.Bytes) Keyslots {
	t.Helper()
	k := Keyslots{Cryptsetup: testenv.Command(t, "cryptsetup"), Dev: filepath.Join(t.TempDir(), "disk.img")}
	if err := os.WriteFile(k.Dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(k.Dev, 20<<20); err != nil {
		t.Fatal(err)
	}
	if err := FormatLUKS(context.Background(), k.Cryptsetup, k.Dev, luksUUID, key); err != nil {
		t.Fatalf("FormatLUKS = %v", err)
	}
	return k
}

// TestFormatLUKS checks what FormatLUKS made: a LUKS2 header with the
// UUID asked for and one PBKDF2 keyslot, as cryptsetup itself reads it.
func TestFormatLUKS(t *testing.T) {
	k := newVolume(t, secret.Random(64))
	if sb, err := Probe(open(t, k.Dev)); err != nil || sb.Type != TypeLUKS || sb.UUID != luksUUID {
		t.Errorf("Probe = %+v, %v; want LUKS with UUID %s", sb, err, luksUUID)
	}
	out, err := exec.Command(k.Cryptsetup, "luksDump", "--dump-json-metadata", k.Dev).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Keyslots map[string]struct {
			KDF struct {
				Type       string `json:"type"`
				Iterations int    `json:"iterations"`
			} `json:"kdf"`
		} `json:"keyslots"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if s, ok := m.Keyslots["0"]; len(m.Keyslots) != 1 || !ok || s.KDF.Type != "pbkdf2" ||
		s.KDF.Iterations != slotIterations {
		t.Errorf("keyslots = %+v, want only slot 0, pbkdf2 with %d iterations", m.Keyslots, slotIterations)
	}
}

func TestKeyslots(t *testing.T) {
	ctx := context.Background()
	first, second, stranger := secret.Random(64), secret.Random(64), secret.Random(64)
	k := newVolume(t, first)

	if slot, err := k.Find(ctx, first); err != nil || slot != 0 {
		t.Fatalf("Find(first) = %d, %v, want 0", slot, err)
	}
	if _, err := k.Add(ctx, stranger, second); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Add authorized by a stranger = %v, want ErrWrongKey", err)
	}
	slot, err := k.Add(ctx, first, second)
	if err != nil || slot != 1 {
		t.Fatalf("Add = %d, %v, want 1", slot, err)
	}
	if got, err := k.Find(ctx, second); err != nil || got != slot {
		t.Errorf("Find(second) = %d, %v, want %d", got, err, slot)
	}
	if _, err := k.Find(ctx, stranger); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Find(stranger) = %v, want ErrWrongKey", err)
	}

	id := keyfile.NewID()
	if err := k.Tag(ctx, slot, id); err != nil {
		t.Fatalf("Tag = %v", err)
	}
	if tags, err := k.Tags(ctx); err != nil || len(tags) != 1 || tags[slot] != id {
		t.Errorf("Tags = %v, %v, want slot %d tagged %s", tags, err, slot, id)
	}

	if err := k.Kill(ctx, 0); err != nil {
		t.Fatalf("Kill(0) = %v", err)
	}
	if _, err := k.Find(ctx, first); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Find(first) after Kill = %v, want ErrWrongKey", err)
	}
	if err := k.Kill(ctx, slot); err != nil {
		t.Fatalf("Kill(%d) = %v", slot, err)
	}
	// A killed keyslot leaves its token without keyslots: no tag.
	if tags, err := k.Tags(ctx); err != nil || len(tags) != 0 {
		t.Errorf("Tags after Kill = %v, %v, want none", tags, err)
	}
}

func TestParseTags(t *testing.T) {
	id := keyfile.NewID()
	tests := []struct {
		name, json string
		want       map[int]keyfile.ID
		ok         bool
	}{
		{"none", `{"tokens":{}}`, map[int]keyfile.ID{}, true},
		{"one", `{"tokens":{"0":{"type":"pbn-keyfile","keyslots":["3"],"pbn_key_file":"` + id.String() + `"}}}`,
			map[int]keyfile.ID{3: id}, true},
		{"other type", `{"tokens":{"0":{"type":"systemd-tpm2","keyslots":["1"]}}}`, map[int]keyfile.ID{}, true},
		{"killed", `{"tokens":{"0":{"type":"pbn-keyfile","keyslots":[],"pbn_key_file":"x"}}}`,
			map[int]keyfile.ID{}, true},
		{"bad id", `{"tokens":{"0":{"type":"pbn-keyfile","keyslots":["1"],"pbn_key_file":"x"}}}`, nil, false},
		{"two slots", `{"tokens":{"0":{"type":"pbn-keyfile","keyslots":["1","2"],"pbn_key_file":"` +
			id.String() + `"}}}`, nil, false},
		{"twice", `{"tokens":{"0":{"type":"pbn-keyfile","keyslots":["1"],"pbn_key_file":"` + id.String() +
			`"},"1":{"type":"pbn-keyfile","keyslots":["1"],"pbn_key_file":"` + id.String() + `"}}}`, nil, false},
		{"not json", `{`, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTags([]byte(tt.json))
			if (err == nil) != tt.ok || tt.ok && !equalTags(got, tt.want) {
				t.Errorf("ParseTags = %v, %v, want %v (ok %v)", got, err, tt.want, tt.ok)
			}
		})
	}
}

func equalTags(a, b map[int]keyfile.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func FuzzParseTags(f *testing.F) {
	f.Add([]byte(`{"tokens":{"0":{"type":"pbn-keyfile","keyslots":["3"],"pbn_key_file":"00112233445566778899aabbccddeeff"}}}`))
	f.Add([]byte(`{"keyslots":{},"tokens":{"1":{"type":"pbn-keyfile","keyslots":[]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tags, err := ParseTags(b)
		if err != nil {
			return
		}
		for slot := range tags {
			if slot < 0 {
				t.Errorf("ParseTags gave keyslot %d", slot)
			}
		}
	})
}
