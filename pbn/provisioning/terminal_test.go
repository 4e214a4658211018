package provisioning

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pbn-project/pbn/pbn/console"
)

// waitFor waits until the session's console shows want, for a bounded
// time.
func waitFor(t *testing.T, s *session, want string) {
	t.Helper()
	for range 600 {
		if strings.Contains(s.out.String(), want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("console:\n%s\nwant %q", s.out, want)
}

func TestCountdown(t *testing.T) {
	tests := []struct {
		name    string
		typed   string
		closed  bool
		pressed bool
		lines   int
	}{
		{"nobody", "", false, false, 2},
		{"key", "x", false, true, 1},
		{"input ended", "", true, false, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(t)
			s.typeIn(t, tt.typed)
			if tt.closed {
				s.in.Close()
			}
			var lefts []int64
			start := time.Now()
			pressed, err := s.term.Countdown(context.Background(), 1500*time.Millisecond,
				func(left time.Duration) { lefts = append(lefts, seconds(left)) })
			if err != nil || pressed != tt.pressed {
				t.Fatalf("Countdown = %v, %v, want %v", pressed, err, tt.pressed)
			}
			if len(lefts) != tt.lines || lefts[0] != 2 {
				t.Errorf("Countdown showed %v seconds left, want %d lines from 2", lefts, tt.lines)
			}
			if took := time.Since(start); !tt.pressed && took < 1500*time.Millisecond {
				t.Errorf("Countdown took %v, want 1.5 s", took)
			}
			if tt.pressed {
				// The key was consumed: the next read is what follows it.
				s.typeIn(t, "bob\r")
				if got, _, err := s.term.Account("? "); got != "bob" || err != nil {
					t.Errorf("Account after the key = %q, %v, want bob", got, err)
				}
			}
		})
	}
}

func TestCountdownCancelled(t *testing.T) {
	s := newSession(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.term.Countdown(ctx, time.Minute, func(time.Duration) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("Countdown = %v, want context.Canceled", err)
	}
}

func TestAccount(t *testing.T) {
	tests := []struct {
		typed, want, shown string
	}{
		{"alice\r", "alice", "alice\n"},
		{"alicx\x7fe\r", "alice", "alicx\b \be\n"},
		{"mallory\x15alice\n", "alice", "mallory" + strings.Repeat("\b \b", 7) + "alice\n"},
		{"al\x1b[Aice\r", "al[Aice", "al[Aice\n"},
		{"jürgen\r", "jürgen", "jürgen\n"},
		{"\r", "", "\n"},
	}
	for _, tt := range tests {
		s := newSession(t)
		s.typeIn(t, tt.typed)
		got, _, err := s.term.Account("")
		if got != tt.want || err != nil {
			t.Errorf("Account(%q) = %q, %v, want %q", tt.typed, got, err, tt.want)
		}
		if out := s.out.String(); out != tt.shown {
			t.Errorf("Account(%q) showed %q, want %q", tt.typed, out, tt.shown)
		}
	}

	s := newSession(t)
	s.typeIn(t, "half")
	s.in.Close()
	if _, _, err := s.term.Account(""); !errors.Is(err, console.ErrClosed) {
		t.Errorf("Account on an ended input = %v, want console.ErrClosed", err)
	}
}

// TestAccountLineAbove says a line while an account is typed: it goes
// above the prompt, which shows again with what was typed so far, and
// the account read is whole.
func TestAccountLineAbove(t *testing.T) {
	s := newSession(t)
	s.typeIn(t, "alx\x7f")
	type result struct {
		account string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		a, _, err := s.term.Account("Sign in as: ")
		done <- result{a, err}
	}()
	waitFor(t, s, "alx\b \b")
	s.term.Say("pbn: network: up")
	s.typeIn(t, "ice\r")
	r := <-done
	if r.account != "alice" || r.err != nil {
		t.Errorf("Account = %q, %v, want alice", r.account, r.err)
	}
	want := "Sign in as: alx\b \b\r\x1b[Kpbn: network: up\nSign in as: alice\n"
	if got := s.out.String(); got != want {
		t.Errorf("the console shows %q, want %q", got, want)
	}
}

// FuzzAccount types anything: the account read holds no control
// character, is at most MaxAccount bytes, and the screen shows no control
// character but the erasing backspace and the final newline.
func FuzzAccount(f *testing.F) {
	for _, s := range []string{"alice\r", "a\x7f\x7fb\n", "\x15\x03x\r", "\xff\xfe\r", "ü\x7f\r", strings.Repeat("a", 300) + "\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, typed []byte) {
		s := newSession(t)
		if len(typed) > 4000 {
			typed = typed[:4000] // what a pipe's buffer surely holds
		}
		s.in.Write(typed)
		s.in.Close()
		got, _, err := s.term.Account("")
		if err != nil {
			return
		}
		if len(got) > MaxAccount || strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 }) {
			t.Errorf("Account(%q) = %q", typed, got)
		}
		shown := strings.TrimSuffix(strings.ReplaceAll(s.out.String(), "\b", ""), "\n")
		for _, r := range shown {
			if r != utf8.RuneError && unicode.IsControl(r) {
				t.Errorf("Account(%q) showed %q", typed, s.out.String())
				break
			}
		}
	})
}
