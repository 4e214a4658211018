package tpm

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/keyfile"
)

// Errors that TPM.Unseal and Factor.Recover return, besides
// *WrongPasswordError and *LockoutError.
var (
	// ErrSRKMismatch means the TPM's storage root key is not the one the
	// secret was sealed under: the TPM was cleared (which destroys the key
	// for good), or the TPM that answers is not this device's.
	ErrSRKMismatch = errors.New("the TPM's storage root key is not the one the secret was sealed to " +
		"(the TPM was cleared, or another TPM answers)")
	// ErrPCRMismatch means the PCRs do not hold the values the secret was
	// sealed to: the boot chain (firmware, boot loader, kernel, image or
	// Secure Boot keys) changed.
	ErrPCRMismatch = errors.New("the PCRs do not hold the values the secret was sealed to " +
		"(the boot chain changed)")
)

// WrongPasswordError means the TPM refused the authValue derived from the
// password (TPM_RC_AUTH_FAIL, Part 2, 6.6.3) and counted a failure against
// its dictionary-attack protection. It matches keyfile.ErrWrongPassword.
type WrongPasswordError struct {
	// TriesLeft is how many more wrong passwords the TPM takes before it
	// locks itself (TPM_PT_MAX_AUTH_FAIL less TPM_PT_LOCKOUT_COUNTER), or
	// -1 when the TPM did not tell.
	TriesLeft int
	// Lockout says how long a lockout lasts, once TriesLeft is 0.
	Lockout LockoutError
}

// Is makes errors.Is(err, keyfile.ErrWrongPassword) true, so that a key
// file's callers handle a password the TPM refused as any wrong password.
func (e *WrongPasswordError) Is(target error) bool { return target == keyfile.ErrWrongPassword }

func (e *WrongPasswordError) Error() string {
	if e.TriesLeft < 0 {
		return "the TPM refused the password"
	}
	return fmt.Sprintf("the TPM refused the password (tries left before it locks: %d)", e.TriesLeft)
}

// Prompt is the sentence for the person at the pre-boot prompt.
func (e *WrongPasswordError) Prompt() string {
	switch e.TriesLeft {
	case -1:
		return "The password is wrong."
	case 0:
		return "The password is wrong, and that was the last try: the TPM has locked itself. " +
			e.Lockout.wait()
	case 1:
		return "The password is wrong. One more wrong password and the TPM locks itself for a while."
	}
	return fmt.Sprintf("The password is wrong. You have %d more tries before the TPM locks itself for a while.",
		e.TriesLeft)
}

// LockoutError means the TPM is in dictionary-attack lockout
// (TPM_RC_LOCKOUT; Part 1, "Dictionary Attack Protection"): it refuses every authorization of
// protected objects until enough time has passed.
type LockoutError struct {
	// Interval is how long the TPM takes to forget one failure and allow
	// one more try (TPM_PT_LOCKOUT_INTERVAL); zero when it never forgets
	// and only an administrator can reset it
	// (TPM2_DictionaryAttackLockReset), or when the TPM did not tell.
	Interval time.Duration
	// Known says whether the TPM told its lockout parameters.
	Known bool
}

func (e *LockoutError) Error() string {
	if !e.Known {
		return "the TPM is locked after too many wrong passwords"
	}
	return fmt.Sprintf("the TPM is locked after too many wrong passwords (one try comes back every %v)",
		e.Interval)
}

// Prompt is the sentence for the person at the pre-boot prompt.
func (e *LockoutError) Prompt() string {
	return "Too many wrong passwords: the TPM has locked itself. " + e.wait()
}

func (e *LockoutError) wait() string {
	const recovery = "Your recovery key still opens the device."
	switch {
	case e.Known && e.Interval > 0:
		return fmt.Sprintf("Wait %s and try again. %s", human(e.Interval), recovery)
	case e.Known:
		return "It stays locked until your IT support resets it. " + recovery
	}
	return "Wait a while and try again. " + recovery
}

// human writes a duration as a person says it, rounded up.
func human(d time.Duration) string {
	switch {
	case d <= time.Minute:
		return "a minute"
	case d < time.Hour:
		return fmt.Sprintf("%d minutes", (d+time.Minute-1)/time.Minute)
	case d <= time.Hour:
		return "an hour"
	}
	return fmt.Sprintf("%d hours", (d+time.Hour-1)/time.Hour)
}

// Prompt returns the sentence for the person at the pre-boot prompt that
// says what err, returned by this package, means and what to do next, or ""
// when err is none of the errors a person can act on.
func Prompt(err error) string {
	var wp *WrongPasswordError
	var lo *LockoutError
	switch {
	case errors.As(err, &wp):
		return wp.Prompt()
	case errors.As(err, &lo):
		return lo.Prompt()
	case errors.Is(err, ErrPCRMismatch):
		return "This device's boot software has changed since your key was sealed, so the TPM keeps it. " +
			"Open the device with your recovery key; your key is then sealed to the new boot software."
	case errors.Is(err, ErrSRKMismatch):
		return "This is not the TPM your key was sealed to: it was reset or replaced. " +
			"Open the device with your recovery key, and tell your IT support."
	}
	return ""
}

// daState reads the dictionary-attack counters (Part 3, 30.2
// TPM2_GetCapability of TPM_PT_LOCKOUT_COUNTER, TPM_PT_MAX_AUTH_FAIL and
// TPM_PT_LOCKOUT_INTERVAL, which are consecutive).
func daState(tr transport.TPM) (counter, maxTries uint32, interval time.Duration, err error) {
	props, err := properties(tr, tpm2.TPMPTLockoutCounter, 3)
	if err != nil {
		return 0, 0, 0, err
	}
	c, ok1 := props[tpm2.TPMPTLockoutCounter]
	m, ok2 := props[tpm2.TPMPTMaxAuthFail]
	i, ok3 := props[tpm2.TPMPTLockoutInterval]
	if !ok1 || !ok2 || !ok3 {
		return 0, 0, 0, errors.New("the TPM did not return its dictionary-attack parameters")
	}
	return c, m, time.Duration(i) * time.Second, nil
}

// wrongPassword builds the error for a refused authValue, with the tries
// left when the TPM tells them.
func wrongPassword(tr transport.TPM) *WrongPasswordError {
	counter, maxTries, interval, err := daState(tr)
	if err != nil {
		return &WrongPasswordError{TriesLeft: -1}
	}
	left := 0
	if counter < maxTries {
		left = int(maxTries - counter)
	}
	return &WrongPasswordError{TriesLeft: left, Lockout: LockoutError{Interval: interval, Known: true}}
}

// lockout builds the error for a TPM in lockout.
func lockout(tr transport.TPM) *LockoutError {
	_, _, interval, err := daState(tr)
	if err != nil {
		return &LockoutError{}
	}
	return &LockoutError{Interval: interval, Known: true}
}

// properties reads count TPM properties from first on (Part 3, 30.2
// TPM2_GetCapability, TPM_CAP_TPM_PROPERTIES).
func properties(tr transport.TPM, first tpm2.TPMPT, count uint32) (map[tpm2.TPMPT]uint32, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(first),
		PropertyCount: count,
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("read TPM properties: %w", err)
	}
	list, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return nil, fmt.Errorf("read TPM properties: %w", err)
	}
	props := map[tpm2.TPMPT]uint32{}
	for _, p := range list.TPMProperty {
		props[p.Property] = p.Value
	}
	return props, nil
}
