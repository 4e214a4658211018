package ad

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// AccountForm is how a person typed an account.
type AccountForm int

// The account forms ParseAccount accepts (MS-ADTS 5.1.1.1.1, the name forms
// a simple bind accepts).
const (
	// Bare is a name alone, alice: the configured domain is implied.
	Bare AccountForm = iota
	// Principal is a user principal name, alice@corp.example.test.
	Principal
	// DownLevel is a down-level logon name, CORP\alice.
	DownLevel
)

// Account is a parsed account name.
type Account struct {
	Form AccountForm
	// Name is the part that names the user: before @, after \, or all.
	Name string
	// Domain is the UPN suffix (Principal), the NetBIOS domain (DownLevel),
	// or empty (Bare).
	Domain string
}

// Limits on what a person can type as an account. AD allows 20 characters
// in a sAMAccountName and 1024 in a UPN; these leave room and stay small.
const (
	maxName    = 64
	maxDomain  = 255
	maxNetBIOS = 15
)

// errAccount is the cause inside every account name error.
var errAccount = errors.New("not an account name")

// forbidden are the characters a sAMAccountName may not hold (MS-ADTS
// 3.1.1.5.2.2 sAMAccountName constraints) together with the RFC 4515 filter
// specials, refused before any escaping.
const forbidden = "\"/\\[]:;|=,+*?<>@()"

// ParseAccount parses an account as a person types it: alice@corp.example.test,
// CORP\alice or alice. Surrounding spaces are dropped. It returns an *Error
// with Reason BadAccount when s is none of these.
func ParseAccount(s string) (Account, error) {
	a, err := parseAccount(strings.TrimSpace(s))
	if err != nil {
		return Account{}, &Error{Reason: BadAccount, Err: err}
	}
	return a, nil
}

func parseAccount(s string) (Account, error) {
	if !utf8.ValidString(s) {
		return Account{}, fmt.Errorf("%w: not UTF-8", errAccount)
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		return Account{}, fmt.Errorf("%w: control character at %d", errAccount, i)
	}
	var a Account
	if dom, name, ok := strings.Cut(s, `\`); ok {
		a = Account{Form: DownLevel, Name: name, Domain: dom}
		if err := checkNetBIOS(a.Domain); err != nil {
			return Account{}, err
		}
	} else if name, dom, ok := strings.Cut(s, "@"); ok {
		a = Account{Form: Principal, Name: name, Domain: dom}
		if err := checkDNS(a.Domain); err != nil {
			return Account{}, err
		}
	} else {
		a = Account{Form: Bare, Name: s}
	}
	if err := checkName(a.Name); err != nil {
		return Account{}, err
	}
	return a, nil
}

func checkName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("%w: empty name", errAccount)
	case utf8.RuneCountInString(n) > maxName:
		return fmt.Errorf("%w: name longer than %d characters", errAccount, maxName)
	case strings.ContainsAny(n, forbidden):
		return fmt.Errorf("%w: name holds one of %s", errAccount, forbidden)
	case strings.TrimSpace(n) != n || strings.Trim(n, ".") == "":
		return fmt.Errorf("%w: name is blank or dots", errAccount)
	}
	return nil
}

// checkDNS accepts a DNS name of letters, digits and hyphens in dot-separated
// labels (RFC 1123 section 2.1).
func checkDNS(d string) error {
	if d == "" || len(d) > maxDomain {
		return fmt.Errorf("%w: domain is empty or too long", errAccount)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: bad domain label %q", errAccount, label)
		}
		for _, r := range label {
			if !(r == '-' || r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r))) {
				return fmt.Errorf("%w: bad character in domain", errAccount)
			}
		}
	}
	return nil
}

// checkNetBIOS accepts a NetBIOS domain name: at most 15 characters, none of
// them a dot, space or one of the forbidden ones.
func checkNetBIOS(d string) error {
	if d == "" || utf8.RuneCountInString(d) > maxNetBIOS || strings.ContainsAny(d, forbidden+". ") {
		return fmt.Errorf("%w: bad NetBIOS domain", errAccount)
	}
	return nil
}

// String returns the account in the form it was typed.
func (a Account) String() string {
	switch a.Form {
	case Principal:
		return a.Name + "@" + a.Domain
	case DownLevel:
		return a.Domain + `\` + a.Name
	}
	return a.Name
}
