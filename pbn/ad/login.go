// Package ad authenticates Active Directory accounts over LDAP, the way a
// domain controller sees them, for the pre-boot prompt and pbnctl.
//
// Every connection is TLS (LDAPS, or StartTLS before anything else) to a DC
// whose certificate the pinned CA issued; passwords are never empty and
// never sent in the clear; every value put into a filter is escaped
// (RFC 4515 section 3). A login is a simple bind as the account (RFC 4513
// section 5.1.3), a search for the account's identity and state, and a
// search for its groups with the in-chain matching rule
// LDAP_MATCHING_RULE_TRANSITIVE_EVAL (MS-ADTS 3.1.1.3.4.4.3): three LDAP
// round trips on LDAPS, four with StartTLS.
//
// Why a login fails is read first from the bind's AD sub-code (the Win32
// error after "data" in the diagnostic message, which Samba and Windows
// send when the password is right but the account may not log on), and
// then, after a successful bind, from the account's state
// (userAccountControl, MS-ADTS 2.2.16, and the constructed
// msDS-User-Account-Control-Computed; accountExpires; pwdLastSet), in case
// a DC let the bind through. Each failure is an *Error with a Reason;
// Reason.Sentence is what to tell the person.
package ad

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Identity is who signed in, as the rest of PBN needs it.
type Identity struct {
	// UPN is the userPrincipalName; empty if the account has none.
	UPN string
	// SAMAccountName is the down-level logon name, without the domain.
	SAMAccountName string
	// DisplayName is the displayName; may be empty.
	DisplayName string
	// SID is the objectSid in string form (MS-DTYP 2.4.2.1).
	SID string
	// GUID is the objectGUID in string form (MS-DTYP 2.3.4.3).
	GUID string
	// DN is the account's distinguished name.
	DN string
	// Groups are the groups the account belongs to, nested ones included,
	// its primary group (primaryGroupID, usually Domain Users), which AD
	// does not list in member, and the groups the primary group is nested
	// in.
	Groups []Group
	// Owner and Admin say whether the account is in an owner or an
	// administrator group of the configuration.
	Owner, Admin bool
	// DC is the URL of the domain controller that answered.
	DC string
	// RoundTrips is how many LDAP requests waited for an answer.
	RoundTrips int
}

// Group is a group an account belongs to.
type Group struct {
	// SID is the group's objectSid in string form.
	SID string
	// Name is its sAMAccountName.
	Name string
	// DN is its distinguished name.
	DN string
}

// userAttrs are read for a login (MS-ADTS attribute names).
var userAttrs = []string{
	"userPrincipalName", "sAMAccountName", "displayName", "objectSid", "objectGUID",
	"userAccountControl", "msDS-User-Account-Control-Computed", "accountExpires", "pwdLastSet",
	"primaryGroupID",
}

// Login authenticates account with password on the first DC that answers.
// The password is not wiped; the caller does that.
//
// It returns an *Error whose Reason is BadAccount or EmptyPassword before
// anything is sent; WrongCredentials, AccountDisabled, AccountLocked,
// AccountExpired, PasswordExpired, PasswordMustChange, LogonHours or
// Workstation when the DC refuses the account; NotAllowed when the account
// is in no allowed group; Unreachable or PinMismatch when no DC answers.
func (c *Client) Login(ctx context.Context, account string, password secret.Bytes) (*Identity, error) {
	a, err := c.parse(account)
	if err != nil {
		return nil, err
	}
	if len(password) == 0 {
		return nil, &Error{Reason: EmptyPassword, Account: a.String()}
	}

	return c.identify(ctx, a, func(s *session) error {
		if err := s.bind(c.bindName(a), password); err != nil {
			return bindError(a.String(), s.dc.raw, err)
		}
		return nil
	})
}

// identify reads a's identity and groups on the first DC that answers,
// after bind, and checks that a is in an owner or an administrator group.
func (c *Client) identify(ctx context.Context, a Account, bind func(*session) error) (*Identity, error) {
	var id *Identity
	dc, trips, err := c.withDC(ctx, a.String(), func(s *session) error {
		if err := bind(s); err != nil {
			return err
		}
		var err error
		id, err = c.identity(s, a)
		return err
	})
	if err != nil {
		return nil, err
	}
	id.DC, id.RoundTrips = dc, trips

	id.Owner, id.Admin = c.membership(id.Groups)
	if !id.Owner && !id.Admin {
		return nil, &Error{Reason: NotAllowed, Account: a.String(), DC: dc}
	}
	return id, nil
}

