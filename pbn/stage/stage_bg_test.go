package stage

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestRunBackground runs a background step beside the steps after it:
// the step that waits for it starts only once it has ended, the steps
// before that one do not wait, and its error fails the step that waits.
func TestRunBackground(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name     string
		bgErr    error
		after    []string
		wantRan  []string
		wantStep string
	}{
		{"waited for", nil, []string{"network"}, []string{"drivers", "keyfiles", "network", "unlock"}, ""},
		{"waited for at the end", nil, nil, []string{"drivers", "keyfiles", "unlock", "network"}, ""},
		{"fails the step that waits", errBoom, []string{"network"}, []string{"drivers", "keyfiles", "network"}, "network"},
		{"fails at the end", errBoom, nil, []string{"drivers", "keyfiles", "unlock", "network"}, "network"},
		{"waits for no such step", nil, []string{"dhcp"}, []string{"drivers", "keyfiles", "network"}, "unlock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var ran []string
			record := func(name string) {
				mu.Lock()
				defer mu.Unlock()
				ran = append(ran, name)
			}
			// The background step ends only once keyfiles has run, so
			// that keyfiles provably ran beside it.
			keyfilesRan := make(chan struct{})
			release := make(chan struct{})
			steps := []Step{
				{Name: "drivers", Run: func(context.Context) error { record("drivers"); return nil }},
				{Name: "network", Background: true, Run: func(context.Context) error {
					<-keyfilesRan
					<-release
					record("network")
					return tt.bgErr
				}},
				{Name: "keyfiles", Run: func(context.Context) error {
					record("keyfiles")
					close(keyfilesRan)
					return nil
				}},
				{Name: "unlock", After: tt.after, Run: func(context.Context) error {
					record("unlock")
					if tt.after == nil {
						close(release)
					}
					return nil
				}},
			}
			if tt.after != nil {
				close(release)
			}
			tm := NewTiming(time.Now(), &bytes.Buffer{}, "")
			err := Run(context.Background(), tm, steps)

			if !slices.Equal(ran, tt.wantRan) {
				t.Errorf("ran %v, want %v", ran, tt.wantRan)
			}
			var se *StepError
			switch {
			case tt.wantStep == "" && err != nil:
				t.Errorf("Run() = %v, want nil", err)
			case tt.wantStep != "" && (!errors.As(err, &se) || se.Step != tt.wantStep):
				t.Errorf("Run() = %v, want a StepError for %s", err, tt.wantStep)
			}
		})
	}
}

// TestRunBackgroundCancelled fails a step while a background step runs:
// Run cancels it and returns only once it has ended.
func TestRunBackgroundCancelled(t *testing.T) {
	errBoom := errors.New("boom")
	ended := false
	steps := []Step{
		{Name: "network", Background: true, Run: func(ctx context.Context) error {
			<-ctx.Done()
			ended = true
			return ctx.Err()
		}},
		{Name: "keyfiles", Run: func(context.Context) error { return errBoom }},
	}
	err := Run(context.Background(), NewTiming(time.Now(), &bytes.Buffer{}, ""), steps)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "keyfiles" || !errors.Is(err, errBoom) {
		t.Errorf("Run() = %v, want the StepError of keyfiles", err)
	}
	if !ended {
		t.Error("Run returned before the background step ended")
	}
}
