package ad

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// Reason is why a login or a password change failed, in the terms that the
// pre-boot prompt and pbnctl branch on.
type Reason int

// The reasons. Login and ChangePassword return them inside an *Error; get
// one back with ReasonOf.
const (
	// Other is any failure that no reason below describes.
	Other Reason = iota
	// WrongCredentials: unknown account or wrong password (sub-codes 525 and
	// 52e; AD does not tell them apart to the client, and neither do we).
	WrongCredentials
	// AccountDisabled: userAccountControl has ACCOUNTDISABLE (533).
	AccountDisabled
	// AccountLocked: locked out after wrong passwords (775).
	AccountLocked
	// AccountExpired: accountExpires has passed (701).
	AccountExpired
	// PasswordExpired: the password is older than the domain allows (532).
	PasswordExpired
	// PasswordMustChange: an administrator set change at next logon (773).
	PasswordMustChange
	// LogonHours: logonHours forbids this time (530).
	LogonHours
	// Workstation: userWorkstations does not list this computer (531).
	Workstation
	// NotAllowed: the account is in none of the owner or administrator groups.
	NotAllowed
	// Unreachable: no domain controller answered; *Error.Causes has each
	// DC's cause.
	Unreachable
	// PinMismatch: no domain controller answered and at least one presented
	// a certificate that the pinned CA did not issue for its name.
	PinMismatch
	// BadAccount: what was typed is not an account name.
	BadAccount
	// EmptyPassword: no password was typed. An empty simple bind is an
	// anonymous bind (RFC 4513 section 5.1.2) and proves nothing.
	EmptyPassword
	// PasswordRejected: the new password breaks the domain's password rules
	// (length, complexity, history or minimum age).
	PasswordRejected
	// ChangeUnavailable: the configuration has no account to carry a
	// password change.
	ChangeUnavailable
	// LookupUnavailable: the configuration has no account to look
	// accounts up with (Lookup).
	LookupUnavailable
)

var reasons = [...]struct{ text, sentence string }{
	Other: {"failed",
		"Sign-in failed. Try again, or tell your IT help desk."},
	WrongCredentials: {"wrong account name or password",
		"The account name or password is wrong. Try again."},
	AccountDisabled: {"account disabled",
		"This account is disabled. Ask your IT help desk to enable it."},
	AccountLocked: {"account locked out",
		"This account is locked after too many wrong passwords. Wait, or ask your IT help desk to unlock it."},
	AccountExpired: {"account expired",
		"This account has expired. Ask your IT help desk to extend it."},
	PasswordExpired: {"password expired",
		"Your password has expired. Choose a new one."},
	PasswordMustChange: {"password must be changed",
		"You must change your password before you sign in. Choose a new one."},
	LogonHours: {"outside logon hours",
		"This account may not sign in at this time. Try again later, or ask your IT help desk."},
	Workstation: {"not allowed on this workstation",
		"This account may not sign in on this computer. Ask your IT help desk."},
	NotAllowed: {"not in an allowed group",
		"This account may not use this computer. Ask your IT help desk to add you to the right group."},
	Unreachable: {"no domain controller reachable",
		"No domain controller answers. Check the network cable or Wi-Fi, then try again."},
	PinMismatch: {"domain controller certificate does not match the pinned CA",
		"The domain controller could not prove who it is. " +
			"Do not type your password again; tell your IT help desk."},
	BadAccount: {"not an account name",
		`Type your account as name@domain, DOMAIN\name or name.`},
	EmptyPassword: {"empty password",
		"Type your password."},
	PasswordRejected: {"new password rejected by the domain's password rules",
		"The domain does not accept that new password. Choose a longer one you have not used before."},
	ChangeUnavailable: {"password change not configured",
		"Your password cannot be changed here. Change it on another computer, then sign in again."},
	LookupUnavailable: {"account lookup not configured",
		"Accounts cannot be looked up here. Ask your IT help desk."},
}

// String returns a short lowercase description, for logs and errors.
func (r Reason) String() string {
	if r < 0 || int(r) >= len(reasons) {
		return "reason " + strconv.Itoa(int(r))
	}
	return reasons[r].text
}

