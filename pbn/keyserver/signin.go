package keyserver

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// signIn is the server's side of a deployed-stage sign-in. The device is
// known by its TLS key and active (not lost or retired); the server checks
// the account with the directory itself, never trusting the device's word,
// then that the user is still one of the device's (an owner, or an
// administrator account of the group's policy), records the sign-in and
// the recovery-key uses the device reports, and answers with its time and
// the policy, whose offline limit the device applies from then on.
//
// On request it also hands out an escrowed recovery key of one of the
// device's key files: the user's own, to seal it again to the TPM and the
// password when its own protector does not open (a Reseal reason, which
// the audit trail records), or another user's, so that the device can
// authorize the keyslot of a key file it makes for this user. Either way
// the device is trusted to use it for that alone, on the strength of its
// TPM's key and the user's password, both checked here.
//
// TODO: the device key is not bound to the PCRs, so other code that runs
// on the device and learns the user's password could ask for a recovery
// key too; a quote of the PCRs by the device key (TPM2_Quote, Part 3,
// 18.4) would let the server hand recovery keys to the measured agent
// alone.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request, c caller) error {
	var m signInV1
	raw, err := readRequest(w, r, &m)
	if err != nil {
		return err
	}
	defer clear(raw)
	password := secret.Bytes(m.Password)
	defer password.Wipe()
	recovery := secret.Bytes(m.RecoveryKey)
	defer recovery.Wipe()

	ctx := r.Context()
	id, err := s.login(ctx, m.Account, password)
	if err != nil {
		return err
	}
	p, err := s.cfg.Store.Policy(ctx, c.device.Group)
	if err != nil {
		return err
	}
	kind, err := s.userKind(ctx, c, p, id)
	if err != nil {
		return err
	}

	ans := &signedInV1{v1: v1{wireV1}, UPN: id.UPN, SID: id.SID, Kind: kind.String(), Policy: p}
	defer wipeSignedIn(ans)
	var added *store.Owner
	if m.NewKeyFile.isZero() {
		err = s.checkKeyFile(ctx, c, keyfile.ID(m.KeyFile), id, kind)
	} else {
		added, err = s.newKeyFile(ctx, c, p, id, kind, keyfile.ID(m.NewKeyFile), recovery, ans)
	}
	if err != nil {
		return err
	}
	if !m.Open.isZero() {
		e, err := s.cfg.Store.EscrowOf(ctx, c.device.ID, keyfile.ID(m.Open))
		if errors.Is(err, store.ErrNotFound) {
			return refuse(codeNotFound, "no recovery key is held for key file %s", keyfile.ID(m.Open))
		}
		if err != nil {
			return err
		}
		ans.RecoveryKey = e.Key
	}

	if err := s.recordSignIn(r, c, &m, id, added); err != nil {
		return err
	}
	ans.Time = time.Now().UTC()
	return reply(w, ans)
}

// notAUser is userKind's answer for an account that is neither an owner of
// the device nor an administrator account of its policy.
const notAUser keyfile.Kind = 0

// userKind tells whether id may still use the device, and as what: an
// owner as a user, else an administrator account of the policy as an
// administrator; anyone else is notAUser.
func (s *Server) userKind(ctx context.Context, c caller, p store.Policy, id *Identity) (keyfile.Kind, error) {
	owners, err := s.cfg.Store.Owners(ctx, c.device.ID)
	if err != nil {
		return 0, err
	}
	switch {
	case slices.ContainsFunc(owners, func(o store.Owner) bool { return o.SID == id.SID }):
		return keyfile.KindUser, nil
	case slices.ContainsFunc(p.Administrators, func(a string) bool { return strings.EqualFold(a, id.UPN) }):
		return keyfile.KindAdministrator, nil
	}
	return notAUser, nil
}

// checkKeyFile checks that key file kf is id's on this device and that id
// is still one of its users.
func (s *Server) checkKeyFile(ctx context.Context, c caller, kf keyfile.ID, id *Identity, kind keyfile.Kind) error {
	if kind == notAUser {
		return refuse(codeUserRemoved, "%s is no longer a user of device %s", id.UPN, c.device.ID)
	}
	e, err := s.cfg.Store.EscrowOf(ctx, c.device.ID, kf)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(codeNotFound, "key file %s is not one of device %s's", kf, c.device.ID)
	}
	if err != nil {
		return err
	}
	e.Key.Wipe()
	if !strings.EqualFold(e.UPN, id.UPN) {
		return refuse(codeNotFound, "key file %s is not %s's", kf, id.UPN)
	}
	return nil
}

