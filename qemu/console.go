package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
)

// DefaultTailLines is how many of the console's last lines an ExpectError
// carries.
const DefaultTailLines = 30

// Console is a laptop's serial console: everything the guest printed, a
// read position that Expect moves forward, and the line to type into.
type Console struct {
	in io.Writer

	mu      sync.Mutex
	out     []byte        // everything printed, carriage returns dropped
	pos     int           // where the next Expect starts looking
	changed chan struct{} // closed and replaced when out grows or ends
	ended   bool
	copyTo  io.Writer
}

func newConsole(in io.Writer, copyTo io.Writer) *Console {
	return &Console{in: in, copyTo: copyTo, changed: make(chan struct{})}
}

// read copies the guest's output into the console until r ends.
func (c *Console) read(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			b := bytes.ReplaceAll(buf[:n], []byte("\r"), nil)
			c.mu.Lock()
			c.out = append(c.out, b...)
			if c.copyTo != nil {
				c.copyTo.Write(b)
			}
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.ended = true
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
	}
}

// ExpectError is returned by Expect when the pattern did not come: the
// context ended or the guest's console closed (it powered off or died).
type ExpectError struct {
	Pattern string
	Err     error    // the context's error, or io.EOF for a closed console
	Tail    []string // the console's last lines
}

func (e *ExpectError) Error() string {
	return fmt.Sprintf("console: waiting for /%s/: %v; last lines:\n\t%s",
		e.Pattern, e.Err, strings.Join(e.Tail, "\n\t"))
}

func (e *ExpectError) Unwrap() error { return e.Err }

// Expect waits until the output after the read position matches re, moves
// the read position past the match and returns the match and its
// submatches. It returns an *ExpectError when ctx ends or the console
// closes first.
func (c *Console) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		c.mu.Lock()
		rest := c.out[c.pos:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = string(rest[loc[2*i]:loc[2*i+1]])
				}
			}
			c.pos += loc[1]
			c.mu.Unlock()
			return m, nil
		}
		changed, ended := c.changed, c.ended
		c.mu.Unlock()
		if ended {
			return nil, &ExpectError{Pattern: re.String(), Err: io.EOF, Tail: c.Tail(DefaultTailLines)}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, &ExpectError{Pattern: re.String(), Err: ctx.Err(), Tail: c.Tail(DefaultTailLines)}
		}
	}
}

// ExpectString is Expect for a literal string.
func (c *Console) ExpectString(ctx context.Context, s string) error {
	_, err := c.Expect(ctx, regexp.MustCompile(regexp.QuoteMeta(s)))
	return err
}

// Type sends s to the guest as if typed, a carriage return for each "\n".
func (c *Console) Type(s string) error {
	if _, err := io.WriteString(c.in, strings.ReplaceAll(s, "\n", "\r")); err != nil {
		return fmt.Errorf("console: typing: %w", err)
	}
	return nil
}

// Output returns everything the guest printed so far.
func (c *Console) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.out)
}

// Tail returns the last n lines the guest printed.
func (c *Console) Tail(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(c.out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
