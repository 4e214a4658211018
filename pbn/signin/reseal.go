package signin

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// The reseal path: the user's key file does not open with their TPM and
// password protector, but the directory and the key server have just
// accepted the password online. The server hands the device the key
// file's escrowed recovery key (a sign-in that says why, recorded in its
// audit trail), the key file opens with it and is sealed to this TPM, this
// boot's PCRs and that password (tpm.Reseal), then replaces the old
// generation crash-safely (keyfile.Replace): a power cut leaves the old
// generation or the new one, and the old one still opens the same way
// next time.
//
// What the path trusts: the key server's own check of the password with
// the directory, and the device's TPM key, which the server knows the
// device by. The device key is not bound to the PCRs (see the TODO in
// pbn/keyserver's signIn), so an altered boot chain that learns the
// user's password could ask for the escrow the same way; the path is kept
// as narrow as its uses: online only, only after the directory and the
// server have both accepted the password, only for the user's own key
// file, and only for the three reasons resealReason tells.

// resealReason says why key file f, which Open refused with err after the
// directory and the server accepted the password, is to be sealed again:
// one of keyserver's Reseal reasons, or "" when err calls for no reseal.
func resealReason(f *keyfile.KeyFile, err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, tpm.ErrPCRMismatch):
		return keyserver.ResealTPMRefused
	case errors.Is(err, keyfile.ErrNoProtector) && AwaitsFirstSignIn(f):
		return keyserver.ResealFirstSignIn
	case WrongPassword(err):
		return keyserver.ResealPasswordChanged
	}
	return ""
}

// offlineError is what an offline sign-in says when key file f did not
// open with the user's factors: ErrFirstSignIn or ErrBootChanged where
// only the reseal path, online, would open it, else err.
func offlineError(f *keyfile.KeyFile, err error) error {
	switch {
	case errors.Is(err, keyfile.ErrNoProtector) && AwaitsFirstSignIn(f):
		return ErrFirstSignIn
	case errors.Is(err, tpm.ErrPCRMismatch):
		return fmt.Errorf("%w: %w", ErrBootChanged, err)
	}
	return err
}

// AwaitsFirstSignIn reports whether f is a user's or an administrator's
// key file that no password opens yet: one made for its owner at imaging
// (enroll.EnrollOwned), which their first online sign-in seals to the TPM
// and their password.
func AwaitsFirstSignIn(f *keyfile.KeyFile) bool {
	if k := f.Header().Kind; k != keyfile.KindUser && k != keyfile.KindAdministrator {
		return false
	}
	return !slices.ContainsFunc(f.Protectors(), func(p keyfile.ProtectorInfo) bool {
		return slices.Contains(p.Factors, keyfile.FactorPassword)
	})
}

// reseal opens f with its escrowed recovery key, which the server hands
// for reason, and seals it again to the TPM and the password the directory
// just accepted, as the next generation of the key file. The new protector
// seals to the PCRs and derives with the Argon2id parameters of the one it
// replaces; a key file that has none seals to the policy's PCRs, with the
// device's parameters.
func (s *session) reseal(ctx context.Context, f stored, reason string, p store.Policy) error {
	id := f.f.Header().ID
	ans, err := s.ask(ctx, keyserver.SignInRequest{KeyFile: id, Open: id, Reason: reason})
	if err != nil {
		return fmt.Errorf("reseal %s (%s): %w", f.path, reason, err)
	}
	defer ans.Wipe()
	if err := openWithRecovery(ctx, f.f, ans.RecoveryKey); err != nil {
		return fmt.Errorf("reseal %s (%s): %w", f.path, reason, err)
	}
	pcrs, argon, ok := sealedWith(f.f)
	if !ok {
		pcrs, argon = tpm.PCRSelection(p.PCRs), s.d.Argon2
	}
	tf := tpm.NewFactor(s.d.TPM, pcrs, s.password)
	if _, err := tpm.Reseal(ctx, f.f, tf, argon); err != nil {
		f.f.Close()
		return fmt.Errorf("reseal %s (%s): %w", f.path, reason, err)
	}
	if err := keyfile.Replace(s.d.ESP, f.path, f.f); err != nil {
		f.f.Close()
		return fmt.Errorf("reseal %s (%s): %w", f.path, reason, err)
	}
	s.d.logger().Info("key file sealed again", "path", f.path, "key_file", id, "reason", reason)
	return nil
}

// openWithRecovery opens f with a recovery key in the form people type.
func openWithRecovery(ctx context.Context, f *keyfile.KeyFile, digits secret.Bytes) error {
	rk, err := keyfile.ParseRecoveryKey(digits)
	if err != nil {
		return fmt.Errorf("escrowed recovery key: %w", err)
	}
	defer rk.Wipe()
	return f.Open(ctx, keyfile.Recovery(rk))
}

// sealedWith returns the PCR selection and the Argon2id parameters of f's
// TPM and password protector, and whether it has one; the parameters are
// the floor when they cannot be read.
func sealedWith(f *keyfile.KeyFile) (tpm.PCRSelection, keyfile.Argon2Params, bool) {
	for _, p := range f.Protectors() {
		i := slices.Index(p.Factors, keyfile.FactorTPM)
		if i < 0 {
			continue
		}
		var pcrs tpm.PCRSelection
		if sealed, err := tpm.ParseParams(p.Params[i]); err == nil {
			pcrs = sealed.PCRs
		}
		argon := keyfile.FloorArgon2
		if j := slices.Index(p.Factors, keyfile.FactorPassword); j >= 0 {
			if a, err := keyfile.PasswordParams(p.Params[j]); err == nil {
				argon = a
			}
		}
		return pcrs, argon, true
	}
	return nil, keyfile.FloorArgon2, false
}
