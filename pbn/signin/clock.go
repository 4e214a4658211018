package signin

import (
	"context"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Clock reads a TPM's Clock (TPM 2.0 Part 2, 10.11.1 TPMS_CLOCK_INFO):
// time that advances while the TPM is powered, kept in its NV memory
// across power cycles and never set back except by TPM2_Clear. It cannot
// tell how long a device was off, but it is a floor that the pre-boot
// clock, which anyone can set, cannot undercut.
type Clock interface {
	ReadClock(ctx context.Context) (time.Duration, error)
}

// TPMClock returns the Clock of the TPM at tr, read with TPM2_ReadClock
// (Part 3, 29.1), which needs no authorization.
func TPMClock(tr transport.TPM) Clock { return tpmClock{tr} }

type tpmClock struct{ tr transport.TPM }

func (c tpmClock) ReadClock(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	rsp, err := tpm2.ReadClock{}.Execute(c.tr)
	if err != nil {
		return 0, fmt.Errorf("tpm: read clock: %w", err)
	}
	return time.Duration(rsp.CurrentTime.ClockInfo.Clock) * time.Millisecond, nil
}

// tpmClockLag is how far the TPM's Clock may fall behind a value it
// reported before, after a power cut: the TPM writes Clock to its NV memory
// only every so often, at most 2^22 ms apart (NV_CLOCK_UPDATE_INTERVAL of
// the TCG reference implementation), and starts from the last value written.
const tpmClockLag = (1 << 22) * time.Millisecond

// tpmRan returns how long the TPM has run between the readings then and
// now, or false when now is further behind then than a power cut explains
// (the TPM was cleared, or it is another TPM).
func tpmRan(then, now time.Duration) (time.Duration, bool) {
	if now >= then {
		return now - then, true
	}
	return 0, then-now <= tpmClockLag
}
