package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
)

// newNetns makes a network namespace with loopback up, named after this
// process, and removes it when the test ends.
func newNetns(t *testing.T) string {
	t.Helper()
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	name := fmt.Sprintf("pbn-netns-test-%d", os.Getpid())
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "delete", name).Run() })
	if out, err := exec.Command(ip, "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	return name
}

// TestDialReachesTheNamespace listens on loopback inside a namespace and
// checks that Dial reaches the listener while this namespace's loopback
// does not have it.
func TestDialReachesTheNamespace(t *testing.T) {
	name := newNetns(t)
	var ln net.Listener
	if err := Do(name, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("Do(listen) = %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("inside\n"))
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dialer(name)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("Dial(%s) = %v", ln.Addr(), err)
	}
	buf := make([]byte, 7)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(buf); err != nil || string(buf) != "inside\n" {
		t.Errorf("read %q, %v; want %q", buf, err, "inside\n")
	}
	c.Close()

	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("a dial from this namespace reached %s, want it only inside %s", ln.Addr(), name)
	}
	if _, err := Dial(ctx, name+"-missing", "tcp", ln.Addr().String()); err == nil {
		t.Error("Dial into a namespace that does not exist = nil, want an error")
	}
}
