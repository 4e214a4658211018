package ad

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

func TestSubCode(t *testing.T) {
	tests := []struct {
		msg  string
		want uint32
		ok   bool
	}{
		{"80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1", 0x52e, true},
		{"80090308: LdapErr: DSID-0C09042F, comment: AcceptSecurityContext error, data 775, v2580", 0x775, true},
		{"... error, data 701", 0x701, true},
		{"... error, data , v1db1", 0, false},
		{"... error, data 123456789, v1", 0, false},
		{"Invalid credentials", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := SubCode(tt.msg)
		if got != tt.want || ok != tt.ok {
			t.Errorf("SubCode(%q) = %x, %v; want %x, %v", tt.msg, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzSubCode(f *testing.F) {
	f.Add("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1")
	f.Add(", data ffffffff")
	f.Add(", data ")
	f.Fuzz(func(t *testing.T, msg string) {
		code, ok := SubCode(msg)
		if ok && !holdsHex(strings.ToLower(msg), code) {
			t.Fatalf("SubCode(%q) = %x, which the message does not hold", msg, code)
		}
		_ = bindError("a", "dc", &ldap.Error{ResultCode: ldap.LDAPResultInvalidCredentials, Err: errors.New(msg)})
	})
}

// holdsHex reports whether msg holds ", data " and code in hexadecimal,
// zero-padded to any width up to 8.
func holdsHex(msg string, code uint32) bool {
	for w := 1; w <= 8; w++ {
		if strings.Contains(msg, fmt.Sprintf(", data %0*x", w, code)) {
			return true
		}
	}
	return false
}

func TestLeadingCode(t *testing.T) {
	for _, tt := range []struct {
		msg  string
		want uint32
		ok   bool
	}{
		{"0000052D: Constraint violation - check_password_restrictions: the password is too short", 0x52d, true},
		{"00000056: Constraint violation - check_password_restrictions", 0x56, true},
		{"56: short", 0, false},
		{"0000005G: bad", 0, false},
		{"no colon", 0, false},
	} {
		got, ok := LeadingCode(tt.msg)
		if got != tt.want || ok != tt.ok {
			t.Errorf("LeadingCode(%q) = %x, %v; want %x, %v", tt.msg, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzLeadingCode(f *testing.F) {
	f.Add("0000052D: Constraint violation")
	f.Add("ffffffff:")
	f.Fuzz(func(t *testing.T, msg string) {
		code, ok := LeadingCode(msg)
		if ok && !strings.HasPrefix(strings.ToLower(msg), fmt.Sprintf("%08x:", code)) {
			t.Fatalf("LeadingCode(%q) = %x, which does not start the message", msg, code)
		}
	})
}

func TestReasonsHaveSentences(t *testing.T) {
	for r := Other; r <= ChangeUnavailable; r++ {
		if r.Sentence() == "" || r.String() == "" || !strings.HasSuffix(r.Sentence(), ".") {
			t.Errorf("Reason %d: String %q, Sentence %q", r, r, r.Sentence())
		}
	}
	if Reason(99).Sentence() != Other.Sentence() {
		t.Errorf("an unknown reason's sentence is not Other's")
	}
}

// TestAccountState checks the state read after a successful bind, for DCs
// that let a bind through. Samba refuses every such bind with a sub-code
// (see internal/samba's TestStates), so the entries here are made up.
func TestAccountState(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	past, future := fmt.Sprint(fileTime(now.Add(-time.Hour))), fmt.Sprint(fileTime(now.Add(time.Hour)))
	tests := []struct {
		attrs map[string][]string
		want  Reason
	}{
		{map[string][]string{"userAccountControl": {"512"}, "pwdLastSet": {past}}, Other},
		{map[string][]string{"userAccountControl": {"514"}}, AccountDisabled},
		{map[string][]string{"msDS-User-Account-Control-Computed": {"16"}}, AccountLocked},
		{map[string][]string{"accountExpires": {past}}, AccountExpired},
		{map[string][]string{"accountExpires": {future}, "pwdLastSet": {past}}, Other},
		{map[string][]string{"accountExpires": {"9223372036854775807"}, "pwdLastSet": {past}}, Other},
		{map[string][]string{"accountExpires": {"0"}, "pwdLastSet": {"0"}}, PasswordMustChange},
		{map[string][]string{"msDS-User-Account-Control-Computed": {"8388608"}}, PasswordExpired},
	}
	for _, tt := range tests {
		if got := accountState(ldap.NewEntry("CN=x", tt.attrs), now); got != tt.want {
			t.Errorf("accountState(%v) = %v, want %v", tt.attrs, got, tt.want)
		}
	}
}
