package signin

import (
	"fmt"
	"time"
)

// ClockSlack is how far the pre-boot clock may be behind the latest time
// the device has seen, or the TPM's Clock ahead of it, before the clock
// counts as set back: a real-time clock drifts, and a battery change or a
// firmware update resets it.
//
// TODO: a real-time clock kept in local time (as Windows keeps it on a
// dual-boot laptop) is hours off UTC; the sign-in state could learn the
// offset from the server's time at each contact.
const ClockSlack = 15 * time.Minute

// allows decides whether the key file whose last contact was c opens
// offline at now, with the TPM's Clock at tpmNow (nil when it could not be
// read). It returns ErrClockUntrusted or ErrOfflineLimit, wrapped with the
// figures, when it does not.
//
// The pre-boot clock is not trusted: one earlier than the latest time the
// device has seen (a clock set back to 1980) is refused rather than
// believed, and so is one that says less time has passed than the TPM has
// run since. One far ahead (2040) is believed: it can only end the offline
// period early, never extend it.
func (c contact) allows(now time.Time, tpmNow *time.Duration) error {
	if c.Limit == 0 {
		return nil
	}
	if now.Before(c.Floor.Add(-ClockSlack)) {
		return fmt.Errorf("%w: it says %s, the device saw %s", ErrClockUntrusted,
			now.UTC().Format(time.RFC3339), c.Floor.Format(time.RFC3339))
	}
	elapsed := now.Sub(c.ServerTime)
	if c.TPMClock != nil && tpmNow != nil {
		ran, ok := tpmRan(*c.TPMClock, *tpmNow)
		if !ok {
			return fmt.Errorf("%w: the TPM's clock went back from %v to %v", ErrClockUntrusted,
				*c.TPMClock, *tpmNow)
		}
		if ran > elapsed+ClockSlack {
			return fmt.Errorf("%w: %v since the last contact, but the TPM has run for %v",
				ErrClockUntrusted, elapsed.Round(time.Second), ran.Round(time.Second))
		}
		elapsed = max(elapsed, ran)
	}
	if elapsed > c.Limit {
		return fmt.Errorf("%w: last contact %v ago, the limit is %v", ErrOfflineLimit,
			elapsed.Round(time.Second), c.Limit)
	}
	return nil
}
