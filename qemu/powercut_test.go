package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
)

// Lines of the provisioning stage's prompt after a cut.
const (
	// finishRE is the prompt of a laptop whose secure moment was cut
	// short once the user's key file was whole.
	finishRE = `Sign in again to finish setting up this computer\.\n`
	// attendedRE is the prompt of a laptop whose group's policy turns
	// autoboot off.
	attendedRE = `This computer may not start unattended\. Sign in to start it\.\n`
)

// TestSecureMomentPowerCut cuts the power of one laptop as soon as each
// step of the secure moment has said it ended, in turn: the first boot's
// secure moment is cut after its first step, the next boot's sign-in
// starts it again and is cut after the second, and so on, so that every
// boot starts from the disk a cut left. After each cut it checks the ESP's
// key files, the LUKS2 keyslots and their tags (the user's keyslot opens
// with her key file's FDE secret), and the key server's owner and
// revocation records; each next boot shows that someone entitled still
// gets in: the countdown to autoboot (the provisioning key file opens with
// the key server's help) until the user's key file is whole, the sign-in
// that goes on with the job afterwards. After the last cut the deployed
// stage's prompt opens the volume for her, and the laptop is as after an
// uncut secure moment.
//
// Each cut after an unseal of her key file (from the cut after its store
// on) counts as a failed authorization at the TPM's next start, as TPM 2.0
// wants for a non-orderly shutdown after a use of a dictionary-attack
// protected object; swtpm's 3 tries (libtpms's default) would lock the
// laptop at the fourth such boot, were it not for the fleet's setting
// that enrolment gives the TPM (tpm.FleetDictionaryAttack).
//
// From the cut after the claim on, the group's policy turns autoboot off:
// the laptop shows no countdown, the key server records no unattended
// unlock, and the secure moment still opens the provisioning key file to
// add her keyslot and kill its own, as the user who claimed the device. At
// the prompt that asks her to finish, another user of the domain is
// refused.
//
// It does not prove that a cut in the middle of a step is safe: the
// console says when a step has ended, nothing inside one (the key file's
// write is not said apart from its read-back, which takes far longer under
// TCG), so the kill lands wherever the next step has got to; the cut after
// "make key file", which writes nothing itself, lands in the key file's
// store, and the test takes either outcome. pbn/securemoment's TestPowerCut
// cuts after every write of the ESP, and pbn/keyfile's tests cut inside
// them.
func TestSecureMomentPowerCut(t *testing.T) {
	e, image := sharedEnterprise(t)
	ctx, cancel := context.WithTimeout(context.Background(),
		time.Duration(len(securemoment.Steps)+1)*secureMomentTimeout)
	defer cancel()
	group := fmt.Sprintf("powercut-%d", time.Now().UnixNano())
	account := "pcut"
	upn, err := e.AddUser(ctx, account, labPassword)
	if err != nil {
		t.Fatalf("AddUser = %v", err)
	}
	if _, err := e.AddUser(ctx, "pcut-eve", labPassword); err != nil {
		t.Fatalf("AddUser = %v", err)
	}
	dev, err := e.Provision(ctx, "pcut", ProvisionOptions{Template: pbnFixture.spec, Group: group})
	if err != nil {
		t.Fatalf("Provision = %v", err)
	}
	m := startProvisioned(t, ctx, e.Lab, image, dev, LaptopOptions{})

	autoboot, owned, on := true, false, true
	for _, step := range securemoment.Steps {
		if owned && step <= securemoment.StepStore {
			// The cut after "make key file" left her key file whole: the
			// secure moment goes on from her keyslot.
			continue
		}
		if !on {
			if err := m.PowerOn(ctx); err != nil {
				t.Fatalf("PowerOn = %v", err)
			}
		}
		cutAfter(t, ctx, m, step, owned, autoboot, account)
		on = false
		owned = checkCut(t, ctx, e, dev, step, upn)

		if step == securemoment.StepClaim {
			p := store.DefaultPolicy(group)
			p.Autoboot, autoboot = false, false
			if err := e.Admin.SetPolicy(ctx, p); err != nil {
				t.Fatalf("SetPolicy = %v", err)
			}
		}
	}

	ctx, cancel = context.WithTimeout(ctx, secureMomentTimeout)
	defer cancel()
	if err := m.PowerOn(ctx); err != nil {
		t.Fatalf("PowerOn = %v", err)
	}
	expect(t, ctx, m, usersRE, `  1\. `+regexp.QuoteMeta(upn)+`\n`, signInRE)
	m.Console.Type("1\n")
	expect(t, ctx, m, `Password for `+regexp.QuoteMeta(upn)+`: `)
	m.Console.Type(labPassword + "\n")
	expect(t, ctx, m, tinyOSRE)
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	checkOwned(t, ctx, e, dev, upn)
	checkUnlocks(t, ctx, e, dev, upn)
}

// cutAfter signs in as account at a laptop's provisioning prompt, which
// asks to finish the job when owned and counts down to autoboot if
// autoboot, and cuts the power when step has ended, within
// secureMomentTimeout. At the sign-in that adds the keyslot another user
// tries first and is refused.
func cutAfter(t *testing.T, ctx context.Context, m *Laptop, step securemoment.Step, owned, autoboot bool,
	account string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, secureMomentTimeout)
	defer cancel()
	switch {
	case owned:
		expect(t, ctx, m, finishRE)
	case autoboot:
		expect(t, ctx, m, countdownRE)
		m.Console.Type("\n")
	default:
		expect(t, ctx, m, attendedRE)
	}
	if step == securemoment.StepKeyslot {
		typeCredentials(t, ctx, m, "pcut-eve", labPassword)
		expect(t, ctx, m, regexp.QuoteMeta("This device already has as many users as allowed."))
	}
	typeCredentials(t, ctx, m, account, labPassword)
	// The prompt again means the sign-in failed.
	if got := expect(t, ctx, m, stepRE(step)+`|`+accountRE); got[0][0] == accountRE {
		t.Fatalf("the sign-in failed before %s ended: %q", step, m.Console.Tail(5))
	}
	if err := m.PowerCut(); err != nil {
		t.Fatal(err)
	}
}

