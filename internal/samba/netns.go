package samba

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// dialInNetns connects to address from inside the named network namespace.
// A socket belongs to the namespace of the thread that creates it, so the
// dial runs on a locked thread that enters the namespace and comes back.
func dialInNetns(ctx context.Context, netns, network, address string) (net.Conn, error) {
	target, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return nil, fmt.Errorf("samba: netns %s: %w", netns, err)
	}
	defer target.Close()

	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("samba: enter netns %s: %w", netns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		// A thread that cannot go back stays locked: Go ends it with the
		// goroutine, and no other goroutine runs in the wrong namespace.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}