// parse parses account and checks that it names an account of this domain
// by its down-level name, if it has one.
func (c *Client) parse(account string) (Account, error) {
	a, err := ParseAccount(account)
	if err != nil {
		return Account{}, err
	}
	if a.Form == DownLevel && !strings.EqualFold(a.Domain, c.cfg.NetBIOSDomain) {
		// A trusted domain's account would bind, but is not ours to search.
		return Account{}, &Error{Reason: BadAccount, Account: a.String(),
			Err: fmt.Errorf("%w: domain %s is not %s", errAccount, a.Domain, c.cfg.NetBIOSDomain)}
	}
	return a, nil
}

// bindName is the name to bind with: a UPN or down-level name as typed, a
// bare name as a UPN in the configured domain.
func (c *Client) bindName(a Account) string {
	if a.Form == Bare {
		return a.Name + "@" + c.cfg.Domain
	}
	return a.String()
}

// userFilter finds the account that AD bound: by explicit UPN, or by
// sAMAccountName for a down-level or bare name, or for a UPN in the
// configured domain (AD's implicit UPN, sAMAccountName@domain).
func (c *Client) userFilter(a Account) string {
	sam := "(sAMAccountName=" + ldap.EscapeFilter(a.Name) + ")"
	if a.Form == Principal {
		upn := "(userPrincipalName=" + ldap.EscapeFilter(a.String()) + ")"
		if strings.EqualFold(a.Domain, c.cfg.Domain) {
			upn = "(|" + upn + sam + ")"
		}
		sam = upn
	}
	return "(&(objectCategory=person)(objectClass=user)" + sam + ")"
}

// identity reads the bound account's attributes and groups.
func (c *Client) identity(s *session, a Account) (*Identity, error) {
	res, err := s.search(ldap.NewSearchRequest(c.cfg.BaseDN, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 2, 0, false, c.userFilter(a), userAttrs, nil))
	if err != nil {
		return nil, &Error{Reason: Other, Account: a.String(), DC: s.dc.raw, Err: err}
	}
	e := pickUser(res.Entries, a)
	if e == nil {
		return nil, &Error{Reason: WrongCredentials, Account: a.String(), DC: s.dc.raw,
			Err: errNotFound}
	}
	if r := accountState(e, c.cfg.Now()); r != Other {
		return nil, &Error{Reason: r, Account: a.String(), DC: s.dc.raw}
	}

	id := &Identity{
		UPN:            e.GetAttributeValue("userPrincipalName"),
		SAMAccountName: e.GetAttributeValue("sAMAccountName"),
		DisplayName:    e.GetAttributeValue("displayName"),
		DN:             e.DN,
	}
	if id.SID, err = DecodeSID(e.GetRawAttributeValue("objectSid")); err != nil {
		return nil, &Error{Reason: Other, Account: a.String(), DC: s.dc.raw, Err: err}
	}
	if id.GUID, err = DecodeGUID(e.GetRawAttributeValue("objectGUID")); err != nil {
		return nil, &Error{Reason: Other, Account: a.String(), DC: s.dc.raw, Err: err}
	}
	primary := primaryGroupSID(id.SID, e.GetAttributeValue("primaryGroupID"))
	if id.Groups, err = c.groups(s, e.DN, primary); err != nil {
		return nil, &Error{Reason: Other, Account: a.String(), DC: s.dc.raw, Err: err}
	}
	return id, nil
}

// pickUser returns the entry AD bound: the explicit UPN match before the
// implicit one, and nothing when the answer is ambiguous.
func pickUser(entries []*ldap.Entry, a Account) *ldap.Entry {
	var bySAM *ldap.Entry
	for _, e := range entries {
		if a.Form == Principal && strings.EqualFold(e.GetAttributeValue("userPrincipalName"), a.String()) {
			return e
		}
		if bySAM != nil {
			return nil
		}
		bySAM = e
	}
	return bySAM
}

// errNotFound is the cause when the search does not find the bound account.
var errNotFound = errors.New("the bound account is not found in the base DN")

