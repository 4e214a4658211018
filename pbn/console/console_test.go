package console

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/secret"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// screen collects what the console shows on the terminal's master side.
type screen struct {
	buf  bytes.Buffer
	done chan struct{}
}

func watch(master *os.File) *screen {
	s := &screen{done: make(chan struct{})}
	go func() {
		io.Copy(&s.buf, master) // ends when the master is closed
		close(s.done)
	}()
	return s
}

func TestPasswordOverPTY(t *testing.T) {
	tests := []struct {
		name, typed string
		want        string
		stars       int
	}{
		{"plain", "hunter2\r", "hunter2", 7},
		{"backspace", "huntex\x7fr2\r", "hunter2", 8},
		{"ctrl-u clears", "wrong\x15right\n", "right", 10},
		{"utf-8 one star per character", "pässwörd\r", "pässwörd", 8},
		{"backspace over utf-8", "pä\x7fx\r", "px", 3},
		{"control bytes dropped", "a\x01b\x1bc\r", "abc", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			master, slave := openPTY(t)
			c := New(slave, slave)
			scr := watch(master)
			if _, err := master.Write([]byte(tt.typed)); err != nil {
				t.Fatal(err)
			}
			pw, _, err := c.Password("Enter password for alice: ")
			if err != nil {
				t.Fatalf("Password() = %v", err)
			}
			if string(pw) != tt.want {
				t.Errorf("Password() = %q, want %q", pw, tt.want)
			}
			c.Close()
			slave.Close()
			<-scr.done // the master reads EIO once the slave is closed and drained
			shown := scr.buf.String()
			// What this does not prove: that no copy of the password stays
			// in memory; only that the terminal never shows it.
			if strings.Contains(shown, tt.want) {
				t.Errorf("the terminal shows the password: %q", shown)
			}
			if got := strings.Count(shown, "*"); got != tt.stars {
				t.Errorf("the terminal shows %d stars, want %d: %q", got, tt.stars, shown)
			}
			if !strings.HasPrefix(shown, "Enter password for alice: ") {
				t.Errorf("the terminal shows %q, want the prompt first", shown)
			}
		})
	}
}

func TestAsk(t *testing.T) {
	right := secret.Bytes("correct horse")
	tests := []struct {
		name     string
		typed    string
		tries    int
		wantErr  error
		wantSeen int // passwords given to check
	}{
		{"right first", "correct horse\r", 3, nil, 1},
		{"right third", "a\rb\r\ncorrect horse\r\n", 3, nil, 3},
		{"limit holds", "a\rb\rc\rcorrect horse\r", 3, ErrTooManyTries, 3},
		{"empty entries do not count", "\r\r\rcorrect horse\r", 1, nil, 1},
		{"input ends", "a\r", 3, ErrClosed, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c := New(strings.NewReader(tt.typed), &out)
			seen := 0
			_, err := c.Ask("Password: ", "That password is not correct.", tt.tries, func(pw secret.Bytes) error {
				seen++
				if pw.Equal(right) {
					return nil
				}
				return fmt.Errorf("key file: %w", ErrWrong)
			})
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Ask() = %v, want %v", err, tt.wantErr)
			}
			if seen != tt.wantSeen {
				t.Errorf("Ask() checked %d passwords, want %d", seen, tt.wantSeen)
			}
			if wrongs := strings.Count(out.String(), "That password is not correct."); tt.wantErr == ErrTooManyTries &&
				wrongs != tt.tries-1 {
				t.Errorf("Ask() said the password was wrong %d times, want %d", wrongs, tt.tries-1)
			}
		})
	}
}

func TestAskStopsOnOtherErrors(t *testing.T) {
	errDamaged := errors.New("damaged")
	c := New(strings.NewReader("x\rx\r"), io.Discard)
	seen := 0
	_, err := c.Ask("Password: ", "wrong", 3, func(secret.Bytes) error { seen++; return errDamaged })
	if !errors.Is(err, errDamaged) || seen != 1 {
		t.Errorf("Ask() = %v after %d checks, want damaged after 1", err, seen)
	}
}

// typing is typed input that runs said, as another goroutine would, once
// after bytes have been read.
type typing struct {
	typed string
	after int
	said  func()
	read  int
}

func (r *typing) Read(p []byte) (int, error) {
	if r.read == r.after && r.said != nil {
		r.said()
		r.said = nil
	}
	if r.read == len(r.typed) || len(p) == 0 {
		return 0, io.EOF
	}
	p[0] = r.typed[r.read]
	r.read++
	return 1, nil
}

