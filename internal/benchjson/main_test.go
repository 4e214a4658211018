package main

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	in := `goos: linux
pkg: github.com/pbn-project/pbn/pbn/tang
BenchmarkExchange/p521-2   	     100	   3000000 ns/op	       850.0 exchanges/s	       300.0 baseline-exchanges/s
BenchmarkParse-2   	  500000	      2000 ns/op
PASS
`
	figs, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(figs) != 3 {
		t.Fatalf("parse = %d figures, want 3: %+v", len(figs), figs)
	}
	ex := figs[1]
	if ex.Name != "tang/Exchange/p521" || ex.Unit != "exchanges/s" || ex.Value != 850 || ex.Baseline == nil || *ex.Baseline != 300 {
		t.Errorf("exchange figure = %+v, want tang/Exchange/p521 850 exchanges/s, baseline 300", ex)
	}
	if figs[0].Baseline != nil || figs[2].Name != "tang/Parse" || figs[2].Unit != "ns/op" {
		t.Errorf("figures = %+v", figs)
	}
}
