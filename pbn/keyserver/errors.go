package keyserver

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/pbn-project/pbn/pbn/tang"
)

// Errors that callers branch on. The client's methods return an *Error
// that matches one of these with errors.Is when the server refuses.
var (
	// ErrUnknownKey: the TLS client key is neither an enrolled device's
	// nor an administrator's (any method).
	ErrUnknownKey = errors.New("the key server does not know this device or administrator")
	// ErrDeviceLost and ErrDeviceRetired: an administrator marked the
	// device so (Unlock, Claim, Revoke).
	ErrDeviceLost    = errors.New("the device is marked lost")
	ErrDeviceRetired = errors.New("the device is retired")
	// ErrBindingRevoked: the provisioning key file's binding is revoked or
	// is another device's (Unlock, Claim).
	ErrBindingRevoked = errors.New("the provisioning key file is revoked")
	// ErrLoginRefused: the directory refused the account or password
	// (Claim).
	ErrLoginRefused = errors.New("the directory refused the sign-in")
	// ErrUserRemoved: the account is no longer a user of the device
	// (SignIn).
	ErrUserRemoved = errors.New("the account is no longer a user of this device")
	// ErrNotAllowed: the policy does not let this account claim the device
	// (Claim), or does not allow autoboot and no user who claimed the
	// device is at the prompt (Unlock, Transport).
	ErrNotAllowed = errors.New("the policy does not allow this account on this device")
	// ErrTooManyUsers: the device has as many users as its policy allows
	// (Claim).
	ErrTooManyUsers = errors.New("the device has as many users as its policy allows")
	// ErrRoleRefused: the administrator's role does not allow the call,
	// such as an enrol-only administrator's (store.RoleEnroll) for
	// anything but Enroll (administrator methods).
	ErrRoleRefused = errors.New("the administrator's role does not allow this")
	// ErrNotFound: no such device, binding or administrator
	// (administrator methods, Revoke).
	ErrNotFound = errors.New("no such device or binding")
	// ErrUnknownAccount: the directory has no account of that name that
	// may sign in, so it cannot own a device (Enroll with an owner).
	ErrUnknownAccount = errors.New("the directory has no such account that may sign in")
	// ErrUnavailable: the server cannot reach what it needs (the
	// directory, its database); try again later (any method).
	ErrUnavailable = errors.New("the key server is unavailable")
	// ErrUnreachable: the server could not be reached or did not answer
	// in time (any method).
	ErrUnreachable = errors.New("the key server cannot be reached")
	// ErrServerNotPinned: the server's TLS key is not the pinned one
	// (any method). Nothing was sent.
	ErrServerNotPinned = errors.New("the key server's key is not the one pinned in the key file")
)

// A code is one kind of refusal on the wire: errorV1.Code.
type code struct {
	name     string
	status   int
	sentinel error
}

var (
	codeBadRequest     = code{"bad-request", http.StatusBadRequest, nil}
	codeTooLarge       = code{"too-large", http.StatusRequestEntityTooLarge, nil}
	codeUnknownKey     = code{"unknown-key", http.StatusUnauthorized, ErrUnknownKey}
	codeDeviceLost     = code{"device-lost", http.StatusForbidden, ErrDeviceLost}
	codeDeviceRetired  = code{"device-retired", http.StatusForbidden, ErrDeviceRetired}
	codeBindingRevoked = code{"binding-revoked", http.StatusForbidden, ErrBindingRevoked}
	codeLoginRefused   = code{"login-refused", http.StatusForbidden, ErrLoginRefused}
	codeNotAllowed     = code{"not-allowed", http.StatusForbidden, ErrNotAllowed}
	codeUserRemoved    = code{"user-removed", http.StatusForbidden, ErrUserRemoved}
	codeTooManyUsers   = code{"too-many-users", http.StatusForbidden, ErrTooManyUsers}
	codeRoleRefused    = code{"role-refused", http.StatusForbidden, ErrRoleRefused}
	codeNotFound       = code{"not-found", http.StatusNotFound, ErrNotFound}
	codeUnknownAccount = code{"unknown-account", http.StatusNotFound, ErrUnknownAccount}
	// codeUnknownExchangeKey is tang's ErrUnknownKey: the key was retired.
	codeUnknownExchangeKey = code{"unknown-exchange-key", http.StatusNotFound, tang.ErrUnknownKey}
	codeUnavailable        = code{"unavailable", http.StatusServiceUnavailable, ErrUnavailable}
	codeInternal           = code{"internal", http.StatusInternalServerError, nil}
)

var codes = []code{
	codeBadRequest, codeTooLarge, codeUnknownKey, codeDeviceLost, codeDeviceRetired,
	codeBindingRevoked, codeLoginRefused, codeNotAllowed, codeUserRemoved, codeTooManyUsers, codeRoleRefused,
	codeNotFound, codeUnknownAccount, codeUnknownExchangeKey, codeUnavailable, codeInternal,
}

// refusal is a handler's error that becomes an error answer. Its message
// goes to the client: it never holds a secret or an internal error.
type refusal struct {
	code    code
	message string
}

func (r *refusal) Error() string { return r.code.name + ": " + r.message }

func refuse(c code, format string, args ...any) error {
	return &refusal{c, fmt.Sprintf(format, args...)}
}

// Error is the server's refusal as the client sees it.
type Error struct {
	// Status is the HTTP status; Code names the refusal.
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("key server refused (%d %s): %s", e.Status, e.Code, e.Message)
}

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	for _, c := range codes {
		if c.name == e.Code {
			return c.sentinel != nil && c.sentinel == target
		}
	}
	return false
}

// Sentence returns what to tell a person at the pre-boot prompt about an
// error of the client's methods.
func Sentence(err error) string {
	switch {
	case errors.Is(err, ErrDeviceLost), errors.Is(err, ErrDeviceRetired):
		return "This device has been blocked by your IT department. Contact the help desk."
	case errors.Is(err, ErrBindingRevoked):
		return "This device's start-up key is no longer valid. Sign in with your account, " +
			"or contact the help desk."
	case errors.Is(err, ErrLoginRefused):
		return "The account name or password is not correct. Try again."
	case errors.Is(err, ErrNotAllowed):
		return "Your account may not use this device. Contact the help desk."
	case errors.Is(err, ErrUserRemoved):
		return "Your account is no longer a user of this device. Contact the help desk."
	case errors.Is(err, ErrTooManyUsers):
		return "This device already has as many users as allowed. Contact the help desk."
	case errors.Is(err, ErrUnknownAccount):
		return "The account named as this device's owner does not exist. Contact the help desk."
	case errors.Is(err, ErrServerNotPinned), errors.Is(err, ErrUnknownKey):
		return "The enterprise key server could not be verified. Contact the help desk."
	case errors.Is(err, ErrRoleRefused):
		return "This image's key server credential may not do this. Contact your IT department."
	}
	return "The enterprise key server cannot be reached. Check the network cable or " +
		"Wi-Fi, or try again later."
}
