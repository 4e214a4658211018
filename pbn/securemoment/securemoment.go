// Package securemoment makes a device its owner's: the secure moment of
// PBN's two-stage model, when a user signs in at the pre-boot prompt of a
// device that holds only a provisioning key file.
//
// # Steps
//
// Device.Run takes the user through these steps, in this order:
//
//  1. StepAuthenticate: the user's account and password are checked
//     against Active Directory over LDAP (package pbn/ad).
//  2. StepClaim: the key server verifies the user again on its own,
//     records them as an owner of the device, keeps the new key file's
//     recovery key in escrow and returns the group keys and the enterprise
//     key (package pbn/keyserver).
//  3. StepMakeKeyFile: the user's key file is made, with a new FDE secret,
//     the group keys and the enterprise key, a protector of the TPM and the
//     password together (package pbn/tpm) and a recovery protector.
//  4. StepStore: it is stored crash-safely on the ESP (keyfile.Replace)
//     and read back and opened.
//  5. StepKeyslot: a LUKS2 keyslot is added for its FDE secret, authorized
//     by the provisioning key file's, and tagged with the key file's ID in
//     a LUKS2 token (disk.TokenType).
//  6. StepKillProvisioning: the provisioning key file's keyslot is killed,
//     so that no copy of the file opens the disk any more;
//     StepRevoke: its binding is revoked on the key server, so that it no
//     longer opens at all; StepRemoveProvisioning: it is removed from the
//     ESP.
//
// The password's Argon2id derivation for step 3, the longest piece of
// work, starts with step 1 and runs beside the two network steps; step 4
// opens the file read back with that same derivation rather than a second
// one, and with the TPM.
//
// # Power cuts
//
// The state of the secure moment is recorded where its steps leave it, and
// nowhere else: the key files on the ESP, the keyslots and tokens of the
// LUKS2 volume, and the binding on the server. Each step first looks
// whether its work is done, so Run, started again after a power cut at any
// point, finishes the job. Until the user's key file is whole and its
// keyslot added, the provisioning key file still opens the disk; from then
// on the user's does. The provisioning key file's keyslot is killed before
// its binding is revoked and the binding revoked before the file is
// removed, so that a file that is still on the ESP is either still needed
// or can no longer open anything, and its ID, which the revocation needs,
// stays at hand until the revocation is done.
//
// # Devices in use
//
// A device that is in use already, with a LUKS2 volume that its
// passphrase opens, has no provisioning key file: Device.Existing names
// the key it starts from instead (pbnctl install sets that up). The same
// steps then make the user's key file, and the existing key authorizes
// the user's keyslot and keeps its own; the steps that retire a
// provisioning key file find nothing to do. The passphrase goes on
// opening the volume until an administrator removes it.
package securemoment

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"regexp"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// DefaultStepTimeout bounds each step that talks to the network (the
// directory, the key server): a few round trips on a LAN, with room for a
// loaded server.
const DefaultStepTimeout = 15 * time.Second

// FDESize is the size of the FDE secret of a user's key file: 64 random
// bytes, as long as the LUKS2 volume key of AES-256-XTS.
const FDESize = 64

// Labels of the protectors of the user's key file.
const (
	LabelPasswordTPM = tpm.ResealLabel
	LabelRecovery    = "recovery key"
)

// Volume is the device's LUKS2 volume as the secure moment changes it;
// disk.Keyslots is the real one. Add, Find and Kill return an error
// matching disk.ErrWrongKey when no keyslot opens with the key given.
type Volume interface {
	// Add adds a keyslot for key, authorized by existing, and returns it.
	Add(ctx context.Context, existing, key secret.Bytes) (int, error)
	// Find returns the keyslot that key opens.
	Find(ctx context.Context, key secret.Bytes) (int, error)
	// Kill wipes a keyslot.
	Kill(ctx context.Context, slot int) error
	// Tag records that a keyslot belongs to a key file; Tags reads back
	// every such record.
	Tag(ctx context.Context, slot int, id keyfile.ID) error
	Tags(ctx context.Context) (map[int]keyfile.ID, error)
}

// Directory authenticates a user; *ad.Client is one.
type Directory interface {
	Login(ctx context.Context, account string, password secret.Bytes) (*ad.Identity, error)
}

// Server is the enterprise key server as the device sees it;
// *keyserver.Client is one.
type Server interface {
	Claim(ctx context.Context, req keyserver.ClaimRequest) (*keyserver.Claim, error)
	Revoke(ctx context.Context, binding keyfile.ID) error
}

