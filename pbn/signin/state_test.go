package signin

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// openKeyFile returns an open key file with a fresh FDE secret, for the
// state's MAC.
func openKeyFile(t testing.TB) *keyfile.KeyFile {
	t.Helper()
	f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindUser, DeviceID: keyfile.NewID()},
		&keyfile.Keyring{FDE: secret.Random(64)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func dur(d time.Duration) *time.Duration { return &d }

var testContact = contact{ServerTime: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
	Floor: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC), Limit: 7 * 24 * time.Hour,
	TPMClock: dur(40 * time.Hour)}

func TestStateRoundTrip(t *testing.T) {
	esp := espFS{faultfs.New(nil)}
	f, g := openKeyFile(t), openKeyFile(t)
	st, damaged := loadState(esp, keyDir)
	if len(st.contacts) != 0 || len(damaged) != 0 {
		t.Fatalf("loadState(empty ESP) = %+v, %v; want an empty state", st, damaged)
	}
	st.setContact(f, testContact)
	st.addRecovery(recovery{g.Header().ID, testContact.Floor})
	for range 3 { // both files in turn
		if err := st.save(esp, keyDir); err != nil {
			t.Fatal(err)
		}
	}

	back, damaged := loadState(esp, keyDir)
	if len(damaged) != 0 || back.seq != 3 {
		t.Fatalf("loadState = seq %d, %v; want 3 and no damage", back.seq, damaged)
	}
	c, ok := back.contactOf(f)
	if !ok || !c.ServerTime.Equal(testContact.ServerTime) || *c.TPMClock != *testContact.TPMClock ||
		c.Limit != testContact.Limit {
		t.Errorf("contactOf(f) = %+v, %v; want %+v", c, ok, testContact)
	}
	if _, ok := back.contactOf(g); ok {
		t.Errorf("contactOf(g) found a contact, want none")
	}
	if len(back.recoveries) != 1 || back.recoveries[0].KeyFile != g.Header().ID {
		t.Errorf("recoveries = %+v, want g's", back.recoveries)
	}
}

// TestStateTamper checks that a contact changed without the key file's
// FDE secret does not authenticate. It does not prove that deleting the
// state cannot do harm: that is ErrNoContact, tested in TestDeployed.
func TestStateTamper(t *testing.T) {
	f := openKeyFile(t)
	st := &state{contacts: map[keyfile.ID]contact{}}
	st.setContact(f, testContact)
	tests := []struct {
		name   string
		change func(*contact)
	}{
		{"later server time", func(c *contact) { c.ServerTime = c.ServerTime.Add(time.Hour) }},
		{"earlier floor", func(c *contact) { c.Floor = c.Floor.Add(-time.Hour) }},
		{"no limit", func(c *contact) { c.Limit = 0 }},
		{"no TPM clock", func(c *contact) { c.TPMClock = nil }},
		{"later TPM clock", func(c *contact) { c.TPMClock = dur(*c.TPMClock + time.Hour) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := st.contacts[f.Header().ID]
			tt.change(&c)
			forged := &state{contacts: map[keyfile.ID]contact{f.Header().ID: c}}
			if _, ok := forged.contactOf(f); ok {
				t.Errorf("contactOf(changed contact) authenticates")
			}
		})
	}
	other := openKeyFile(t)
	moved := &state{contacts: map[keyfile.ID]contact{other.Header().ID: st.contacts[f.Header().ID]}}
	if _, ok := moved.contactOf(other); ok {
		t.Errorf("another key file's contact authenticates")
	}
}

// TestStatePowerCut cuts the power at every operation of a save: the
// state read back is the old one or the new one, never none.
func TestStatePowerCut(t *testing.T) {
	f := openKeyFile(t)
	base := espFS{faultfs.New(nil)}
	st, _ := loadState(base, keyDir)
	st.setContact(f, testContact)
	if err := st.save(base, keyDir); err != nil {
		t.Fatal(err)
	}
	later := testContact
	later.ServerTime = later.ServerTime.Add(24 * time.Hour)
	for cut := 1; ; cut++ {
		fs := faultfs.New(base.Durable())
		fs.CutAt = cut
		esp := espFS{fs}
		st, _ := loadState(esp, keyDir)
		st.setContact(f, later)
		if st.save(esp, keyDir) == nil {
			break
		}
		for _, out := range fs.Outcomes() {
			back, _ := loadState(espFS{faultfs.New(out)}, keyDir)
			c, ok := back.contactOf(f)
			if !ok || !c.ServerTime.Equal(testContact.ServerTime) && !c.ServerTime.Equal(later.ServerTime) {
				t.Errorf("cut at %d: contact %+v, %v; want the old or the new one", cut, c, ok)
			}
		}
	}
}

