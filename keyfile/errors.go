package keyfile

import (
	"errors"
	"fmt"
)

// Errors that callers branch on. Parse and Load return ErrDamaged and
// *FormatError (which matches ErrFormat); Open returns ErrWrongPassword,
// ErrWrongRecoveryKey, ErrNoProtector and ErrTampered; Replace returns
// ErrStale.
var (
	// ErrFormat matches every *FormatError.
	ErrFormat = errors.New("not a valid key file")
	// ErrDamaged means the file's checksum does not match its contents:
	// it was damaged on disk or cut short while being written.
	ErrDamaged = errors.New("key file is damaged (checksum mismatch)")
	// ErrWrongPassword means no password protector opened with the
	// password given.
	ErrWrongPassword = errors.New("wrong password")
	// ErrWrongRecoveryKey means no recovery protector opened with the
	// recovery key given.
	ErrWrongRecoveryKey = errors.New("wrong recovery key")
	// ErrNoProtector means the key file has no protector that the factors
	// given could open.
	ErrNoProtector = errors.New("no protector of the key file can be opened with what was given")
	// ErrTampered means a protector opened but the file did not
	// authenticate: it was changed by someone without its keys.
	ErrTampered = errors.New("key file was modified without its keys")
	// ErrStale means a replacement would put an older generation of a key
	// file over a newer one.
	ErrStale = errors.New("key file on disk is newer than the one being written")
)

// FormatError says what is wrong with a key file that does not parse.
type FormatError struct {
	Section string // where: "preamble", "header", "protector 2", "keyring"
	Reason  string // what, in a few words
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("not a valid key file: %s: %s", e.Section, e.Reason)
}

// Is makes errors.Is(err, ErrFormat) true for every *FormatError.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(section, reason string) error {
	return &FormatError{Section: section, Reason: reason}
}
