package provisioning

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/pbn-project/pbn/pbn/securemoment"
)

// StepEvent is one step of the secure moment that has ended.
type StepEvent struct {
	Step securemoment.Step
	Took time.Duration
	// Did says whether the step had work to do: a secure moment that
	// finishes one cut short skips what is done.
	Did bool
	// Failed says the step failed; the secure moment stops there.
	Failed bool
}

// The messages and attributes of securemoment.Device.Run's step records.
const (
	stepDone   = "secure moment step"
	stepFailed = "secure moment step failed"
)

// StepReporter returns a handler for the Logger of a securemoment.Device:
// it passes every record on to next, as next's level allows, and calls fn
// for each step of the secure moment as it ends, so that the agent can say
// it on the console.
//
// TODO: securemoment reports its steps only through its log records,
// whose wording this handler depends on; a hook of its own on
// securemoment.Device (it has an unexported one for its tests) would
// replace the handler.
func StepReporter(next slog.Handler, fn func(StepEvent)) slog.Handler {
	return &stepHandler{next: next, fn: fn}
}

type stepHandler struct {
	next  slog.Handler
	fn    func(StepEvent)
	attrs []slog.Attr
}

// Enabled lets every record through: step records are debug records,
// which the handler needs whatever next's level.
func (h *stepHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *stepHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == stepDone || r.Message == stepFailed {
		h.report(r)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// report calls fn for a step record: the step and its time are the
// logger's attributes, whether it did anything the record's.
func (h *stepHandler) report(r slog.Record) {
	e := StepEvent{Failed: r.Message == stepFailed}
	attrs := slices.Clone(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	found := false
	for _, a := range attrs {
		switch v := a.Value.Resolve(); a.Key {
		case "step":
			for _, s := range securemoment.Steps {
				if s.String() == v.String() {
					e.Step, found = s, true
				}
			}
		case "took":
			if v.Kind() == slog.KindDuration {
				e.Took = v.Duration()
			}
		case "did":
			e.Did = v.Kind() == slog.KindBool && v.Bool()
		}
	}
	if found {
		h.fn(e)
	}
}

func (h *stepHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &stepHandler{next: h.next.WithAttrs(attrs), fn: h.fn, attrs: append(slices.Clone(h.attrs), attrs...)}
}

func (h *stepHandler) WithGroup(name string) slog.Handler {
	return &stepHandler{next: h.next.WithGroup(name), fn: h.fn, attrs: h.attrs}
}