// Device is what the secure moment works on and talks to.
type Device struct {
	// ESP is the file system of the EFI system partition and KeyDir the
	// directory on it that holds the key files (disk.KeyDir under its
	// mount point).
	ESP    keyfile.FS
	KeyDir string
	// Volume is the LUKS2 volume the key files open.
	Volume Volume
	// TPM seals the user's key file.
	TPM *tpm.TPM
	// Directory checks the user's credentials; Server is the key server.
	Directory Directory
	Server    Server
	// Network is the provisioning key file's network factor
	// (tang.Factor in PBN mode), which opens it with the server's help.
	Network keyfile.Factor
	// Existing, when set, is where a device without a provisioning key
	// file starts: a key that opens the volume already. Network is then
	// not used.
	Existing *Existing
	// Argon2 are the parameters of the user's password factor; zero
	// calibrates them on this device to keyfile.DefaultArgon2Target.
	Argon2 keyfile.Argon2Params
	// StepTimeout bounds each network step; zero means
	// DefaultStepTimeout.
	StepTimeout time.Duration
	// Logger receives a record of each step; nil discards them.
	Logger *slog.Logger

	// afterStep, when set, runs after each step; an error stops Run
	// there. Tests cut the power with it.
	afterStep func(Step) error
}

// Existing is a device's start without a provisioning key file: a device
// in use, enrolled with the key server (enroll.EnrollDevice) but holding
// no key file yet.
type Existing struct {
	// Key opens the volume already, such as its passphrase; it
	// authorizes the user's keyslot, and its own keyslot stays.
	Key secret.Bytes
	// DeviceID and Server are the device's enrolment, which the user's key
	// file records in its header.
	DeviceID keyfile.ID
	Server   keyfile.Server
}

// Result is what a finished secure moment leaves.
type Result struct {
	// Identity is the user as the directory knows them.
	Identity *ad.Identity
	// KeyFile is the user's key file, open: the caller hands its keys on
	// and closes it. Path is where it is stored.
	KeyFile *keyfile.KeyFile
	Path    string
	// Slot is the LUKS2 keyslot of its FDE secret.
	Slot int
	// Did lists the steps that had work to do in this run; a run that
	// finishes one cut short does only what was left.
	Did []Step
}

// ErrNotProvisioned means the device has neither a provisioning key file
// nor a whole key file of the user, nor Device.Existing: there is nothing
// the secure moment can start from.
var ErrNotProvisioned = errors.New("no provisioning key file on the device")

// run is the state of one Run.
type run struct {
	d        *Device
	account  string
	password secret.Bytes
	pw       *keyfile.PasswordFactor // remembers its derivations until Run returns
	res      Result

	prov     *keyfile.KeyFile // the provisioning key file, nil once removed
	provPath string
	provFDE  secret.Bytes // once opened

	// The claim's answer and the new key file's recovery key, until the
	// key file is made.
	claimed  *keyserver.Claim
	newID    keyfile.ID
	recovery keyfile.RecoveryKey
}

// Run carries out the secure moment for the user who typed account and
// password, or finishes one that a power cut interrupted, and returns the
// user's open key file. The password is not wiped; the caller does that.
//
// Every error is a *StepError that names the step that failed; its
// Sentence is for the person at the prompt. A step that fails leaves the
// device as the steps before it left it: it still opens with the
// provisioning key file or the user's, and Run can be started again.
func (d *Device) Run(ctx context.Context, account string, password secret.Bytes) (*Result, error) {
	r := &run{d: d, account: account, password: password, pw: keyfile.Remembering(password, d.Argon2)}
	defer func() { r.provFDE.Wipe() }() // provFDE is set later
	ahead := r.deriveAhead()
	defer func() {
		<-ahead
		r.pw.Wipe()
	}()
	if err := r.steps(ctx); err != nil {
		if r.res.KeyFile != nil {
			r.res.KeyFile.Close()
		}
		return nil, err
	}
	return &r.res, nil
}

// deriveAhead derives the new key file's password secret (calibrating
// Argon2id first when Device.Argon2 is zero) while the directory and the
// key server check the user, and closes the channel it returns when done.
// The derivation is the longest step of the secure moment and needs only
// the password typed; made ahead, it costs the user nothing when the
// network steps take as long, and at worst what it would have cost in
// StepMakeKeyFile. A run that fails waits for it before it returns.
//
// TODO: a password the directory refuses is told only once the derivation
// ahead ends (a quarter second on a laptop, seconds under TCG); a factor
// that owned a copy of the password could finish and wipe it on its own
// after Run returned.
func (r *run) deriveAhead() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.pw.DeriveEnrollment()
	}()
	return done
}

