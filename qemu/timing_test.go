package qemu

import (
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// timingFile is a timing file as pbn/stage writes it.
const timingFile = `# pbn boot timing: milliseconds; agent is CLOCK_MONOTONIC at the agent's start,
# phases are <name> <start> <end> since then; excluded is time spent typing
agent 2030.060
mount 0.000 22.860
drivers 23.338 721.328
network 722.994 880.880
unlock 881.394 2405.924
root 2466.460 3044.568
excluded 1036.792
`

func TestParseTiming(t *testing.T) {
	got := ParseTiming(timingFile)
	want := Timing{
		Phases: map[string][2]float64{
			"mount": {0, 22.86}, "drivers": {23.338, 721.328}, "network": {722.994, 880.88},
			"unlock": {881.394, 2405.924}, "root": {2466.46, 3044.568},
		},
		Excluded: 1036.792,
		Agent:    2030.06,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseTiming() = %+v, want %+v", got, want)
	}
	if got, want := got.SwitchRoot(), 2007.776; math.Abs(got-want) > 1e-9 {
		t.Errorf("SwitchRoot() = %v, want %v", got, want)
	}
}

// FuzzParseTiming checks that ParseTiming takes any text and that what it
// read, written out again in the timing file's format, reads the same.
func FuzzParseTiming(f *testing.F) {
	f.Add(timingFile)
	f.Add("agent x\nexcluded 1 2\nroot 1\n# a b c\n")
	f.Fuzz(func(t *testing.T, s string) {
		first := ParseTiming(s)
		if math.IsNaN(first.Agent) || math.IsNaN(first.Excluded) {
			return
		}
		var b strings.Builder
		fmt.Fprintf(&b, "agent %v\nexcluded %v\n", first.Agent, first.Excluded)
		for _, name := range slices.Sorted(maps.Keys(first.Phases)) {
			p := first.Phases[name]
			if math.IsNaN(p[0]) || math.IsNaN(p[1]) {
				return
			}
			fmt.Fprintf(&b, "%s %v %v\n", name, p[0], p[1])
		}
		if again := ParseTiming(b.String()); !reflect.DeepEqual(again, first) {
			t.Errorf("ParseTiming(%q) = %+v; written out and read again: %+v", s, first, again)
		}
	})
}
