// Command pbn is the PBN agent: the initramfs's /init. As PID 1 it takes
// the machine from the kernel to the real OS: it mounts what an init
// mounts, loads the modules the hardware asks for, brings up the network,
// opens a key file from the EFI system partition with the password typed
// at the console, opens the LUKS2 volume with the key file's FDE secret,
// mounts the root and switches to it. Every phase is stamped on the
// console and in /run/pbn/timing, which the booted OS finds at the same
// path. No failure gives a shell: the agent says what happened in a plain
// sentence and halts, reboots or powers off as pbn.onfail= says.
//
// Run as anything but PID 1 it is the image's modprobe (the agent links
// /sbin/modprobe to itself): it loads the modules the kernel asks for (file
// systems, ciphers) with their dependencies. In u-root's busybox the name
// it was run by is lost, so the process ID tells the two apart; the boot
// flow never runs twice.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pbn-project/pbn/pbn/secret"
)

func main() {
	start := time.Now()
	if filepath.Base(os.Args[0]) == "modprobe" || os.Getpid() != 1 {
		os.Exit(modprobe(os.Args[1:], os.Stderr))
	}
	// PID 1 must never die of a signal: the kernel panics when it exits.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTSTP,
		syscall.SIGPIPE, syscall.SIGUSR1, syscall.SIGUSR2)
	a := newAgent(start)
	if err := secret.DisableCoreDumps(); err != nil {
		a.fail(err)
	}
	a.fail(a.run(context.Background()))
}