// newKeyFile admits id to the device for a key file of their own: an
// administrator account of the policy on any device of the group, anyone
// else as a further user within the policy's allowed groups and users per
// device (addOwner), who becomes the primary user of a device that has
// none yet (one an administrator installed). It escrows the new key
// file's recovery key, puts the user's keys in ans and returns the owner
// it added, nil for an administrator.
func (s *Server) newKeyFile(ctx context.Context, c caller, p store.Policy, id *Identity,
	kind keyfile.Kind, kf keyfile.ID, recovery secret.Bytes, ans *signedInV1) (*store.Owner, error) {
	var added *store.Owner
	if kind == notAUser {
		o, err := s.addOwner(ctx, c, p, id)
		if err != nil {
			return nil, err
		}
		added, kind = &o, keyfile.KindUser
	}
	ans.Kind = kind.String()
	if err := s.cfg.Store.PutEscrow(ctx, store.Escrow{DeviceID: c.device.ID, KeyFileID: kf,
		UPN: id.UPN, Key: recovery}); err != nil {
		return nil, err
	}
	keys, err := s.keys(ctx, id)
	if err != nil {
		return nil, err
	}
	ans.Groups, ans.Enterprise = keys.Groups, keys.Enterprise
	return added, nil
}

// recordSignIn records the sign-in, then each recovery-key use the device
// reports, as events of their own. A sign-in that added the user to the
// device says so in its "owner" detail: "primary" for the device's first
// user, else "added".
func (s *Server) recordSignIn(r *http.Request, c caller, m *signInV1, id *Identity, added *store.Owner) error {
	detail := map[string]string{"upn": id.UPN, "sid": id.SID}
	if added != nil {
		detail["owner"] = "added"
		if added.Primary {
			detail["owner"] = "primary"
		}
	}
	if !m.KeyFile.isZero() {
		detail["key_file"] = keyfile.ID(m.KeyFile).String()
	}
	if !m.NewKeyFile.isZero() {
		detail["new_key_file"] = keyfile.ID(m.NewKeyFile).String()
	}
	if !m.Open.isZero() {
		detail["recovery_key_of"] = keyfile.ID(m.Open).String()
	}
	if m.Reason != "" {
		detail["reason"] = m.Reason
	}
	if err := s.record(r, c, "signin", detail); err != nil {
		return err
	}
	for _, u := range m.Recoveries {
		if err := s.record(r, c, "recovery-used", map[string]string{
			"key_file": keyfile.ID(u.KeyFile).String(), "at": u.At.UTC().Format(time.RFC3339),
			"reported_by": id.UPN}); err != nil {
			return err
		}
	}
	return nil
}

func wipeSignedIn(m *signedInV1) {
	clear(m.RecoveryKey)
	clear(m.Enterprise)
	for _, g := range m.Groups {
		clear(g.Key)
	}
}

// removeOwner removes a user from a device, with the reason in the audit
// trail: their next online sign-in there is refused.
func (s *Server) removeOwner(w http.ResponseWriter, r *http.Request, c caller) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var m ownerRemoveV1
	if _, err := readRequest(w, r, &m); err != nil {
		return err
	}
	if err := s.cfg.Store.RemoveOwner(r.Context(), id, m.SID); err != nil {
		return err
	}
	if err := s.record(r, c, "owner-removed", map[string]string{"device": id.String(),
		"sid": m.SID, "reason": m.Reason}); err != nil {
		return err
	}
	return reply(w, &okV1{v1{wireV1}})
}

// SignInRequest is a deployed-stage sign-in of a user at a device.
type SignInRequest struct {
	// Account and Password are what the user typed.
	Account  string
	Password secret.Bytes
	// KeyFile is the user's key file on the device; zero when the device
	// makes them one, NewKeyFile, whose recovery key RecoveryKey the
	// server escrows.
	KeyFile     keyfile.ID
	NewKeyFile  keyfile.ID
	RecoveryKey secret.Bytes
	// Open asks for the escrowed recovery key of a key file of the
	// device: KeyFile itself, to seal it again when its TPM and password
	// protector does not open, for Reason (one of the Reseal reasons,
	// required then); or, with NewKeyFile, another one (to authorize the
	// new key file's keyslot).
	Open   keyfile.ID
	Reason string
	// Recoveries are the recovery-key uses to report.
	Recoveries []RecoveryUse
}

