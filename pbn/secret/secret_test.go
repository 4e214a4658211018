package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNeverPrinted(t *testing.T) {
	s := Bytes("hunter2-hunter2")
	for _, verb := range []string{"%v", "%s", "%x", "%X", "%q", "%#v", "%+v", "%d"} {
		got := fmt.Sprintf(verb, s)
		if strings.Contains(got, "hunter2") || strings.Contains(got, "68756e746572") {
			t.Errorf("Sprintf(%q) = %q, leaks the secret", verb, got)
		}
	}
	j, err := json.Marshal(struct{ S Bytes }{s})
	if err != nil || strings.Contains(string(j), "hunter2") || strings.Contains(string(j), "aHVudGVy") {
		t.Errorf("json.Marshal = %s, %v; leaks the secret", j, err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "password", s)
	if strings.Contains(buf.String(), "hunter2") {
		t.Errorf("slog wrote %q, leaks the secret", buf.String())
	}
}

func TestWipe(t *testing.T) {
	s := Bytes("abc")
	c := s.Clone()
	s.Wipe()
	if !bytes.Equal(s, []byte{0, 0, 0}) {
		t.Errorf("after Wipe = %v, want zeros", []byte(s))
	}
	if !c.Equal(Bytes("abc")) {
		t.Errorf("Clone was wiped with its original")
	}
	if len(Random(32)) != 32 {
		t.Errorf("Random(32) has the wrong length")
	}
}

func TestDisableCoreDumps(t *testing.T) {
	if err := DisableCoreDumps(); err != nil {
		t.Fatalf("DisableCoreDumps = %v", err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil || lim.Cur != 0 {
		t.Errorf("RLIMIT_CORE = %+v, %v; want 0", lim, err)
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		t.Errorf("PR_GET_DUMPABLE = %d, %v; want 0", d, err)
	}
}
