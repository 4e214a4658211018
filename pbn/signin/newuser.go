package signin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// addUser makes a key file for an account the directory accepted that has
// none on the device: a further user, or an administrator account of the
// device's package. The server admits the account and hands over the
// escrowed recovery key of one of the device's key files, whose FDE
// secret authorizes the new key file's keyslot.
//
// The keyslot is added and tagged before the key file is stored: a power
// cut in between leaves a keyslot whose secret nobody holds, never a key
// file that does not open the disk; the next sign-in makes a new one.
//
// TODO: sweep the keyslots whose tag names a key file that is on neither
// the ESP nor the server, which such a power cut leaves behind.
func (s *session) addUser(ctx context.Context, id *ad.Identity) (*Result, error) {
	if len(s.files) == 0 || s.d.Volume == nil {
		return nil, ErrNeedsNetwork
	}
	other := s.files[0]
	newID, rk := keyfile.NewID(), keyfile.NewRecoveryKey()
	defer rk.Wipe()
	digits := rk.Digits()
	defer digits.Wipe()
	ans, err := s.ask(ctx, keyserver.SignInRequest{NewKeyFile: newID, RecoveryKey: digits,
		Open: other.f.Header().ID})
	if offline(err) {
		return nil, fmt.Errorf("%w: %w", ErrNeedsNetwork, err)
	}
	if err != nil {
		return nil, err
	}
	defer ans.Wipe()
	if ans.SID != id.SID {
		return nil, fmt.Errorf("the key server's account %s is not the directory's %s", ans.SID, id.SID)
	}

	existing, err := s.fdeOf(ctx, other, ans.RecoveryKey)
	if err != nil {
		return nil, err
	}
	defer existing.Wipe()
	f, err := s.newKeyFile(ctx, newID, other.f.Header(), ans, rk)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(s.d.KeyDir, ans.SID+keyfile.Ext)
	if err := s.keyslot(ctx, existing, f); err != nil {
		f.Close()
		return nil, err
	}
	if err := keyfile.Replace(s.d.ESP, path, f); err != nil {
		f.Close()
		return nil, err
	}
	s.files = append(s.files, stored{f, path})
	return &Result{KeyFile: f, Path: path, Online: true, Made: true}, s.recordContact(ctx, f, ans)
}

// fdeOf opens another key file of the device with its escrowed recovery
// key and returns its FDE secret, which the caller wipes.
func (s *session) fdeOf(ctx context.Context, f stored, digits secret.Bytes) (secret.Bytes, error) {
	if err := openWithRecovery(ctx, f.f, digits); err != nil {
		return nil, fmt.Errorf("open %s with its escrowed recovery key: %w", f.path, err)
	}
	fde := f.f.Keyring().FDE.Clone()
	f.f.Close()
	return fde, nil
}

// newKeyFile makes the new user's key file, open, on the model of the
// secure moment's: a new FDE secret, the user's group keys and the
// enterprise key, a TPM and password protector sealed to the policy's
// PCRs and a recovery protector.
func (s *session) newKeyFile(ctx context.Context, id keyfile.ID, other keyfile.Header,
	ans *keyserver.SignIn, rk keyfile.RecoveryKey) (*keyfile.KeyFile, error) {
	ring := &keyfile.Keyring{FDE: secret.Random(securemoment.FDESize), Enterprise: ans.Enterprise.Clone()}
	for _, g := range ans.Groups {
		ring.Groups = append(ring.Groups, keyfile.GroupKey{SID: g.SID, Name: g.Name, Key: g.Key.Clone()})
	}
	f, err := keyfile.New(keyfile.Header{ID: id, Kind: ans.Kind, DeviceID: other.DeviceID,
		UPN: ans.UPN, SID: ans.SID, Server: other.Server, OfflineLimit: ans.Policy.OfflineLimit}, ring)
	if err != nil {
		ring.Wipe()
		return nil, err
	}
	if _, err := f.AddProtector(ctx, securemoment.LabelPasswordTPM,
		s.factors(tpm.PCRSelection(ans.Policy.PCRs))...); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.AddProtector(ctx, securemoment.LabelRecovery, keyfile.Recovery(rk)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// keyslot adds and tags the keyslot of f's FDE secret, authorized by
// existing.
func (s *session) keyslot(ctx context.Context, existing secret.Bytes, f *keyfile.KeyFile) error {
	slot, err := s.d.Volume.Add(ctx, existing, f.Keyring().FDE)
	if err != nil {
		return err
	}
	return s.d.Volume.Tag(ctx, slot, f.Header().ID)
}

// remove removes the key file of a user the server no longer has on the
// device, and kills its keyslot, so that no copy of it opens the disk. It
// does so only while another key file stays on the device to open it, and
// only the keyslot tagged with the key file's ID; what it cannot do safely
// it leaves, and the server refuses the user at every online sign-in all
// the same.
func (s *session) remove(ctx context.Context, f *stored) {
	log := s.d.logger().With("path", f.path, "key_file", f.f.Header().ID)
	if len(s.files) < 2 || s.d.Volume == nil {
		log.Warn("removed user's key file kept: it is the device's last")
		return
	}
	tags, err := s.d.Volume.Tags(ctx)
	if err != nil {
		log.Warn("removed user's key file kept", "err", err)
		return
	}
	for slot, id := range tags {
		if id != f.f.Header().ID {
			continue
		}
		if err := s.d.Volume.Kill(ctx, slot); err != nil {
			log.Warn("removed user's key file kept", "err", err)
			return
		}
		log.Info("removed user's keyslot killed", "slot", slot)
	}
	if err := keyfile.Remove(s.d.ESP, f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("removed user's key file not removed", "err", err)
		return
	}
	log.Info("removed user's key file removed")
}
