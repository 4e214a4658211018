package signin

import (
	"errors"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Errors that callers branch on.
var (
	// ErrUnknownUser: no key file on the device belongs to the account,
	// and the device is offline, so none can be made (SignIn).
	ErrUnknownUser = errors.New("no key file of this account is on the device")
	// ErrNeedsNetwork: the account has no key file on the device yet, and
	// one can be made only with the directory and the key server
	// reachable (SignIn).
	ErrNeedsNetwork = errors.New("a new user of the device needs the enterprise network")
	// ErrNoContact: the key file has no record of a contact with the key
	// server, so it does not open offline (SignIn).
	ErrNoContact = errors.New("the key file has never been confirmed online on this device")
	// ErrOfflineLimit: the last contact with the key server is longer ago
	// than the policy allows (SignIn).
	ErrOfflineLimit = errors.New("the offline limit has passed since the last contact with the key server")
	// ErrClockUntrusted: the pre-boot clock is earlier than a time the
	// device has seen already, or behind the TPM's Clock: it was set back
	// (SignIn).
	ErrClockUntrusted = errors.New("the device's clock is earlier than a time it has seen")
	// ErrAmbiguous: the account matches the key files of several users
	// (SignIn, offline).
	ErrAmbiguous = errors.New("the account matches several users of the device")
	// ErrWrongRecoveryKey: no key file opened with the recovery key
	// (Recover). It is keyfile.ErrWrongRecoveryKey.
	ErrWrongRecoveryKey = keyfile.ErrWrongRecoveryKey
)

// Sentence returns what to tell the person at the pre-boot prompt about an
// error of SignIn or Recover: what happened and what to do next.
func Sentence(err error) string {
	switch {
	case errors.Is(err, ErrUnknownUser):
		return "This account has no key on this device. Choose one of the users listed, " +
			"or connect to the enterprise network to add it."
	case errors.Is(err, ErrNeedsNetwork):
		return "Adding a user to this device needs the enterprise network. Connect to it and try again."
	case errors.Is(err, ErrNoContact), errors.Is(err, ErrOfflineLimit):
		return "This device has been offline for too long. Connect to the enterprise network " +
			"and sign in again."
	case errors.Is(err, ErrClockUntrusted):
		return "This device's clock is wrong, so it cannot check how long it has been offline. " +
			"Connect to the enterprise network and sign in again."
	case errors.Is(err, ErrAmbiguous):
		return "Several users match that name. Type the whole account, as name@domain."
	case errors.Is(err, keyfile.ErrWrongRecoveryKey):
		return "That recovery key does not open this device. Check it and try again."
	case errors.Is(err, console.ErrMismatch):
		return console.MismatchSentence
	}
	if s := tpm.Prompt(err); s != "" {
		return s
	}
	var ae *ad.Error
	if errors.As(err, &ae) {
		return ae.Sentence()
	}
	var ke *keyserver.Error
	if errors.As(err, &ke) || errors.Is(err, keyserver.ErrUnreachable) || errors.Is(err, keyserver.ErrServerNotPinned) {
		return keyserver.Sentence(err)
	}
	if errors.Is(err, keyfile.ErrWrongPassword) {
		return "That password is not correct. Try again."
	}
	return "Signing in failed. Try again, or use your recovery key and tell your IT support."
}

// WrongPassword reports whether err says the password was wrong, to the
// directory, the key server or the key file: the prompt counts it as a
// try.
func WrongPassword(err error) bool {
	return errors.Is(err, keyfile.ErrWrongPassword) || errors.Is(err, keyserver.ErrLoginRefused) ||
		ad.ReasonOf(err) == ad.WrongCredentials
}