// Sentence returns what to tell the person at the prompt.
func (r Reason) Sentence() string {
	if r < 0 || int(r) >= len(reasons) {
		r = Other
	}
	return reasons[r].sentence
}

// Error is the error Login and ChangePassword return. It carries no secret.
type Error struct {
	Reason Reason
	// Account is the account as parsed, empty when it did not parse.
	Account string
	// DC is the URL of the domain controller that answered, if one did.
	DC string
	// SubCode is the AD sub-code of a failed bind (the Win32 error after
	// "data" in the diagnostic message), 0 if there was none.
	SubCode uint32
	// Causes are each DC's failure when Reason is Unreachable or PinMismatch.
	Causes []DCError
	// Err is the underlying error, if any.
	Err error
}

// DCError is why one domain controller could not be used.
type DCError struct {
	URL string
	Err error
}

func (e DCError) Error() string { return e.URL + ": " + e.Err.Error() }

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("ad: ")
	if e.Account != "" {
		fmt.Fprintf(&b, "%s: ", e.Account)
	}
	if e.DC != "" {
		fmt.Fprintf(&b, "%s: ", e.DC)
	}
	b.WriteString(e.Reason.String())
	if e.SubCode != 0 {
		fmt.Fprintf(&b, " (data %x)", e.SubCode)
	}
	for _, c := range e.Causes {
		fmt.Fprintf(&b, "; %v", c)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the underlying error and each DC's cause.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, len(e.Causes)+1)
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	for _, c := range e.Causes {
		errs = append(errs, c.Err)
	}
	return errs
}

// Sentence returns what to tell the person at the prompt.
func (e *Error) Sentence() string { return e.Reason.Sentence() }

// ReasonOf returns the Reason of an *Error in err's chain, or Other.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return Other
}

// Sentence returns what to tell the person at the prompt about err.
func Sentence(err error) string { return ReasonOf(err).Sentence() }

// NeedsNewPassword reports whether err asks the person to choose a new
// password (expired, or must change), after which ChangePassword and a new
// Login let them in.
func NeedsNewPassword(err error) bool {
	r := ReasonOf(err)
	return r == PasswordExpired || r == PasswordMustChange
}

// subCodeReasons maps the Win32 errors (MS-ERREF 2.2) that AD puts after
// "data" in a failed bind's diagnostic message to reasons.
var subCodeReasons = map[uint32]Reason{
	0x525: WrongCredentials, // ERROR_NO_SUCH_USER
	0x52e: WrongCredentials, // ERROR_LOGON_FAILURE
	0x530: LogonHours,       // ERROR_INVALID_LOGON_HOURS
	0x531: Workstation,      // ERROR_INVALID_WORKSTATION
	0x532: PasswordExpired,  // ERROR_PASSWORD_EXPIRED
	0x533: AccountDisabled,  // ERROR_ACCOUNT_DISABLED
	0x701: AccountExpired,   // ERROR_ACCOUNT_EXPIRED
	0x773: PasswordMustChange,
	0x775: AccountLocked, // ERROR_ACCOUNT_LOCKED_OUT
}

// SubCode returns the hexadecimal Win32 error after "data " in an AD
// diagnostic message, such as 52e in
// "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1".
func SubCode(msg string) (uint32, bool) {
	_, rest, ok := strings.Cut(msg, ", data ")
	if !ok {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool {
		return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F')
	})
	if end < 0 {
		end = len(rest)
	}
	if end == 0 || end > 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(rest[:end], 16, 32)
	return uint32(n), err == nil
}

// bindError maps a failed simple bind to an *Error.
func bindError(account, dc string, err error) *Error {
	e := &Error{Reason: Other, Account: account, DC: dc, Err: err}
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultInvalidCredentials {
		return e
	}
	e.Reason = WrongCredentials
	if code, ok := SubCode(le.Err.Error()); ok {
		e.SubCode = code
		if r, ok := subCodeReasons[code]; ok {
			e.Reason = r
		}
	}
	return e
}

// isPinMismatch reports whether err is a failed certificate verification.
func isPinMismatch(err error) bool {
	var ve *tls.CertificateVerificationError
	return errors.As(err, &ve)
}