// The reasons a device gives for opening its user's own key file with the
// escrowed recovery key (SignInRequest.Reason), recorded in the audit
// trail.
const (
	// ResealPasswordChanged: the password was changed in the directory,
	// so the key file's password factor has the old one.
	ResealPasswordChanged = "password-changed"
	// ResealFirstSignIn: the key file was made for its owner at imaging,
	// with no protector of their password yet.
	ResealFirstSignIn = "first-sign-in"
	// ResealTPMRefused: the TPM refused the key file's policy, because
	// this boot measured otherwise than the one it was sealed in (the
	// first PBN boot after pbnctl install, a firmware or kernel update).
	ResealTPMRefused = "tpm-refused"
)

var resealReasons = []string{ResealPasswordChanged, ResealFirstSignIn, ResealTPMRefused}

// RecoveryUse is one use of a key file's recovery key at the prompt.
type RecoveryUse struct {
	KeyFile keyfile.ID
	At      time.Time
}

// SignIn is the server's answer to a sign-in.
type SignIn struct {
	// UPN and SID are the user as the directory knows them; Kind is the
	// kind of their key file (keyfile.KindUser or KindAdministrator).
	UPN, SID string
	Kind     keyfile.Kind
	// Time is the server's clock when it answered.
	Time time.Time
	// Policy is the policy of the device's group.
	Policy store.Policy
	// RecoveryKey is the recovery key of SignInRequest.Open.
	RecoveryKey secret.Bytes
	// Groups and Enterprise are the keys of a new key file.
	Groups     []keyfile.GroupKey
	Enterprise secret.Bytes
}

// Wipe wipes the answer's keys.
func (s *SignIn) Wipe() {
	s.RecoveryKey.Wipe()
	s.Enterprise.Wipe()
	for _, g := range s.Groups {
		g.Key.Wipe()
	}
}

// SignIn presents a user's sign-in at the device to the server. It returns
// errors matching ErrLoginRefused, ErrUserRemoved (the user is no longer
// one of the device's), ErrNotAllowed and ErrTooManyUsers (for a new key
// file), ErrNotFound (the key file is not the user's, or no recovery key is
// held for Open), ErrDeviceLost or ErrDeviceRetired for the server's
// refusals, and ErrUnreachable when it cannot be reached.
func (c *Client) SignIn(ctx context.Context, req SignInRequest) (*SignIn, error) {
	m := &signInV1{v1: v1{wireV1}, Account: req.Account, Password: req.Password,
		KeyFile: hexID(req.KeyFile), NewKeyFile: hexID(req.NewKeyFile), RecoveryKey: req.RecoveryKey,
		Open: hexID(req.Open), Reason: req.Reason}
	for _, u := range req.Recoveries {
		m.Recoveries = append(m.Recoveries, recoveryUseV1{hexID(u.KeyFile), u.At.UTC()})
	}
	var ans signedInV1
	if err := c.call(ctx, http.MethodPost, "/v1/signin", m, &ans); err != nil {
		return nil, err
	}
	kind, err := keyfile.ParseKind(ans.Kind)
	if err != nil {
		wipeSignedIn(&ans)
		return nil, err
	}
	in := &SignIn{UPN: ans.UPN, SID: ans.SID, Kind: kind, Time: ans.Time, Policy: ans.Policy,
		RecoveryKey: ans.RecoveryKey, Enterprise: ans.Enterprise}
	for _, g := range ans.Groups {
		in.Groups = append(in.Groups, keyfile.GroupKey{SID: g.SID, Name: g.Name, Key: g.Key})
	}
	return in, nil
}

// RemoveOwner removes the user whose objectSid is sid from a device, with
// reason recorded in the audit trail. It returns an error matching
// ErrNotFound when the device has no such user. An administrator's client
// only.
func (c *Client) RemoveOwner(ctx context.Context, device keyfile.ID, sid, reason string) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/devices/"+device.String()+"/owners/remove",
		&ownerRemoveV1{v1{wireV1}, sid, reason}, &okV1{})
}