func TestParseState(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	mac := strings.Repeat("A", 43) + "="
	entry := `{"key_file":"` + id + `","server_time":"2026-12-01T09:00:00Z",` +
		`"floor":"2026-12-01T09:00:00Z","offline_limit":0,"mac":"` + mac + `"}`
	good := `{"v":1,"seq":2,"contacts":[` + entry + `],"recoveries":[]}`
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"good", good, true},
		{"version 2", strings.Replace(good, `"v":1`, `"v":2`, 1), false},
		{"unknown field", strings.Replace(good, `"seq":2`, `"seq":2,"x":1`, 1), false},
		{"data after", good + "{}", false},
		{"short MAC", strings.Replace(good, mac, "AAAA", 1), false},
		{"negative limit", strings.Replace(good, `"offline_limit":0`, `"offline_limit":-1`, 1), false},
		{"year 1", strings.Replace(good, "2026-12-01T09:00:00Z", "0001-01-01T00:00:00Z", 1), false},
		{"zero key file", strings.Replace(good, id, strings.Repeat("0", 32), 1), false},
		{"repeated key file", strings.Replace(good, `}],"recoveries"`, `},`+entry+`],"recoveries"`, 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseState([]byte(tt.in))
			if (err == nil) != tt.ok || err != nil && !errors.Is(err, errState) {
				t.Errorf("parseState(%s) = %v, want ok %v", tt.in, err, tt.ok)
			}
		})
	}
}

// FuzzParseState: parseState never panics, and what it accepts marshals
// to a file it accepts again, the same.
func FuzzParseState(f *testing.F) {
	k := openKeyFile(f)
	st := &state{seq: 5, contacts: map[keyfile.ID]contact{}}
	st.setContact(k, testContact)
	st.addRecovery(recovery{k.Header().ID, testContact.Floor})
	b, _ := st.marshal()
	f.Add(b)
	f.Add([]byte(`{"v":1,"seq":0,"contacts":[],"recoveries":[]}`))
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		again, err := s.marshal()
		if err != nil {
			t.Fatalf("marshal of an accepted state: %v", err)
		}
		s2, err := parseState(again)
		if err != nil {
			t.Fatalf("%q accepted, but its encoding %q is not: %v", b, again, err)
		}
		if again2, _ := s2.marshal(); !bytes.Equal(again, again2) {
			t.Fatalf("encoding not stable: %q, then %q", again, again2)
		}
	})
}

func TestOfflineLimit(t *testing.T) {
	c := testContact // contact on 1 December, floor 2 December, 7 days
	day := 24 * time.Hour
	tests := []struct {
		name   string
		c      contact
		now    time.Time
		tpmNow *time.Duration
		want   error
	}{
		{"within", c, c.ServerTime.Add(3 * day), dur(41 * time.Hour), nil},
		{"at the floor, less its slack", c, c.Floor.Add(-ClockSlack + time.Second), nil, nil},
		{"past", c, c.ServerTime.Add(8 * day), nil, ErrOfflineLimit},
		{"2040", c, time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC), nil, ErrOfflineLimit},
		{"1980", c, time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC), nil, ErrClockUntrusted},
		{"behind the floor", c, c.Floor.Add(-time.Hour), nil, ErrClockUntrusted},
		{"the TPM ran past the limit", c, c.ServerTime.Add(2 * day), dur(40*time.Hour + 8*day), ErrClockUntrusted},
		{"the TPM ran longer than the clock says", c, c.Floor.Add(time.Hour), dur(40*time.Hour + 3*day),
			ErrClockUntrusted},
		{"the TPM a little behind after a power cut", c, c.Floor, dur(40*time.Hour - time.Hour), nil},
		{"the TPM far behind: cleared or another", c, c.Floor, dur(time.Hour), ErrClockUntrusted},
		{"no limit", contact{Floor: c.Floor}, time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.c.allows(tt.now, tt.tpmNow); !errors.Is(err, tt.want) {
				t.Errorf("allows(%v) = %v, want %v", tt.now, err, tt.want)
			}
		})
	}
}

// TestTPMClock reads a swtpm's Clock twice: it runs forward.
func TestTPMClock(t *testing.T) {
	sim := swtpm.Start(t)
	c, err := net.Dial("unix", strings.TrimPrefix(sim.Path(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	clock := TPMClock(transport.FromReadWriter(c))
	ctx := context.Background()
	first, err := clock.ReadClock(ctx)
	if err != nil {
		t.Fatalf("ReadClock = %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	second, err := clock.ReadClock(ctx)
	if err != nil || second <= first {
		t.Errorf("ReadClock = %v, %v after %v; want it later", second, err, first)
	}
}
