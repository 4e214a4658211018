package main

import (
	"context"
	"testing"
	"time"

	"github.com/pbn-project/pbn/pbn/cmdline"
)

// TestDeviceContext checks that the wait for the key files' disk does not
// end while the coldplug still loads drivers, and ends the device timeout
// after it has ended.
func TestDeviceContext(t *testing.T) {
	const timeout = 50 * time.Millisecond
	a := &agent{cmdline: &cmdline.Cmdline{PBN: cmdline.Options{DeviceTimeout: timeout}},
		coldplug: make(chan struct{})}
	ctx, cancel := a.deviceContext(context.Background())
	defer cancel()

	select {
	case <-ctx.Done():
		t.Fatal("the wait ended while the coldplug ran")
	case <-time.After(4 * timeout):
	}
	ended := time.Now()
	close(a.coldplug)
	select {
	case <-ctx.Done():
		if took := time.Since(ended); took < timeout {
			t.Errorf("the wait ended %v after the coldplug, want at least %v", took, timeout)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not end after the coldplug and the device timeout")
	}
}
