package qemu

import (
	"context"
	"regexp"
	"strconv"
	"strings"
)

// Timing is the agent's timing file as the tiny OS shows it: each phase's
// start and end in milliseconds since the agent started, the time spent
// waiting for a person, and the kernel's own time before the agent started
// (package pbn/stage writes it).
type Timing struct {
	Phases   map[string][2]float64
	Excluded float64
	// Agent is the kernel's CLOCK_MONOTONIC at the agent's start, in
	// milliseconds: the kernel's boot up to its first process.
	Agent float64
}

// ParseTiming reads a timing file: "<phase> <start ms> <end ms>" lines,
// "excluded <ms>" and "agent <ms>"; comments and other lines are skipped.
func ParseTiming(s string) Timing {
	t := Timing{Phases: map[string][2]float64{}}
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "excluded":
			t.Excluded, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 2 && f[0] == "agent":
			t.Agent, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 3 && !strings.HasPrefix(f[0], "#"):
			a, err1 := strconv.ParseFloat(f[1], 64)
			b, err2 := strconv.ParseFloat(f[2], 64)
			if err1 == nil && err2 == nil {
				t.Phases[f[0]] = [2]float64{a, b}
			}
		}
	}
	return t
}

// SwitchRoot is the time from the agent's start to switch_root, the end
// of its root phase, with the time spent typing left out.
func (t Timing) SwitchRoot() float64 { return t.Phases["root"][1] - t.Excluded }

// timingRE matches the tiny OS's showing of the timing file.
var timingRE = regexp.MustCompile(regexp.QuoteMeta(TimingBegin) + `\n((?s:.*?))` + regexp.QuoteMeta(TimingEnd))

// Timing waits for the tiny OS to show the agent's timing file and
// returns it.
func (c *Console) Timing(ctx context.Context) (Timing, error) {
	got, err := c.Expect(ctx, timingRE)
	if err != nil {
		return Timing{}, err
	}
	return ParseTiming(got[1]), nil
}
