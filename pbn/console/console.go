// Package console is the pre-boot console: plain lines for the person at
// the machine, and a masked password prompt with a limit of tries. It works
// on /dev/console, a serial line in the lab, and on any terminal.
package console

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/secret"
)

// MaxPassword is the longest password the prompt takes, in bytes; what is
// typed beyond it is dropped.
const MaxPassword = 1024

// The errors that [Console.Ask] returns.
var (
	// ErrWrong is what an Ask check wraps to say "wrong, ask again".
	ErrWrong = errors.New("wrong password")
	// ErrTooManyTries says the limit of tries was reached.
	ErrTooManyTries = errors.New("too many wrong passwords")
	// ErrClosed says the console's input ended.
	ErrClosed = errors.New("console input closed")
)

// Console writes lines to a person and reads passwords from them. Its
// methods are safe for concurrent use. While a prompt shows (Password, or
// a prompt line between Begin and End), a line that Say, Progress or Write
// prints from another goroutine goes above it: the prompt's line is
// cleared, the line printed, and the prompt shown again below it with what
// was typed so far, so that no line ever lands in the middle of a prompt
// and nothing waits for the person to finish typing.
type Console struct {
	mu     sync.Mutex
	in     io.Reader
	out    io.Writer
	fd     int           // the terminal's descriptor, or -1 for plain input
	saved  *unix.Termios // the terminal's settings before New
	lastCR bool          // the last password ended with '\r': a '\n' may follow
	// shown is the prompt line on the screen, the prompt and the echo of
	// what was typed ('*' for a password, never the password itself),
	// while one shows; nil otherwise.
	shown []byte

	reading sync.Mutex // held by Password while it reads, one at a time
}

// New returns a Console on in and out. When in is a terminal (an *os.File
// on a tty), New turns its echo, line editing and signal keys off for as
// long as the Console is open, so that nothing typed ahead of a prompt
// shows and Ctrl-C sends no signal; Close restores them.
func New(in io.Reader, out io.Writer) *Console {
	c := &Console{in: in, out: out, fd: -1}
	f, ok := in.(*os.File)
	if !ok {
		return c
	}
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return c // not a terminal
	}
	saved := *t
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Iflag &^= unix.ICRNL | unix.INLCR | unix.IGNCR | unix.IXON
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if unix.IoctlSetTermios(fd, unix.TCSETS, t) == nil {
		c.fd, c.saved = fd, &saved
	}
	return c
}

// Open opens a console device such as /dev/console for reading and
// writing, without making it the controlling terminal.
func Open(path string) (*Console, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return New(f, f), nil
}

// Close restores the terminal's settings and waits until all output has
// reached it (tcdrain), so that a last message is not lost to a reboot.
func (c *Console) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	unix.IoctlSetInt(c.fd, unix.TCSBRK, 1) // tcdrain
	return unix.IoctlSetTermios(c.fd, unix.TCSETS, c.saved)
}

// Drain waits until all output has reached the terminal (tcdrain).
func (c *Console) Drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd >= 0 {
		unix.IoctlSetInt(c.fd, unix.TCSBRK, 1)
	}
}

// Say prints one line, above the prompt while one shows.
func (c *Console) Say(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.above(fmt.Appendf(nil, format+"\n", args...))
}

// Progress prints one line, as Say, but not while a prompt shows: a
// progress line says that something is still going on to a person who
// would otherwise stare at nothing, and one at a prompt is busy typing.
func (c *Console) Progress(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shown == nil {
		fmt.Fprintf(c.out, format+"\n", args...)
	}
}

// Write writes p, whole lines from loggers that share the console, above
// the prompt while one shows.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.above(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// above writes p, ending it with a newline when a prompt shows: first the
// prompt's line is cleared (a carriage return and ECMA-48's EL, "CSI K"),
// and after p the prompt is shown again. The caller holds mu.
// TODO: a prompt line wider than the terminal wraps, and clearing it
// clears only its last row: the rows above stay, above the line said. The
// terminal's width (TIOCGWINSZ, often unknown on a serial line) would tell
// how many rows to clear.
func (c *Console) above(p []byte) error {
	if c.shown == nil {
		_, err := c.out.Write(p)
		return err
	}
	b := append([]byte("\r\x1b[K"), p...)
	if !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	_, err := c.out.Write(append(b, c.shown...))
	return err
}

// Begin shows prompt, which starts a prompt line: until End, lines said
// from elsewhere go above it (see [Console]). Echo and Backspace show
// what is typed on it.
func (c *Console) Begin(prompt string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shown = append([]byte{}, prompt...)
	fmt.Fprint(c.out, prompt)
}

// Echo shows p, typed characters or their mask, on the prompt line.
func (c *Console) Echo(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shown != nil {
		c.shown = append(c.shown, p...)
	}
	c.out.Write(p)
}

// Backspace erases the last character that Echo showed.
func (c *Console) Backspace() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shown != nil {
		_, size := utf8.DecodeLastRune(c.shown)
		c.shown = c.shown[:len(c.shown)-size]
	}
	fmt.Fprint(c.out, "\b \b")
}

// End ends the prompt line with a newline.
func (c *Console) End() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shown = nil
	fmt.Fprint(c.out, "\n")
}

