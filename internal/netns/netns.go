// Package netns connects to services inside a named network namespace (ip
// netns) from a process that runs outside it, such as a test that reaches
// the QEMU lab's domain controller and key server.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dir is where ip-netns(8) keeps the namespaces it names.
const Dir = "/run/netns"

// DialFunc is the signature of net.Dialer's DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Dialer returns a DialFunc that connects from inside the namespace name.
func Dialer(name string) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		return Dial(ctx, name, network, address)
	}
}

// Dial connects to address from inside the network namespace name. A
// socket belongs to the namespace of the thread that creates it, so the
// dial runs on a locked thread that enters the namespace (setns(2)) and
// comes back; the connection then works from any thread.
func Dial(ctx context.Context, name, network, address string) (net.Conn, error) {
	target, err := os.Open(filepath.Join(Dir, name))
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
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
			done <- result{nil, fmt.Errorf("netns %s: %w", name, err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("netns %s: enter: %w", name, err)}
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
