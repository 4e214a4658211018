package ad

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
	"github.com/pbn-project/pbn/pbn/secret"
)

// ChangePassword changes account's password from old to new, as a person
// does at the prompt when Login's error says NeedsNewPassword; Login with
// the new password then continues. It binds as the configured
// ChangeAccount, finds the account, and sends one modify that deletes the
// old unicodePwd value and adds the new one (MS-ADTS 3.1.1.3.1.5.1), which
// AD accepts only over an encrypted connection: four LDAP round trips on
// LDAPS. The passwords are not wiped; the caller does that.
//
// It returns an *Error whose Reason is BadAccount, EmptyPassword or
// ChangeUnavailable before anything is sent; WrongCredentials when old is
// wrong; PasswordRejected when new breaks the domain's rules; Unreachable or
// PinMismatch when no DC answers; Other when the change account cannot bind.
//
// TODO: the Kerberos password change (RFC 3244, kpasswd), which AD allows
// with the old password alone, would need no change account in the image.
func (c *Client) ChangePassword(ctx context.Context, account string, old, new secret.Bytes) error {
	a, err := c.parse(account)
	if err != nil {
		return err
	}
	if len(old) == 0 || len(new) == 0 {
		return &Error{Reason: EmptyPassword, Account: a.String()}
	}
	if c.cfg.ChangeAccount == "" || len(c.cfg.ChangeAccountPassword) == 0 {
		return &Error{Reason: ChangeUnavailable, Account: a.String()}
	}
	oldPwd, err := unicodePwd(old)
	if err != nil {
		return &Error{Reason: WrongCredentials, Account: a.String(), Err: err}
	}
	defer oldPwd.Wipe()
	newPwd, err := unicodePwd(new)
	if err != nil {
		return &Error{Reason: PasswordRejected, Account: a.String(), Err: err}
	}
	defer newPwd.Wipe()

	_, _, err = c.withDC(ctx, a.String(), func(s *session) error {
		if err := s.bindAs(a, "change", c.cfg.ChangeAccount, c.cfg.ChangeAccountPassword); err != nil {
			return err
		}
		res, err := s.search(ldap.NewSearchRequest(c.cfg.BaseDN, ldap.ScopeWholeSubtree,
			ldap.NeverDerefAliases, 2, 0, false, c.userFilter(a), []string{"userPrincipalName"}, nil))
		if err != nil {
			return &Error{Reason: Other, Account: a.String(), DC: s.dc.raw, Err: err}
		}
		e := pickUser(res.Entries, a)
		if e == nil {
			return &Error{Reason: WrongCredentials, Account: a.String(), DC: s.dc.raw, Err: errNotFound}
		}
		m := ldap.NewModifyRequest(e.DN, nil)
		m.Delete("unicodePwd", []string{view(oldPwd)})
		m.Add("unicodePwd", []string{view(newPwd)})
		if err := s.modify(m); err != nil {
			return changeError(a.String(), s.dc.raw, err)
		}
		return nil
	})
	return err
}

// Win32 errors (MS-ERREF 2.2) that start the diagnostic message of a
// refused password change.
const (
	errorInvalidPassword     = 0x56  // the old password is wrong
	errorPasswordRestriction = 0x52d // the new one breaks a rule
)

// changeError maps a refused unicodePwd modify to an *Error.
func changeError(account, dc string, err error) error {
	e := &Error{Reason: Other, Account: account, DC: dc, Err: err}
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode >= ldap.ErrorNetwork {
		return e // not answered: withDC tries the next DC
	}
	switch code, _ := LeadingCode(le.Err.Error()); {
	case code == errorInvalidPassword:
		e.Reason = WrongCredentials
	case code == errorPasswordRestriction || le.ResultCode == ldap.LDAPResultConstraintViolation:
		e.Reason = PasswordRejected
	}
	return e
}

// LeadingCode returns the Win32 error that starts an AD diagnostic message
// as eight hexadecimal digits and a colon, such as 0x52d in
// "0000052D: Constraint violation - check_password_restrictions: ...".
func LeadingCode(msg string) (uint32, bool) {
	hex, _, ok := strings.Cut(msg, ":")
	if !ok || len(hex) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 32)
	return uint32(n), err == nil
}

// unicodePwd encodes a password as the unicodePwd attribute takes it: in
// double quotes, UTF-16LE (MS-ADTS 3.1.1.3.1.5.1). It refuses bytes that are
// not UTF-8.
func unicodePwd(pw secret.Bytes) (secret.Bytes, error) {
	out := make(secret.Bytes, 0, 2*len(pw)+8)
	put := func(r rune) {
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			out = append(out, byte(r1), byte(r1>>8), byte(r2), byte(r2>>8))
			return
		}
		out = append(out, byte(r), byte(r>>8))
	}
	put('"')
	for i := 0; i < len(pw); {
		r, n := utf8.DecodeRune(pw[i:])
		if r == utf8.RuneError && n <= 1 {
			out.Wipe()
			return nil, errors.New("password is not UTF-8")
		}
		put(r)
		i += n
	}
	put('"')
	return out, nil
}
