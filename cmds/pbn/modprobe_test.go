package main

import (
	"bytes"
	"testing"
)

func TestModprobeUsage(t *testing.T) {
	// Run by hand or by mistake, the agent does not start the boot flow.
	var stderr bytes.Buffer
	if code := modprobe([]string{"-q", "--"}, &stderr); code != 2 || stderr.Len() == 0 {
		t.Errorf("modprobe(no module) = %d, %q; want 2 and a usage line", code, stderr.String())
	}
}
