// Command benchjson turns the output of go test -bench into the figures of
// make bench: a JSON array of objects with name, value and unit, and
// baseline where a peer was measured beside it in the same run. A
// benchmark reports a peer's figure as the metric "baseline-UNIT" beside
// its own "UNIT". With -table it prints the figures as a table instead.
//
// Usage:
//
//	go test -bench . ./... | benchjson [-table]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
)

// figure is one measured value.
type figure struct {
	Name     string   `json:"name"`
	Value    float64  `json:"value"`
	Unit     string   `json:"unit"`
	Baseline *float64 `json:"baseline,omitempty"`
}

const baselinePrefix = "baseline-"

func main() {
	table := flag.Bool("table", false, "print a table instead of JSON")
	flag.Parse()
	figs, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchjson:", err)
		os.Exit(1)
	}
	if *table {
		printTable(os.Stdout, figs)
		return
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(figs); err != nil {
		fmt.Fprintln(os.Stderr, "benchjson:", err)
		os.Exit(1)
	}
}

// parse reads benchmark output. Figures are named PACKAGE/Benchmark, the
// package by the last element of its import path.
func parse(r io.Reader) ([]figure, error) {
	figs := []figure{}
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = path.Base(strings.TrimSpace(p))
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || len(fields)%2 != 0 {
			continue
		}
		name := strings.TrimPrefix(fields[0], "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // the GOMAXPROCS suffix
			}
		}
		if pkg != "" {
			name = pkg + "/" + name
		}
		figs = append(figs, metrics(name, fields[2:])...)
	}
	return figs, sc.Err()
}

// metrics turns "value unit" pairs into figures, folding each baseline
// into the figure of the same unit.
func metrics(name string, pairs []string) []figure {
	var figs []figure
	baselines := map[string]float64{}
	for i := 0; i+1 < len(pairs); i += 2 {
		v, err := strconv.ParseFloat(pairs[i], 64)
		if err != nil {
			continue
		}
		unit := pairs[i+1]
		if u, ok := strings.CutPrefix(unit, baselinePrefix); ok {
			baselines[u] = v
			continue
		}
		figs = append(figs, figure{Name: name, Value: v, Unit: unit})
	}
	for i := range figs {
		if b, ok := baselines[figs[i].Unit]; ok {
			figs[i].Baseline = &b
		}
	}
	return figs
}

func printTable(w io.Writer, figs []figure) {
	fmt.Fprintf(w, "%-50s %16s  %-16s %16s\n", "benchmark", "value", "unit", "baseline")
	for _, f := range figs {
		base := ""
		if f.Baseline != nil {
			base = strconv.FormatFloat(*f.Baseline, 'g', 6, 64)
		}
		fmt.Fprintf(w, "%-50s %16s  %-16s %16s\n", f.Name, strconv.FormatFloat(f.Value, 'g', 6, 64), f.Unit, base)
	}
}
