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

// Dialer returns a dial function, as net.Dialer's DialContext, that
// connects from inside the namespace name.
func Dialer(name string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		return Dial(ctx, name, network, address)
	}
}

// Dial connects to address from inside the network namespace name; the
// connection then works from any thread.
func Dial(ctx context.Context, name, network, address string) (net.Conn, error) {
	var c net.Conn
	err := Do(name, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Do runs f inside the network namespace name and returns its error: the
// sockets f makes belong to that namespace. A socket belongs to the
// namespace of the thread that creates it, so f runs on a locked thread
// that enters the namespace (setns(2)) and comes back after f.
func Do(name string, f func() error) error {
	target, err := os.Open(filepath.Join(Dir, name))
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer target.Close()

	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns %s: enter: %w", name, err)
			return
		}
		err = f()
		// A thread that cannot go back stays locked: Go ends it with the
		// goroutine, and no other goroutine runs in the wrong namespace.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}