func (r *run) steps(ctx context.Context) error {
	defer func() {
		if r.claimed != nil {
			r.claimed.Wipe()
		}
		r.recovery.Wipe()
	}()
	if err := r.do(ctx, StepAuthenticate, r.authenticate); err != nil {
		return err
	}
	if err := r.survey(ctx); err != nil {
		return &StepError{Step: StepAuthenticate, Err: err}
	}
	steps := []struct {
		s  Step
		fn func(context.Context) (bool, error)
	}{
		{StepClaim, r.claim},
		{StepMakeKeyFile, r.makeKeyFile},
		{StepStore, r.store},
		{StepKeyslot, r.keyslot},
		{StepKillProvisioning, r.killProvisioning},
		{StepRevoke, r.revoke},
		{StepRemoveProvisioning, r.removeProvisioning},
	}
	if r.res.KeyFile != nil {
		// The user's key file is whole: claimed, made and stored before.
		steps = steps[3:]
	}
	for _, st := range steps {
		if err := r.do(ctx, st.s, st.fn); err != nil {
			return err
		}
	}
	return nil
}

// do runs one step, records whether it had work to do, and logs it.
func (r *run) do(ctx context.Context, s Step, fn func(context.Context) (bool, error)) error {
	start := time.Now()
	did, err := fn(ctx)
	log := r.d.logger().With("step", s.String(), "took", time.Since(start))
	if err != nil {
		log.Warn("secure moment step failed", "err", err)
		return &StepError{Step: s, Err: err}
	}
	if did {
		r.res.Did = append(r.res.Did, s)
	}
	log.Debug("secure moment step", "did", did)
	if r.d.afterStep != nil {
		if err := r.d.afterStep(s); err != nil {
			return &StepError{Step: s, Err: err}
		}
	}
	return nil
}

func (r *run) authenticate(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.d.stepTimeout())
	defer cancel()
	id, err := r.d.Directory.Login(ctx, r.account, r.password)
	if err != nil {
		return false, err
	}
	if !sidPattern.MatchString(id.SID) {
		return false, fmt.Errorf("directory gave the account an objectSid %q that is not a domain SID", id.SID)
	}
	r.res.Identity = id
	return true, nil
}

// sidPattern is a SID's string form (MS-DTYP 2.4.2.1); it names the user's
// key file, so it must be safe as a file name.
var sidPattern = regexp.MustCompile(`^S-1(-[0-9]{1,10}){2,15}$`)

// survey finds the provisioning key file and, if it is whole and opens
// with the user's password and this TPM, the user's.
func (r *run) survey(ctx context.Context) error {
	paths, err := keyfile.List(r.d.ESP, r.d.KeyDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("list key files: %w", err)
	}
	for _, p := range paths {
		f, err := keyfile.Load(r.d.ESP, p)
		if err != nil || f.Header().Kind != keyfile.KindProvisioning {
			// TODO: tell the administrator (through the server's audit
			// trail) about damaged key files; the secure moment neither
			// needs nor removes them.
			continue
		}
		if r.prov != nil {
			return fmt.Errorf("two provisioning key files: %s and %s", r.provPath, p)
		}
		if r.d.Existing != nil {
			return fmt.Errorf("a provisioning key file, %s, on a device that starts from an existing key", p)
		}
		r.prov, r.provPath = f, p
	}
	r.res.Path = filepath.Join(r.d.KeyDir, r.res.Identity.SID+keyfile.Ext)
	return r.openUser(ctx)
}

// openUser opens the user's key file if it is whole. One that is missing
// or damaged (cut short while it was written) is made anew; one that is
// whole but does not open stops the secure moment.
func (r *run) openUser(ctx context.Context) error {
	f, err := keyfile.Load(r.d.ESP, r.res.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, keyfile.ErrDamaged), errors.Is(err, keyfile.ErrFormat):
		if r.prov == nil && r.d.Existing == nil {
			return ErrNotProvisioned
		}
		return nil
	case err != nil:
		return err
	}
	h := f.Header()
	if h.Kind != keyfile.KindUser || h.SID != r.res.Identity.SID {
		return fmt.Errorf("%s is not %s's key file", r.res.Path, r.res.Identity.SID)
	}
	// TODO: a whole key file that does not open with the password the
	// directory just accepted (the password was changed in AD between a
	// power cut and this run) stops here; it should be opened with the
	// recovery key the server holds in escrow and re-protected.
	if err := f.Open(ctx, r.factors(nil)...); err != nil {
		return fmt.Errorf("open %s: %w", r.res.Path, err)
	}
	r.res.KeyFile = f
	return nil
}

