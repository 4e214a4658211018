package provisioning

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/secret"
)

// MaxAccount is the longest account name the prompt takes, in bytes: a
// userPrincipalName (MS-ADTS 2.2.16) is rarely longer than a hundred.
const MaxAccount = 256

// Terminal is the Prompt on the pre-boot console: lines and passwords go
// through Console, and the countdown and the account are read from In, the
// same terminal's input, one byte at a time, so that neither reads ahead of
// the other. Console must have been opened on In (console.New turns its
// echo and line editing off; Terminal echoes the account itself).
type Terminal struct {
	Console *console.Console
	In      *os.File
}

// Say prints one line.
func (t *Terminal) Say(format string, args ...any) { t.Console.Say(format, args...) }

// Password reads a masked password.
func (t *Terminal) Password(prompt string) (secret.Bytes, time.Duration, error) {
	return t.Console.Password(prompt)
}

// Countdown waits for a key, at most d, calling line once a second with
// the time left. The key is consumed. An input that ends or fails counts
// as nobody there: the countdown runs out.
func (t *Terminal) Countdown(ctx context.Context, d time.Duration, line func(left time.Duration)) (bool, error) {
	end := time.Now().Add(d)
	ended := false
	shown := int64(-1) // the whole seconds last shown
	for left := d; left > 0; left = time.Until(end) {
		if s := seconds(left); s != shown {
			line(left)
			shown = s
		}
		tick := left - time.Duration(seconds(left)-1)*time.Second // to the next whole second
		var err error
		if ended {
			err = sleep(ctx, tick)
		} else {
			var pressed bool
			pressed, ended, err = t.wait(ctx, tick)
			if pressed {
				return true, nil
			}
		}
		if err != nil {
			return false, err
		}
	}
	return false, nil
}

// wait waits up to d for a byte on In and consumes it. It says whether one
// came, or whether the input has ended.
func (t *Terminal) wait(ctx context.Context, d time.Duration) (pressed, ended bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, false, err
	}
	start := time.Now()
	fds := []unix.PollFd{{Fd: int32(t.In.Fd()), Events: unix.POLLIN}}
	// Rounded up: a wait shorter than a millisecond must not poll with
	// no timeout at all, again and again, until the time is up.
	n, err := unix.Poll(fds, int((d+time.Millisecond-1)/time.Millisecond))
	switch {
	case errors.Is(err, unix.EINTR):
		return false, false, nil
	case err != nil:
		return false, false, fmt.Errorf("console: poll: %w", err)
	case n == 0:
		return false, false, nil
	case fds[0].Revents&unix.POLLIN == 0: // hung up: nobody can type
		return false, true, sleep(ctx, d-time.Since(start))
	}
	var b [1]byte
	if _, err := t.In.Read(b[:]); err != nil {
		return false, true, sleep(ctx, d-time.Since(start))
	}
	return true, false, nil
}

// sleep waits for d or ctx's end.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Account shows prompt and reads a line, echoed as typed. Backspace
// removes the last character; Ctrl-U or Ctrl-C clears the line; other
// control characters (C0 and C1) are dropped; Enter ends it. Lines said
// meanwhile go above the prompt (console.Console.Begin). It returns
// console.ErrClosed when the input ends.
func (t *Terminal) Account(prompt string) (string, time.Duration, error) {
	t.Console.Begin(prompt)
	start := time.Now()
	line, err := t.readLine()
	took := time.Since(start)
	t.Console.End()
	return line, took, err
}

func (t *Terminal) readLine() (string, error) {
	var line []byte
	var b [1]byte
	for {
		if _, err := t.In.Read(b[:]); err != nil {
			return "", console.ErrClosed
		}
		switch c := b[0]; {
		case c == '\r' || c == '\n':
			return string(line), nil
		case c == 0x7f || c == '\b':
			line = t.erase(line, 1)
		case c == 0x15 || c == 0x03: // Ctrl-U, Ctrl-C
			line = t.erase(line, len(line))
		case c < 0x20:
		case len(line) < MaxAccount:
			line = append(line, c)
			tail := runeTail(line)
			if !utf8.FullRune(tail) {
				continue
			}
			if r, _ := utf8.DecodeRune(tail); unicode.IsControl(r) { // C1 controls
				line = line[:len(line)-len(tail)]
				continue
			}
			if utf8.Valid(tail) {
				t.Console.Echo(tail)
			}
		}
	}
}

// runeTail returns the last, possibly incomplete, character of b.
func runeTail(b []byte) []byte {
	i := len(b) - 1
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return b[i:]
}

// erase removes n characters from the end of line and from the screen.
func (t *Terminal) erase(line []byte, n int) []byte {
	for ; n > 0 && len(line) > 0; n-- {
		_, size := utf8.DecodeLastRune(line)
		line = line[:len(line)-size]
		t.Console.Backspace()
	}
	return line
}
