// Package stage runs the agent's boot flow as a list of named steps and
// stamps each with the monotonic clock, on the console and in a timing file
// that the booted OS reads.
package stage

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Step is one step of the boot flow.
type Step struct {
	// Name names the step on the console and in the timing file: one word.
	Name string
	// Run does the step's work.
	Run func(ctx context.Context) error
}

// StepError reports the step that failed. [Run] returns it.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Phase is one stamped step, in time since the agent started.
type Phase struct {
	Name       string
	Start, End time.Duration
}

// Timing stamps the phases of a boot. Its methods are safe for concurrent
// use.
type Timing struct {
	console io.Writer
	path    string

	mu       sync.Mutex
	start    time.Time     // the agent's start, with Go's monotonic reading
	kernel   time.Duration // CLOCK_MONOTONIC at the agent's start
	phases   []Phase
	excluded time.Duration
}

// NewTiming starts a Timing at the agent's start. It prints a line per
// phase to console and rewrites the file at path after each one (an empty
// path writes no file).
func NewTiming(start time.Time, console io.Writer, path string) *Timing {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	kernel := time.Duration(ts.Nano()) - time.Since(start)
	return &Timing{console: console, path: path, start: start, kernel: kernel}
}

// Since returns the time since the agent started.
func (t *Timing) Since() time.Duration { return time.Since(t.start) }

// Exclude records time spent waiting for a person (typing a password), so
// that the boot time without it can be read from the file.
func (t *Timing) Exclude(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.excluded += d
}

// Phases returns the phases stamped so far.
func (t *Timing) Phases() []Phase {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Phase(nil), t.phases...)
}

// Stamp records a phase that started at start (a time since the agent
// started) and ends now, prints it and writes the timing file.
func (t *Timing) Stamp(name string, start time.Duration) error {
	end := t.Since()
	t.mu.Lock()
	t.phases = append(t.phases, Phase{Name: name, Start: start, End: end})
	t.mu.Unlock()

	fmt.Fprintf(t.console, "pbn: %s done in %s (at %s)\n", name, ms(end-start), ms(end))
	return t.write()
}

// write rewrites the timing file: a header line, "agent <ms>" with the
// kernel's CLOCK_MONOTONIC at the agent's start, one line "<phase> <start
// ms> <end ms>" per phase, in time since the agent started, and "excluded
// <ms>" for the time spent waiting for a person.
func (t *Timing) write() error {
	if t.path == "" {
		return nil
	}
	t.mu.Lock()
	var b strings.Builder
	fmt.Fprintf(&b, "# pbn boot timing: milliseconds; agent is CLOCK_MONOTONIC at the agent's start,\n")
	fmt.Fprintf(&b, "# phases are <name> <start> <end> since then; excluded is time spent typing\n")
	fmt.Fprintf(&b, "agent %.3f\n", msf(t.kernel))
	for _, p := range t.phases {
		fmt.Fprintf(&b, "%s %.3f %.3f\n", p.Name, msf(p.Start), msf(p.End))
	}
	fmt.Fprintf(&b, "excluded %.3f\n", msf(t.excluded))
	t.mu.Unlock()

	if err := os.MkdirAll(filepath.Dir(t.path), 0o755); err != nil {
		return fmt.Errorf("timing file: %w", err)
	}
	if err := os.WriteFile(t.path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("timing file: %w", err)
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Run runs the steps in order and stamps each that succeeds. It stops at
// the first step that fails and returns a *StepError naming it; a timing
// file that cannot be written does not stop the boot.
func Run(ctx context.Context, t *Timing, steps []Step) error {
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return &StepError{Step: s.Name, Err: err}
		}
		start := t.Since()
		if err := s.Run(ctx); err != nil {
			return &StepError{Step: s.Name, Err: err}
		}
		if err := t.Stamp(s.Name, start); err != nil {
			fmt.Fprintf(t.console, "pbn: %v\n", err)
		}
	}
	return nil
}
