package stage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name     string
		fail     string // the step that fails, if any
		wantRan  []string
		wantStep string
	}{
		{"all", "", []string{"mount", "network", "unlock"}, ""},
		{"stops at the failing step", "network", []string{"mount", "network"}, "network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var console bytes.Buffer
			path := filepath.Join(t.TempDir(), "run", "pbn", "timing")
			tm := NewTiming(time.Now(), &console, path)
			var ran []string
			step := func(name string) Step {
				return Step{Name: name, Run: func(context.Context) error {
					ran = append(ran, name)
					if name == tt.fail {
						return errBoom
					}
					return nil
				}}
			}
			err := Run(context.Background(), tm, []Step{step("mount"), step("network"), step("unlock")})

			if !reflect.DeepEqual(ran, tt.wantRan) {
				t.Errorf("ran %v, want %v", ran, tt.wantRan)
			}
			var se *StepError
			switch {
			case tt.wantStep == "" && err != nil:
				t.Fatalf("Run() = %v, want nil", err)
			case tt.wantStep != "" && (!errors.As(err, &se) || se.Step != tt.wantStep || !errors.Is(err, errBoom)):
				t.Fatalf("Run() = %v, want a StepError for %s wrapping boom", err, tt.wantStep)
			}
			stamped := len(tt.wantRan)
			if tt.fail != "" {
				stamped--
			}
			if got := len(tm.Phases()); got != stamped {
				t.Errorf("%d phases stamped, want %d", got, stamped)
			}
			if got := strings.Count(console.String(), " done in "); got != stamped {
				t.Errorf("console has %d phase lines, want %d:\n%s", got, stamped, console.String())
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "\nmount ") || !strings.Contains(string(b), "\nexcluded ") {
				t.Errorf("timing file lacks the mount phase or the excluded line:\n%s", b)
			}
		})
	}
}

func TestTimingMonotonic(t *testing.T) {
	tm := NewTiming(time.Now(), &bytes.Buffer{}, "")
	for _, name := range []string{"a", "b", "c"} {
		start := tm.Since()
		time.Sleep(time.Millisecond)
		if err := tm.Stamp(name, start); err != nil {
			t.Fatal(err)
		}
	}
	tm.Exclude(time.Second)
	var prev time.Duration
	for _, p := range tm.Phases() {
		if p.Start < prev || p.End <= p.Start {
			t.Errorf("phase %+v starts before the previous end %v or does not advance", p, prev)
		}
		prev = p.End
	}
	if tm.kernel <= 0 {
		t.Errorf("kernel monotonic time at start = %v, want > 0", tm.kernel)
	}
}