// inChain is LDAP_MATCHING_RULE_TRANSITIVE_EVAL, also called IN_CHAIN
// (MS-ADTS 3.1.1.3.4.4.3), which
// follows member links transitively.
const inChain = "1.2.840.113556.1.4.1941"

// groups returns every group that dn is a member of, directly or through
// other groups, and, with primarySID, the primary group and every group it
// is a member of. The account's membership of its primary group is not a
// member link, so the in-chain rule starts a second chain at the primary
// group, named by its SID in the extended DN form "<SID=...>" that AD
// accepts wherever a DN is expected (MS-ADTS 3.1.1.3.1.2.4): one search
// still.
func (c *Client) groups(s *session, dn, primarySID string) ([]Group, error) {
	filter := "(member:" + inChain + ":=" + ldap.EscapeFilter(dn) + ")"
	if primarySID != "" {
		sid := ldap.EscapeFilter(primarySID)
		filter = "(|" + filter + "(objectSid=" + sid + ")(member:" + inChain + ":=<SID=" + sid + ">))"
	}
	filter = "(&(objectClass=group)" + filter + ")"
	res, err := s.search(ldap.NewSearchRequest(c.cfg.BaseDN, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 0, 0, false, filter, []string{"objectSid", "sAMAccountName"}, nil))
	if err != nil {
		return nil, err
	}
	groups := make([]Group, 0, len(res.Entries))
	for _, e := range res.Entries {
		sid, err := DecodeSID(e.GetRawAttributeValue("objectSid"))
		if err != nil {
			return nil, err
		}
		groups = append(groups, Group{SID: sid, Name: e.GetAttributeValue("sAMAccountName"), DN: e.DN})
	}
	return groups, nil
}

// primaryGroupSID returns the SID of the primary group: the account's
// domain SID with the primaryGroupID as the last sub-authority (MS-ADTS,
// primaryGroupID), or "" without one.
func primaryGroupSID(userSID, rid string) string {
	i := strings.LastIndexByte(userSID, '-')
	if _, err := strconv.ParseUint(rid, 10, 32); err != nil || i < 0 {
		return ""
	}
	return userSID[:i+1] + rid
}

// membership says whether groups hold one of the owner groups and one of the
// administrator groups. With neither configured, everyone is an owner.
func (c *Client) membership(groups []Group) (owner, admin bool) {
	if len(c.cfg.OwnerGroups) == 0 && len(c.cfg.AdminGroups) == 0 {
		return true, false
	}
	return anyOf(groups, c.cfg.OwnerGroups), anyOf(groups, c.cfg.AdminGroups)
}

// anyOf reports whether one of groups is named in names, by SID or name.
func anyOf(groups []Group, names []string) bool {
	for _, n := range names {
		for _, g := range groups {
			if g.SID == n || strings.EqualFold(g.Name, n) {
				return true
			}
		}
	}
	return false
}

// userAccountControl and msDS-User-Account-Control-Computed bits
// (MS-ADTS 2.2.16).
const (
	uacAccountDisable  = 0x2
	uacLockout         = 0x10
	uacPasswordExpired = 0x800000
)

// never is the accountExpires value of an account that never expires, as is 0.
const never = 1<<63 - 1

// accountState returns the reason the account's state forbids a logon at
// now, or Other if none does.
func accountState(e *ldap.Entry, now time.Time) Reason {
	attr := func(name string) int64 {
		n, _ := strconv.ParseInt(e.GetAttributeValue(name), 10, 64)
		return n
	}
	uac, computed := attr("userAccountControl"), attr("msDS-User-Account-Control-Computed")
	expires := attr("accountExpires")
	switch {
	case uac&uacAccountDisable != 0:
		return AccountDisabled
	case computed&uacLockout != 0:
		return AccountLocked
	case expires != 0 && expires != never && expires <= fileTime(now):
		return AccountExpired
	case e.GetAttributeValue("pwdLastSet") == "0":
		return PasswordMustChange
	case computed&uacPasswordExpired != 0:
		return PasswordExpired
	}
	return Other
}

// fileTime returns t as AD stores times: 100 ns intervals since 1601-01-01
// UTC (MS-DTYP 2.3.3).
func fileTime(t time.Time) int64 {
	const epochDiff = 11644473600 // seconds from 1601 to 1970
	return (t.Unix()+epochDiff)*1e7 + int64(t.Nanosecond()/100)
}