// Password shows prompt and reads a password, echoing a '*' per character
// typed. Backspace removes the last character; Ctrl-U or Ctrl-C clears the
// line; Enter ends it. It returns ErrClosed when the input ends, and the
// time the person took (to leave out of the boot time).
func (c *Console) Password(prompt string) (secret.Bytes, time.Duration, error) {
	c.reading.Lock()
	defer c.reading.Unlock()

	c.Begin(prompt)
	start := time.Now()
	pw, err := c.readMasked()
	took := time.Since(start)
	c.End()
	return pw, took, err
}

func (c *Console) readMasked() (secret.Bytes, error) {
	pw := make(secret.Bytes, 0, MaxPassword)
	// One byte at a time, into a buffer wiped after each: a buffered
	// reader would keep what was typed in a buffer of its own.
	var buf [1]byte
	defer clear(buf[:])
	first := true
	for {
		if _, err := io.ReadFull(c.in, buf[:]); err != nil {
			pw.Wipe()
			return nil, ErrClosed
		}
		b := buf[0]
		skipLF := first && b == '\n' && c.lastCR
		first = false
		switch {
		case skipLF:
		case b == '\r' || b == '\n':
			c.lastCR = b == '\r'
			return pw, nil
		case b == 0x7f || b == '\b':
			pw = c.erase(pw, 1)
		case b == 0x15 || b == 0x03: // Ctrl-U, Ctrl-C
			pw = c.erase(pw, len(pw))
		case b < 0x20:
			// Other control bytes are not part of a password.
		case len(pw) < MaxPassword:
			pw = append(pw, b)
			if !utf8.RuneStart(b) {
				continue // one '*' per character, not per byte
			}
			c.Echo([]byte("*"))
		}
	}
}

// erase removes n characters (runes) from the end of pw and their '*'.
func (c *Console) erase(pw secret.Bytes, n int) secret.Bytes {
	for ; n > 0 && len(pw) > 0; n-- {
		_, size := utf8.DecodeLastRune(pw)
		clear(pw[len(pw)-size:])
		pw = pw[:len(pw)-size]
		c.Backspace()
	}
	return pw
}

// Ask prompts for a password up to tries times and gives each to check,
// wiping it afterwards. A check that returns an error wrapping ErrWrong
// has the person try again; wrong says what to tell them (a plain
// sentence). Any other error ends Ask with it. An empty entry is asked
// again without counting. After tries wrong ones, Ask returns
// ErrTooManyTries. took is the time spent typing.
func (c *Console) Ask(prompt, wrong string, tries int, check func(secret.Bytes) error) (took time.Duration, err error) {
	maxReads := 10 * tries // empty entries do not count, but do not loop for ever
	for wrongs, reads := 0, 0; wrongs < tries && reads < maxReads; reads++ {
		pw, d, err := c.Password(prompt)
		took += d
		if err != nil {
			return took, err
		}
		if len(pw) == 0 {
			continue
		}
		err = check(pw)
		pw.Wipe()
		if !errors.Is(err, ErrWrong) {
			return took, err
		}
		wrongs++
		if wrongs < tries {
			c.Say("%s", wrong)
		}
	}
	return took, ErrTooManyTries
}

// Asker is what ChangePassword needs of a console; *Console is one.
type Asker interface {
	Say(format string, args ...any)
	Password(prompt string) (secret.Bytes, time.Duration, error)
}

// ErrMismatch says the two entries of a new password never matched;
// MismatchSentence says so to the person.
var ErrMismatch = errors.New("the new password was not typed the same twice")

// MismatchSentence is what to tell the person after ErrMismatch.
const MismatchSentence = "The new password was not typed the same twice, so your password is not changed. " +
	"Sign in again."

// ChangePassword has the person choose a new password, after saying why
// (a plain sentence): typed twice, masked, asked again while the two
// entries differ or are empty, at most tries times. It hands the password
// to change (which changes it in the directory, say) and returns it once
// change accepted it, with the time spent typing. It returns ErrMismatch
// when the entries never matched, ErrClosed when the input ends, and
// change's error.
func ChangePassword(a Asker, why string, tries int, change func(secret.Bytes) error) (secret.Bytes, time.Duration, error) {
	a.Say("%s", why)
	pw, took, err := newPassword(a, tries)
	if err != nil {
		return nil, took, err
	}
	if err := change(pw); err != nil {
		pw.Wipe()
		return nil, took, err
	}
	a.Say("Your password is changed.")
	return pw, took, nil
}

// newPassword reads a new password twice, as ChangePassword describes.
func newPassword(a Asker, tries int) (secret.Bytes, time.Duration, error) {
	var took time.Duration
	for range tries {
		first, d, err := a.Password("New password: ")
		took += d
		if err != nil {
			return nil, took, err
		}
		if len(first) == 0 {
			continue
		}
		again, d, err := a.Password("New password again: ")
		took += d
		if err != nil {
			first.Wipe()
			return nil, took, err
		}
		same := first.Equal(again)
		again.Wipe()
		if same {
			return first, took, nil
		}
		first.Wipe()
		a.Say("The two passwords are not the same. Type the new password again.")
	}
	return nil, took, ErrMismatch
}
