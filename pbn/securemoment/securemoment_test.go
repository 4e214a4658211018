package securemoment

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pbn-project/pbn/internal/faultfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tpm"
)

var provPath = filepath.Join(keyDir, "provisioning"+keyfile.Ext)

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// opens reports which of the device's paths open its volume with the ESP
// as it is: the user's key file with the password and the TPM, and the
// provisioning key file with the server's help. It returns the user's FDE
// secret when her key file opens.
func (d *testDevice) opens(t *testing.T) (userOpens, provOpens bool, userFDE secret.Bytes) {
	t.Helper()
	ctx := testContext(t)
	paths, err := keyfile.List(d.ESP, keyDir)
	if err != nil {
		t.Fatalf("List = %v", err)
	}
	for _, p := range paths {
		f, err := keyfile.Load(d.ESP, p)
		if err != nil {
			continue // a damaged copy opens nothing
		}
		pw := secret.Bytes(password)
		var factors []keyfile.Factor
		switch f.Header().Kind {
		case keyfile.KindUser:
			factors = []keyfile.Factor{keyfile.Password(pw), tpm.NewFactor(d.TPM, nil, pw)}
		case keyfile.KindProvisioning:
			factors = []keyfile.Factor{d.Network}
		}
		if err := f.Open(ctx, factors...); err != nil {
			if f.Header().Kind == keyfile.KindUser {
				t.Errorf("%s: the user's whole key file does not open: %v", p, err)
			}
			continue
		}
		fde := f.Keyring().FDE.Clone()
		f.Close()
		if _, err := d.Volume.Find(ctx, fde); err != nil {
			continue
		}
		if f.Header().Kind == keyfile.KindUser {
			userOpens, userFDE = true, fde
		} else {
			provOpens = true
		}
	}
	return userOpens, provOpens, userFDE
}

// checkEntitled checks the device after a power cut: someone entitled can
// open it, the volume has no keyslot but theirs, and once retirement has
// killed the provisioning keyslot the provisioning FDE secret opens
// nothing.
func (d *testDevice) checkEntitled(t *testing.T, what string, killed bool) {
	t.Helper()
	userOpens, provOpens, _ := d.opens(t)
	if !userOpens && !provOpens {
		t.Errorf("%s: neither the user's nor the provisioning key file opens the volume", what)
	}
	_, err := d.Volume.Find(testContext(t), d.provFDE)
	provSlot := err == nil
	if killed && provSlot {
		t.Errorf("%s: the provisioning keyslot survived its kill", what)
	}
	want := 0
	for _, alive := range []bool{provSlot, userOpens} {
		if alive {
			want++
		}
	}
	if got := d.keyslots(t); got != want {
		t.Errorf("%s: %d keyslots, want %d (user's %v, provisioning's %v)", what, got, want, userOpens, provSlot)
	}
}

// checkFinished checks a device whose secure moment finished: only the
// user's key file is left, it opens the volume through its tagged
// keyslot, and the provisioning key file, even a copy, opens nothing.
func (d *testDevice) checkFinished(t *testing.T, res *Result, provCopy []byte) {
	t.Helper()
	ctx := testContext(t)
	if paths, _ := keyfile.List(d.ESP, keyDir); !slices.Equal(paths, []string{res.Path}) {
		t.Errorf("key files %v, want only %s", paths, res.Path)
	}
	userOpens, _, fde := d.opens(t)
	if !userOpens {
		t.Fatalf("the user's key file does not open the volume")
	}
	if slot, err := d.Volume.Find(ctx, fde); err != nil || slot != res.Slot {
		t.Errorf("the user's keyslot = %d, %v, want %d", slot, err, res.Slot)
	}
	if tags, err := d.Volume.Tags(ctx); err != nil || tags[res.Slot] != res.KeyFile.Header().ID {
		t.Errorf("Tags = %v, %v, want keyslot %d tagged %s", tags, err, res.Slot, res.KeyFile.Header().ID)
	}
	if _, err := d.Volume.Find(ctx, d.provFDE); !errors.Is(err, disk.ErrWrongKey) {
		t.Errorf("the provisioning FDE secret: Find = %v, want disk.ErrWrongKey", err)
	}
	if n := d.keyslots(t); n != 1 {
		t.Errorf("%d keyslots, want 1", n)
	}
	cp, err := keyfile.Parse(provCopy)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Open(ctx, d.Network); !errors.Is(err, keyserver.ErrBindingRevoked) {
		t.Errorf("a copy of the provisioning key file: Open = %v, want keyserver.ErrBindingRevoked", err)
	}
}

