package netup

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// waitRandom waits until the kernel's random number generator is
// initialised. The DHCP library draws its transaction IDs with
// getrandom(2) and GRND_NONBLOCK in a busy loop that never ends before
// then, and early in a boot without a hardware RNG (a VM without
// virtio-rng, TCG) the pool may not be ready yet. A blocking getrandom
// makes the kernel gather jitter entropy (Linux 5.4 and later), which
// takes about a second at most.
func waitRandom(ctx context.Context) error {
	var b [1]byte
	if _, err := unix.Getrandom(b[:], unix.GRND_NONBLOCK); err == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := unix.Getrandom(b[:], 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("random number generator: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("random number generator not ready: %w", ctx.Err())
	}
}
