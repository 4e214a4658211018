// Package stage runs the agent's boot flow as a list of named steps and
// stamps each with the monotonic clock, on the console and in a timing file
// that the booted OS reads.
package stage

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	// Background runs the step beside the steps after it: they start at
	// once, and its phase is stamped when its Run returns.
	Background bool
	// After names background steps before this one that must have ended
	// before its Run starts.
	After []string
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
	fmt.Fprintf(t.console, "pbn: %s done in %s (at %s)\n", name, ms(end-start), ms(end))
	t.mu.Unlock()

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

// Run runs the steps in order and stamps each that succeeds. A background
// step runs beside the steps after it until a step waits for it (see
// [Step.After]) or the last step has run, and Run returns only once every
// background step has ended. Run stops at the first step that fails, or
// at the first that waits for a background step that failed; it then
// cancels the background steps still running, waits for them and returns
// a *StepError naming the step that failed. A timing file that cannot be
// written does not stop the boot.
func Run(ctx context.Context, t *Timing, steps []Step) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bg := map[string]chan error{}
	all := func() Step { return Step{After: slices.Sorted(maps.Keys(bg))} }
	for _, s := range steps {
		err := waitFor(bg, s)
		if err == nil && ctx.Err() != nil {
			err = &StepError{Step: s.Name, Err: ctx.Err()}
		}
		if err == nil && s.Background {
			bg[s.Name] = start(ctx, t, s)
			continue
		}
		if err == nil {
			err = run(ctx, t, s)
		}
		if err != nil {
			cancel()
			waitFor(bg, all()) // their errors are the cancellation's
			return err
		}
	}
	return waitFor(bg, all())
}

// run runs a step and stamps it.
func run(ctx context.Context, t *Timing, s Step) error {
	start := t.Since()
	if err := s.Run(ctx); err != nil {
		return &StepError{Step: s.Name, Err: err}
	}
	if err := t.Stamp(s.Name, start); err != nil {
		fmt.Fprintf(t.console, "pbn: %v\n", err)
	}
	return nil
}

// start runs a background step and returns the channel that its outcome
// comes on.
func start(ctx context.Context, t *Timing, s Step) chan error {
	done := make(chan error, 1)
	go func() { done <- run(ctx, t, s) }()
	return done
}

// waitFor waits for the background steps that s names in After and
// forgets them. It returns the error of the first of them that failed, or
// an error for a name that is no background step started before s.
func waitFor(bg map[string]chan error, s Step) error {
	var first error
	for _, name := range s.After {
		done, ok := bg[name]
		var err error
		if ok {
			delete(bg, name)
			err = <-done
		} else {
			err = &StepError{Step: s.Name, Err: fmt.Errorf("waits for %q, no background step before it", name)}
		}
		if first == nil {
			first = err
		}
	}
	return first
}