// TestRun runs the secure moment through: alice's key file holds her
// group's key and the enterprise key, opens with her password and the TPM,
// and is the only way into the volume afterwards. It does not prove that
// the TPM binds the key file to the boot chain (pbn/tpm's tests do).
func TestRun(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(t)
	ctx := testContext(t)
	provCopy := d.esp.Durable()[provPath]

	if _, err := d.Run(ctx, user, secret.Bytes("wrong-Passw0rd")); !isStep(err, StepAuthenticate) ||
		ad.ReasonOf(err) != ad.WrongCredentials {
		t.Fatalf("Run with a wrong password = %v, want an authentication error", err)
	}
	d.checkEntitled(t, "after a wrong password", false)

	res, err := d.Run(ctx, user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	defer res.KeyFile.Close()
	if !slices.Equal(res.Did, Steps) {
		t.Errorf("Run did %v, want %v", res.Did, Steps)
	}
	h, ring := res.KeyFile.Header(), res.KeyFile.Keyring()
	if h.Kind != keyfile.KindUser || h.SID != res.Identity.SID || h.UPN != res.Identity.UPN {
		t.Errorf("key file header %+v, want alice's user key file", h)
	}
	var groups []string
	for _, g := range ring.Groups {
		groups = append(groups, g.Name)
	}
	if len(ring.FDE) != FDESize || len(ring.Enterprise) == 0 || !slices.Contains(groups, "pbn-staff") {
		t.Errorf("keyring has %d FDE bytes, %d enterprise key bytes, groups %v; want %d, some, pbn-staff among them",
			len(ring.FDE), len(ring.Enterprise), groups, FDESize)
	}
	labels := []string{}
	for _, p := range res.KeyFile.Protectors() {
		labels = append(labels, p.Label)
	}
	if !slices.Equal(labels, []string{LabelPasswordTPM, LabelRecovery}) {
		t.Errorf("protectors %v, want %v", labels, []string{LabelPasswordTPM, LabelRecovery})
	}
	d.checkFinished(t, res, provCopy)

	// Another user of the domain gets nothing from the device now: there
	// is no provisioning key file left to claim it with.
	if _, err := d.Run(ctx, other, secret.Bytes(password)); !errors.Is(err, ErrNotProvisioned) {
		t.Errorf("Run(%s) after %s's secure moment = %v, want ErrNotProvisioned", other, user, err)
	}
	d.checkFinished(t, res, provCopy)

	// Nothing is left to do.
	again, err := d.Run(ctx, user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run again = %v", err)
	}
	defer again.KeyFile.Close()
	if want := []Step{StepAuthenticate}; !slices.Equal(again.Did, want) {
		t.Errorf("Run again did %v, want %v", again.Did, want)
	}
}

func isStep(err error, s Step) bool {
	var se *StepError
	return errors.As(err, &se) && se.Step == s
}

// TestPowerCut cuts the power after every step of the secure moment and
// after every operation on the ESP, then checks that someone entitled
// still opens the volume and no one else, and that the secure moment, run
// again, finishes.
//
// The ESP is the faultfs model, and the secure moment is run again from
// every state it may be left in. This does not prove that cryptsetup's own writes of
// the LUKS2 header survive a cut half way (it keeps two copies of the
// header for that), nor that the server's records survive one, nor a cut
// in the middle of a run again.
func TestPowerCut(t *testing.T) {
	e := newEnv(t)

	type cut struct {
		name  string
		step  Step // cut after this step, or
		fsOp  int  // after this many ESP operations
		kills bool // the provisioning keyslot is dead once the cut is past its kill
	}
	var cuts []cut
	for _, s := range Steps[:len(Steps)-1] {
		cuts = append(cuts, cut{name: "after " + s.String(), step: s, fsOp: -1, kills: s >= StepKillProvisioning})
	}
	dry := e.newDevice(t)
	var killedAt int
	dry.afterStep = func(s Step) error {
		if s == StepKillProvisioning {
			killedAt = dry.esp.Ops
		}
		return nil
	}
	res, err := dry.Run(testContext(t), user, secret.Bytes(password))
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	res.KeyFile.Close()
	for n := 0; n < dry.esp.Ops-1; n++ { // a cut after the last operation is no cut
		cuts = append(cuts, cut{name: "after " + dry.esp.Trace[n], fsOp: n + 1, kills: n+1 > killedAt})
	}

	for _, c := range cuts {
		t.Run(c.name, func(t *testing.T) {
			// The device after the cut, and every state its ESP may be in.
			cutDevice := func() (*testDevice, []map[string][]byte, []byte) {
				d := e.newDevice(t)
				provCopy := d.esp.Durable()[provPath]
				d.esp.CutAt = c.fsOp
				d.afterStep = func(s Step) error {
					if s == c.step {
						return faultfs.ErrPowerCut
					}
					return nil
				}
				if _, err := d.Run(testContext(t), user, secret.Bytes(password)); !errors.Is(err, faultfs.ErrPowerCut) {
					t.Fatalf("Run = %v, want the power cut", err)
				}
				return d, d.esp.Outcomes(), provCopy
			}
			d, outcomes, provCopy := cutDevice()
			for i := range outcomes {
				if i > 0 {
					// The run again changes the volume and the server:
					// each outcome gets a device of its own.
					d, outcomes, provCopy = cutDevice()
				}
				what := fmt.Sprintf("outcome %d of %d", i+1, len(outcomes))
				again := d.after(outcomes[i])
				again.checkEntitled(t, what, c.kills)
				res, err := again.Run(testContext(t), user, secret.Bytes(password))
				if err != nil {
					t.Fatalf("%s: Run after the cut = %v", what, err)
				}
				again.checkFinished(t, res, provCopy)
				res.KeyFile.Close()
			}
		})
	}
}

// TestRefused checks that a claim the server refuses (the device was
// reported lost) leaves the device as it was, and that the person is told
// why. It does not prove what the agent does next (pbn/keyserver's tests
// prove that a lost device's provisioning key file no longer opens).
func TestRefused(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(t)
	ctx := testContext(t)
	before := d.esp.Ops
	f, err := keyfile.Load(d.ESP, provPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetDeviceState(ctx, f.Header().DeviceID, store.DeviceLost, "stolen"); err != nil {
		t.Fatal(err)
	}

	_, err = d.Run(ctx, user, secret.Bytes(password))
	if !isStep(err, StepClaim) || !errors.Is(err, keyserver.ErrDeviceLost) {
		t.Fatalf("Run on a lost device = %v, want the claim refused with ErrDeviceLost", err)
	}
	if got, want := Sentence(err), keyserver.Sentence(keyserver.ErrDeviceLost); got != want {
		t.Errorf("Sentence = %q, want %q", got, want)
	}
	if d.esp.Ops != before || d.keyslots(t) != 1 {
		t.Errorf("a refused claim changed the device: %v, %d keyslots", d.esp.Trace[before:], d.keyslots(t))
	}
}

func TestSentence(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&StepError{Step: StepAuthenticate, Err: &ad.Error{Reason: ad.AccountLocked}},
			(&ad.Error{Reason: ad.AccountLocked}).Sentence()},
		{&StepError{Step: StepAuthenticate, Err: ErrNotProvisioned},
			"This device is not prepared for a first sign-in. Contact the help desk."},
		{&StepError{Step: StepMakeKeyFile, Err: tpm.ErrPCRMismatch}, tpm.Prompt(tpm.ErrPCRMismatch)},
		{&StepError{Step: StepStore, Err: errors.New("disk full")},
			"Your device could not be set up for you. It starts as before; try again, or contact the help desk."},
		{&StepError{Step: StepKillProvisioning, Err: errors.New("cryptsetup failed")},
			"Your device was set up for you, but the set-up did not finish. " +
				"Sign in again at the next start to finish it."},
	}
	for _, tt := range tests {
		if got := Sentence(tt.err); got != tt.want {
			t.Errorf("Sentence(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