func (r *run) claim(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.d.stepTimeout())
	defer cancel()
	r.newID, r.recovery = keyfile.NewID(), keyfile.NewRecoveryKey()
	digits := r.recovery.Digits()
	defer digits.Wipe()
	var binding keyfile.ID // zero: no provisioning key file to retire
	if r.prov != nil {
		binding = r.prov.Header().ID
	}
	c, err := r.d.Server.Claim(ctx, keyserver.ClaimRequest{Binding: binding, Account: r.account,
		Password: r.password, KeyFile: r.newID, RecoveryKey: digits})
	if err != nil {
		return false, err
	}
	r.claimed = c
	if c.SID != r.res.Identity.SID {
		return false, fmt.Errorf("the key server's account %s is not the directory's %s", c.SID, r.res.Identity.SID)
	}
	return true, nil
}

func (r *run) makeKeyFile(ctx context.Context) (bool, error) {
	c := r.claimed
	deviceID, server := r.enrolment()
	ring := &keyfile.Keyring{FDE: secret.Random(FDESize), Enterprise: c.Enterprise.Clone()}
	for _, g := range c.Groups {
		ring.Groups = append(ring.Groups, keyfile.GroupKey{SID: g.SID, Name: g.Name, Key: g.Key.Clone()})
	}
	f, err := keyfile.New(keyfile.Header{ID: r.newID, Kind: keyfile.KindUser, DeviceID: deviceID,
		UPN: c.UPN, SID: c.SID, Server: server, OfflineLimit: c.Policy.OfflineLimit}, ring)
	if err != nil {
		ring.Wipe()
		return false, err
	}
	pcrs := tpm.PCRSelection(c.Policy.PCRs)
	if _, err := f.AddProtector(ctx, LabelPasswordTPM, r.factors(pcrs)...); err != nil {
		f.Close()
		return false, err
	}
	if _, err := f.AddProtector(ctx, LabelRecovery, keyfile.Recovery(r.recovery)); err != nil {
		f.Close()
		return false, err
	}
	r.res.KeyFile = f
	return true, nil
}

// store writes the new key file and checks that what is on the ESP opens
// with the password and the TPM to the same FDE secret. The check parses
// the bytes read back (their checksum and every field), has the TPM unseal
// the sealed secret and authenticates the protector and the keyring; the
// password's secret is the one derived for the key file's making, which
// the run's password factor remembers under the parameters it was made
// with, so that a file whose stored parameters differ derives afresh and
// does not open.
func (r *run) store(ctx context.Context) (bool, error) {
	if err := keyfile.Replace(r.d.ESP, r.res.Path, r.res.KeyFile); err != nil {
		return false, err
	}
	back, err := keyfile.Load(r.d.ESP, r.res.Path)
	if err != nil {
		return false, fmt.Errorf("read back %s: %w", r.res.Path, err)
	}
	defer back.Close()
	if err := back.Open(ctx, r.factors(nil)...); err != nil {
		return false, fmt.Errorf("open %s as stored: %w", r.res.Path, err)
	}
	if !back.Keyring().FDE.Equal(r.res.KeyFile.Keyring().FDE) {
		return false, fmt.Errorf("%s as stored holds another FDE secret", r.res.Path)
	}
	return true, nil
}

// keyslot adds and tags the user's keyslot, or finds it.
func (r *run) keyslot(ctx context.Context) (bool, error) {
	fde := r.res.KeyFile.Keyring().FDE
	did := false
	slot, err := r.d.Volume.Find(ctx, fde)
	if errors.Is(err, disk.ErrWrongKey) {
		var existing secret.Bytes
		if existing, err = r.authorizing(ctx); err != nil {
			return false, err
		}
		slot, err = r.d.Volume.Add(ctx, existing, fde)
		did = true
	}
	if err != nil {
		return false, err
	}
	r.res.Slot = slot
	tags, err := r.d.Volume.Tags(ctx)
	if err != nil {
		return false, err
	}
	switch id, ok := tags[slot]; {
	case ok && id == r.res.KeyFile.Header().ID:
		return did, nil
	case ok:
		return false, fmt.Errorf("keyslot %d is tagged as key file %s's", slot, id)
	}
	return true, r.d.Volume.Tag(ctx, slot, r.res.KeyFile.Header().ID)
}