// TestSayAbovePrompt says lines while a password is typed: each goes
// above the prompt, which shows again below it with its stars, and none
// waits for the end of the typing. A progress line is left out.
func TestSayAbovePrompt(t *testing.T) {
	tests := []struct {
		name  string
		typed string
		after int
		say   func(c *Console)
		shown string
	}{
		{"say", "abc\r", 2, func(c *Console) { c.Say("pbn: network: up") },
			"pw: **\r\x1b[Kpbn: network: up\npw: ***\n"},
		{"log line", "abc\r", 1, func(c *Console) { c.Write([]byte("level=INFO msg=lease\n")) },
			"pw: *\r\x1b[Klevel=INFO msg=lease\npw: ***\n"},
		{"after a backspace", "ab\x7fc\r", 3, func(c *Console) { c.Say("pbn: network: up") },
			"pw: **\b \b\r\x1b[Kpbn: network: up\npw: **\n"},
		{"before any key", "a\r", 0, func(c *Console) { c.Say("pbn: network: up") },
			"pw: \r\x1b[Kpbn: network: up\npw: *\n"},
		{"progress left out", "abc\r", 2, func(c *Console) { c.Progress("pbn: network: waiting") },
			"pw: ***\n"},
		{"after the prompt", "abc\r", 4, func(c *Console) { c.Say("pbn: network: up") },
			"pw: ***\npbn: network: up\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			in := &typing{typed: tt.typed, after: tt.after}
			c := New(in, &out)
			in.said = func() { tt.say(c) }
			if _, _, err := c.Password("pw: "); err != nil {
				t.Fatalf("Password() = %v", err)
			}
			if in.said != nil { // the typing ended first
				in.said()
			}
			if got := out.String(); got != tt.shown {
				t.Errorf("the console shows %q, want %q", got, tt.shown)
			}
		})
	}
}

func TestProgressWithoutPrompt(t *testing.T) {
	var out bytes.Buffer
	c := New(strings.NewReader(""), &out)
	c.Progress("pbn: network: waiting (%d s)...", 2)
	if got, want := out.String(), "pbn: network: waiting (2 s)...\n"; got != want {
		t.Errorf("Progress showed %q, want %q", got, want)
	}
}

func TestChangePassword(t *testing.T) {
	errRejected := errors.New("rejected")
	tests := []struct {
		name, typed string
		reject      bool
		want        string // "" for an error
		wantErr     error
		mismatches  int
	}{
		{"same twice", "n3w-Pass\rn3w-Pass\r", false, "n3w-Pass", nil, 0},
		{"differ, then same", "n3w-Pass\rn3w-Pas\rn3w-Pass\rn3w-Pass\r", false, "n3w-Pass", nil, 1},
		{"empty asked again", "\rn3w-Pass\rn3w-Pass\r", false, "n3w-Pass", nil, 0},
		{"never the same", "a\rb\rc\rd\re\rf\r", false, "", ErrMismatch, 3},
		{"input ends", "n3w-Pass\r", false, "", ErrClosed, 0},
		{"change refuses", "n3w-Pass\rn3w-Pass\r", true, "", errRejected, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			var given string
			pw, _, err := ChangePassword(New(strings.NewReader(tt.typed), &out), "Your password has expired.", 3,
				func(pw secret.Bytes) error {
					given = string(pw)
					if tt.reject {
						return errRejected
					}
					return nil
				})
			if !errors.Is(err, tt.wantErr) || string(pw) != tt.want {
				t.Errorf("ChangePassword = %d bytes, %v; want %q, %v", len(pw), err, tt.want, tt.wantErr)
			}
			if tt.want != "" && given != tt.want {
				t.Errorf("change was given %q, want %q", given, tt.want)
			}
			o := out.String()
			if got := strings.Count(o, "not the same"); got != tt.mismatches {
				t.Errorf("said the entries differ %d times, want %d", got, tt.mismatches)
			}
			if !strings.HasPrefix(o, "Your password has expired.\n") {
				t.Errorf("console does not start with why:\n%s", o)
			}
			if changed := strings.Contains(o, "Your password is changed."); changed != (err == nil) {
				t.Errorf("console says changed = %v with error %v:\n%s", changed, err, o)
			}
			if strings.Contains(o, "n3w") {
				t.Errorf("the console shows the password:\n%s", o)
			}
		})
	}
}
