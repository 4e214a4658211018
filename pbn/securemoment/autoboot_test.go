package securemoment

import (
	"errors"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// TestAutobootOff runs the secure moment on a device whose group's policy
// turns autoboot off: the provisioning key file does not open unattended,
// yet the secure moment, cut after its key file is stored, and run again
// without a claim of its own, opens it to add alice's keyslot and finishes.
// It does not prove that the agent never boots such a device unattended
// (pbn/keyserver's TestUnlockAttended refuses the unlock that carries no
// user).
func TestAutobootOff(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	p := store.DefaultPolicy("laptops")
	p.Autoboot = false
	if err := e.admin.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	d := e.newDevice(t)
	provCopy := d.esp.Durable()[provPath]

	f, err := keyfile.Load(d.ESP, provPath)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Open(ctx, d.Network)
	f.Close()
	if !errors.Is(err, keyserver.ErrNotAllowed) {
		t.Fatalf("unattended Open(network) = %v, want keyserver.ErrNotAllowed", err)
	}

	d.afterStep = func(s Step) error {
		if s == StepStore {
			return faultfs.ErrPowerCut
		}
		return nil
	}
	if _, err := d.Run(ctx, user, secret.Bytes(password)); !errors.Is(err, faultfs.ErrPowerCut) {
		t.Fatalf("Run = %v, want the power cut after %s", err, StepStore)
	}
	again := d.after(d.esp.Durable())
	res, err := again.Run(ctx, user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run after the cut = %v", err)
	}
	defer res.KeyFile.Close()
	if want := []Step{StepAuthenticate, StepKeyslot, StepKillProvisioning, StepRevoke,
		StepRemoveProvisioning}; !slices.Equal(res.Did, want) {
		t.Errorf("Run after the cut did %v, want %v", res.Did, want)
	}
	again.checkFinished(t, res, provCopy)
}