// killProvisioning kills the provisioning key file's keyslot. A revoked
// binding means it was killed before.
func (r *run) killProvisioning(ctx context.Context) (bool, error) {
	if r.prov == nil {
		return false, nil
	}
	fde, err := r.provisioningFDE(ctx)
	if errors.Is(err, keyserver.ErrBindingRevoked) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	slot, err := r.d.Volume.Find(ctx, fde)
	switch {
	case errors.Is(err, disk.ErrWrongKey):
		return false, nil
	case err != nil:
		return false, err
	case slot == r.res.Slot:
		return false, fmt.Errorf("the provisioning key file opens the user's keyslot %d", slot)
	}
	return true, r.d.Volume.Kill(ctx, slot)
}

// revoke revokes the provisioning key file's binding; revoking it again
// changes nothing.
func (r *run) revoke(ctx context.Context) (bool, error) {
	if r.prov == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.d.stepTimeout())
	defer cancel()
	return true, r.d.Server.Revoke(ctx, r.prov.Header().ID)
}

func (r *run) removeProvisioning(context.Context) (bool, error) {
	if r.prov == nil {
		return false, nil
	}
	if err := keyfile.Remove(r.d.ESP, r.provPath); err != nil {
		return false, err
	}
	r.prov.Close()
	r.prov = nil
	return true, nil
}

// enrolment returns the device's ID and key server, as the provisioning
// key file or Existing records them.
func (r *run) enrolment() (keyfile.ID, keyfile.Server) {
	if r.prov == nil {
		return r.d.Existing.DeviceID, r.d.Existing.Server
	}
	h := r.prov.Header()
	return h.DeviceID, h.Server
}

// authorizing returns the key that authorizes the user's keyslot: the
// existing key, or the provisioning key file's FDE secret.
func (r *run) authorizing(ctx context.Context) (secret.Bytes, error) {
	if r.d.Existing != nil {
		return r.d.Existing.Key, nil
	}
	return r.provisioningFDE(ctx)
}

// provisioningFDE opens the provisioning key file with the key server's
// help, once, and returns its FDE secret.
func (r *run) provisioningFDE(ctx context.Context) (secret.Bytes, error) {
	if r.provFDE != nil {
		return r.provFDE, nil
	}
	if r.prov == nil {
		return nil, ErrNotProvisioned
	}
	ctx, cancel := context.WithTimeout(ctx, r.d.stepTimeout())
	defer cancel()
	if err := r.prov.Open(ctx, r.d.Network); err != nil {
		return nil, fmt.Errorf("open the provisioning key file: %w", err)
	}
	r.provFDE = r.prov.Keyring().FDE.Clone()
	r.prov.Close()
	return r.provFDE, nil
}

// Factors returns the factors of a user's TPM and password protector
// (LabelPasswordTPM): the password, its Argon2id parameters argon2 (zero:
// calibrated on this device when enrolled), and the TPM sealing to pcrs
// (empty: tpm.DefaultPCRs) with the same password bound in. Enrolled
// together, the TPM alone never releases the key file.
func Factors(t *tpm.TPM, pcrs tpm.PCRSelection, password secret.Bytes, argon2 keyfile.Argon2Params) []keyfile.Factor {
	return FactorsWith(t, pcrs, password, keyfile.PasswordWith(password, argon2))
}

// FactorsWith is Factors with the password factor pw, made for the same
// password: one made by keyfile.Remembering lets a caller that opens a key
// file more than once in a sign-in, or derives ahead, derive once.
func FactorsWith(t *tpm.TPM, pcrs tpm.PCRSelection, password secret.Bytes, pw *keyfile.PasswordFactor) []keyfile.Factor {
	if len(pcrs) == 0 {
		pcrs = nil
	}
	return []keyfile.Factor{pw, tpm.NewFactor(t, pcrs, password)}
}

// factors returns the user's factors on this device.
func (r *run) factors(pcrs tpm.PCRSelection) []keyfile.Factor {
	return FactorsWith(r.d.TPM, pcrs, r.password, r.pw)
}

func (d *Device) stepTimeout() time.Duration {
	if d.StepTimeout > 0 {
		return d.StepTimeout
	}
	return DefaultStepTimeout
}

func (d *Device) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.New(slog.DiscardHandler)
}
