package tpm

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/pbn-project/pbn/keyfile"
)

// ResealLabel is the label Reseal gives the new protector when the key file
// had no TPM protector to take the label from.
const ResealLabel = "password and TPM"

// Reseal seals the open key file f afresh to the TPM of tf and the current
// values of the PCRs it seals to, after a legitimate change of the boot
// chain (a firmware or kernel update) made its TPM protector fail with
// ErrPCRMismatch. It adds a protector of tf and a password factor of tf's
// password with the Argon2id parameters argon, then removes the key file's
// other protectors that have a TPM factor, and returns the new protector's
// index. The old protectors go only once the new one is in, so f never
// lacks a TPM protector; the caller stores f with keyfile.Replace.
//
// Reseal runs in the booted system or in the pre-boot agent once the user
// has opened f another way (the recovery key, or the password with a
// password-only protector). The PCRs it seals to are those of the current
// boot, which the next boot reproduces as long as nothing in the chain
// changes again.
//
// TODO: seal to predicted PCR values (from the firmware's event log and the
// digest of the new kernel or image) so that an update can reseal before
// its reboot; until then, the first boot after an update needs the recovery
// key.
func Reseal(ctx context.Context, f *keyfile.KeyFile, tf *Factor, argon keyfile.Argon2Params) (int, error) {
	if !f.IsOpen() {
		return 0, errors.New("tpm: reseal: the key file is not open")
	}
	var old []int
	label := ResealLabel
	for i, p := range f.Protectors() {
		if slices.Contains(p.Factors, keyfile.FactorTPM) {
			old = append(old, i)
			label = p.Label
		}
	}

	n, err := f.AddProtector(ctx, label, keyfile.PasswordWith(tf.password, argon), tf)
	if err != nil {
		return 0, fmt.Errorf("tpm: reseal: %w", err)
	}
	for _, i := range slices.Backward(old) {
		if err := f.RemoveProtector(i); err != nil {
			return 0, fmt.Errorf("tpm: reseal: remove the old protector %d: %w", i, err)
		}
		n--
	}
	return n, nil
}
