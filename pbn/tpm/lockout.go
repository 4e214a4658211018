package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// DictionaryAttack are a TPM's dictionary-attack parameters (TPM 2.0
// Part 3, 25.3 TPM2_DictionaryAttackParameters).
type DictionaryAttack struct {
	// MaxTries is how many failed authorizations put the TPM in lockout.
	MaxTries uint32
	// Recovery is how long the TPM takes to forget one failed
	// authorization.
	Recovery time.Duration
	// LockoutRecovery is how long the lockout hierarchy stays locked
	// after a failed authorization of its own.
	LockoutRecovery time.Duration
}

// FleetDictionaryAttack is what enrolment sets. The TPM counts a power
// cut after a use of a sealed key file (any shutdown that is not orderly)
// as a failed authorization (Part 1, 19.8.6), so a TPM's defaults (3
// tries on swtpm, and as few on some laptops) lock a user out after a few
// power cuts during sign-ins. 32 tries leave room for typos and power
// cuts, and with one forgiven every ten minutes an attacker who has the
// laptop gets 32 guesses at the password and then 6 an hour.
var FleetDictionaryAttack = DictionaryAttack{MaxTries: 32, Recovery: 10 * time.Minute,
	LockoutRecovery: 24 * time.Hour}

// ErrLockoutAuthSet is SetDictionaryAttack's error when the TPM's lockout
// authorization is set: someone (the firmware, another OS) has taken the
// TPM's dictionary-attack settings, which are then theirs to choose.
var ErrLockoutAuthSet = errors.New("the TPM's lockout authorization is set")

// lockoutAuthSet is TPMA_PERMANENT's lockoutAuthSet bit (Part 2, 8.6).
const lockoutAuthSet = 1 << 2

// SetDictionaryAttack sets the TPM's dictionary-attack parameters with
// TPM2_DictionaryAttackParameters on TPM_RH_LOCKOUT, authorized by the
// empty lockout authorization of a TPM that nobody has taken. It reads
// TPMA_PERMANENT first and returns ErrLockoutAuthSet rather than try the
// empty authorization on a TPM whose lockout authorization is set: a
// wrong one would lock the lockout hierarchy for its LockoutRecovery.
//
// TODO: enrolment leaves the lockout authorization empty, so code running
// in the OS as root can reset the failed-tries counter
// (TPM2_DictionaryAttackLockReset) between guesses; setting a random one,
// escrowed with the key server, would close that.
func (t *TPM) SetDictionaryAttack(ctx context.Context, da DictionaryAttack) error {
	tr := t.with(ctx)
	props, err := properties(tr, tpm2.TPMPTPermanent, 1)
	if err != nil {
		return fmt.Errorf("tpm: dictionary attack: %w", err)
	}
	if props[tpm2.TPMPTPermanent]&lockoutAuthSet != 0 {
		return ErrLockoutAuthSet
	}
	rsp, err := tr.Send(dictionaryAttackParameters(da))
	if err != nil {
		return fmt.Errorf("tpm: TPM2_DictionaryAttackParameters: %w", err)
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
		return fmt.Errorf("tpm: TPM2_DictionaryAttackParameters: %w", rc)
	}
	return nil
}

// dictionaryAttackParameters encodes TPM2_DictionaryAttackParameters,
// which go-tpm's tpm2 package lacks, with a password session of the empty
// password (Part 1, 19.6.5) on TPM_RH_LOCKOUT.
func dictionaryAttackParameters(da DictionaryAttack) []byte {
	const (
		stSessions = 0x8002
		ccDAParams = 0x13a
		rhLockout  = 0x4000000a
		rsPassword = 0x40000009
		size       = 10 + 4 + 4 + 9 + 12 // header, handle, area size, session, parameters
	)
	b := binary.BigEndian.AppendUint16(nil, stSessions)
	b = binary.BigEndian.AppendUint32(b, size)
	b = binary.BigEndian.AppendUint32(b, ccDAParams)
	b = binary.BigEndian.AppendUint32(b, rhLockout)
	b = binary.BigEndian.AppendUint32(b, 9) // the authorization area's size
	b = binary.BigEndian.AppendUint32(b, rsPassword)
	b = binary.BigEndian.AppendUint16(b, 0) // no nonce
	b = append(b, 0)                        // session attributes
	b = binary.BigEndian.AppendUint16(b, 0) // the empty password
	b = binary.BigEndian.AppendUint32(b, da.MaxTries)
	b = binary.BigEndian.AppendUint32(b, uint32(da.Recovery/time.Second))
	return binary.BigEndian.AppendUint32(b, uint32(da.LockoutRecovery/time.Second))
}
