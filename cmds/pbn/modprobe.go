package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/pbn-project/pbn/pbn/kmod"
)

// modprobe loads the modules named in args as the kernel's usermode
// helper calls it ("modprobe -q -- fs-ext4"); flags are ignored. It
// returns the exit code.
func modprobe(args []string, stderr io.Writer) int {
	var names []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			names = append(names, a)
		}
	}
	if len(names) == 0 {
		fmt.Fprintln(stderr, "usage: modprobe [-q] [--] module...; the boot flow runs only as PID 1")
		return 2
	}
	dir, err := kmod.DefaultDir()
	if err != nil {
		fmt.Fprintf(stderr, "modprobe: %v\n", err)
		return 1
	}
	x, err := kmod.Open(dir)
	if err != nil {
		fmt.Fprintf(stderr, "modprobe: %v\n", err)
		return 1
	}
	l := kmod.NewLoader(x, nil)
	code := 0
	for _, n := range names {
		if err := l.Load(n); err != nil {
			fmt.Fprintf(stderr, "modprobe: %v\n", err)
			code = 1
		}
	}
	return code
}