// checkCut checks the disk and the key server after a cut that followed
// step, and returns whether the user's key file is whole on the ESP.
func checkCut(t *testing.T, ctx context.Context, e *Enterprise, dev *Device, step securemoment.Step,
	upn string) bool {
	t.Helper()
	st := readVolumeState(t, ctx, dev.Disk)
	prov, user := len(st.files[keyfile.KindProvisioning]), len(st.files[keyfile.KindUser])
	wantUser := 0
	switch {
	case step == securemoment.StepMakeKeyFile:
		// The kill lands in the store step, before or after the write.
		wantUser = user
		t.Logf("the cut after %s left %d user key files", step, user)
	case step >= securemoment.StepStore:
		wantUser = 1
	}
	wantProv := 1
	if step >= securemoment.StepRemoveProvisioning {
		wantProv = 0
	}
	wantSlots := 1
	if step == securemoment.StepKeyslot {
		wantSlots = 2 // the user's and the provisioning key file's
	}
	if prov != wantProv || user != wantUser || st.slots != wantSlots {
		t.Errorf("after the cut after %s: %d provisioning key files, %d users', %d keyslots; want %d, %d, %d",
			step, prov, user, st.slots, wantProv, wantUser, wantSlots)
	}
	if step >= securemoment.StepKeyslot && user == 1 {
		checkUserSlot(t, ctx, e, dev, st)
	} else if len(st.tags) != 0 {
		t.Errorf("after the cut after %s: keyslot tags %v, want none", step, st.tags)
	}

	info, err := e.Admin.Device(ctx, dev.ID)
	if err != nil {
		t.Fatalf("Device = %v", err)
	}
	claimed := len(info.Owners) == 1 && info.Owners[0].UPN == upn && info.Owners[0].Primary
	if claimed != (step >= securemoment.StepClaim) || len(info.Owners) > 1 {
		t.Errorf("after the cut after %s: owners %+v; want %s as primary from the claim on, no one else",
			step, info.Owners, upn)
	}
	revoked := false
	for _, ev := range events(t, ctx, e, dev, "revoke") {
		revoked = revoked || ev.Detail["binding"] == dev.Binding.String()
	}
	if revoked != (step >= securemoment.StepRevoke) {
		t.Errorf("after the cut after %s: binding revoked %v, want %v", step, revoked, step >= securemoment.StepRevoke)
	}
	return user == 1
}

// checkUserSlot checks that the one tagged keyslot is the user's key
// file's and opens with its FDE secret, which the host reads through the
// key file's recovery protector with the recovery key the server holds.
func checkUserSlot(t *testing.T, ctx context.Context, e *Enterprise, dev *Device, st volumeState) {
	t.Helper()
	id := st.files[keyfile.KindUser][0]
	slot := -1
	for s, tag := range st.tags {
		if tag == id {
			slot = s
		}
	}
	if len(st.tags) != 1 || slot < 0 {
		t.Errorf("keyslot tags %v, want one, the user's key file %s", st.tags, id)
		return
	}
	var f *keyfile.KeyFile
	for _, k := range keyFiles(t, ctx, dev.Disk) {
		if k.Header().ID == id {
			f = k
		}
	}
	escrows, err := e.Admin.Recovery(ctx, dev.ID, "power cut test: the user's keyslot")
	if err != nil {
		t.Fatalf("Recovery = %v", err)
	}
	var rk keyfile.RecoveryKey
	for _, es := range escrows {
		if es.KeyFileID == id {
			if rk, err = keyfile.ParseRecoveryKey(es.Key); err != nil {
				t.Fatalf("ParseRecoveryKey = %v", err)
			}
		}
		es.Key.Wipe()
	}
	if err := f.Open(ctx, keyfile.Recovery(rk)); err != nil {
		t.Fatalf("open the user's key file with the escrowed recovery key: %v", err)
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, cryptsetupPath(t), "open", "--test-passphrase", "--key-file=-",
		fmt.Sprintf("--key-slot=%d", slot), copyLUKSHeader(t, dev.Disk))
	cmd.Stdin = bytes.NewReader(f.Keyring().FDE)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("keyslot %d with the user's FDE secret: %v\n%s", slot, err, out)
	}
}

// checkUnlocks checks the key server's unlocks of the device: two
// unattended ones, at the countdowns before autoboot was turned off, and
// after that only the user's secure moments': to add her keyslot, and to
// look for the provisioning key file's keyslot in the boots after the cuts
// after the keyslot and after its kill; after the revocation the binding
// opens nothing.
func checkUnlocks(t *testing.T, ctx context.Context, e *Enterprise, dev *Device, upn string) {
	t.Helper()
	unattended, attended := 0, 0
	for _, ev := range events(t, ctx, e, dev, "unlock") {
		switch ev.Detail["upn"] {
		case "":
			unattended++
		case upn:
			attended++
		default:
			t.Errorf("an unlock for %s, want %s's only", ev.Detail["upn"], upn)
		}
	}
	if unattended != 2 || attended != 3 {
		t.Errorf("%d unattended unlocks and %d %s's; want 2 (the countdowns with autoboot on) and 3",
			unattended, attended, upn)
	}
}
