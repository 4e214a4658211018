package samba

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/go-ldap/ldap/v3"
)

// State is the condition a user account is created in.
type State int

// The states AddUser can create. Each is what an administrator does in
// Active Directory Users and Computers, or what happens to an account.
const (
	// Active is an ordinary, usable account.
	Active State = iota
	// Disabled has ACCOUNTDISABLE in userAccountControl (MS-ADTS 2.2.16).
	Disabled
	// Locked was locked out by LockoutThreshold failed simple binds under a
	// password settings object that applies to this user alone.
	Locked
	// AccountExpired has accountExpires a day in the past.
	AccountExpired
	// PasswordExpired has pwdLastSet 60 days in the past, beyond the
	// domain's maxPwdAge of 42 days.
	PasswordExpired
	// MustChange has pwdLastSet 0: change the password at next logon.
	MustChange
	// LogonHoursDenied has logonHours with every hour of the week denied.
	LogonHoursDenied
	// WorkstationDenied has userWorkstations naming one other computer.
	WorkstationDenied
)

var stateNames = [...]string{"active", "disabled", "locked", "account-expired",
	"password-expired", "must-change", "logon-hours-denied", "workstation-denied"}

// String names the state, for test names and logs.
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "state" + strconv.Itoa(int(s))
	}
	return stateNames[s]
}

// LockoutThreshold is how many wrong passwords lock a Locked user.
const LockoutThreshold = 3

// User describes an account for AddUser.
type User struct {
	// Name is the sAMAccountName and the CN; the UPN is Name@DNSDomain.
	Name string
	// Password is the account's password; the domain's complexity rules
	// apply (upper and lower case and a digit, at least 7 long).
	Password string
	// DisplayName is optional.
	DisplayName string
	// State is the condition to leave the account in.
	State State
}

// groupType of a global security group (MS-ADTS, groupType bits).
const globalSecurityGroup = "-2147483646"

// userAccountControl bits (MS-ADTS 2.2.16).
const (
	uacNormalAccount = 0x200
	uacDisabled      = 0x2
)

// AddUser creates u in CN=Users and returns its DN.
func (d *DC) AddUser(ctx context.Context, u User) (string, error) {
	c, err := d.admin()
	if err != nil {
		return "", err
	}
	defer c.Close()

	dn := "CN=" + ldap.EscapeDN(u.Name) + ",CN=Users," + d.BaseDN
	uac := uacNormalAccount
	if u.State == Disabled {
		uac |= uacDisabled
	}
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"user"})
	add.Attribute("sAMAccountName", []string{u.Name})
	add.Attribute("userPrincipalName", []string{u.Name + "@" + d.DNSDomain})
	if u.DisplayName != "" {
		add.Attribute("displayName", []string{u.DisplayName})
	}
	add.Attribute("unicodePwd", []string{unicodePwd(u.Password)})
	add.Attribute("userAccountControl", []string{strconv.Itoa(uac)})
	if err := c.Add(add); err != nil {
		return "", fmt.Errorf("samba: add user %s: %w", u.Name, err)
	}
	if err := d.setState(ctx, c, dn, u); err != nil {
		return "", fmt.Errorf("samba: user %s: %w", u.Name, err)
	}
	return dn, nil
}

func (d *DC) setState(ctx context.Context, c *ldap.Conn, dn string, u User) error {
	replace := func(attr, value string) error {
		m := ldap.NewModifyRequest(dn, nil)
		m.Replace(attr, []string{value})
		return c.Modify(m)
	}
	switch u.State {
	case AccountExpired:
		return replace("accountExpires", strconv.FormatInt(fileTime(time.Now().Add(-24*time.Hour)), 10))
	case MustChange:
		return replace("pwdLastSet", "0")
	case LogonHoursDenied:
		return replace("logonHours", string(make([]byte, 21))) // 168 hour bits, all 0
	case WorkstationDenied:
		return replace("userWorkstations", "NOWHERE")
	case PasswordExpired:
		return d.setPwdLastSet(ctx, dn, time.Now().Add(-60*24*time.Hour))
	case Locked:
		return d.lockOut(c, dn, u)
	}
	return nil
}

// lockOut puts the user under a password settings object (msDS-PasswordSettings,
// fine-grained password policy) with a lockout threshold, so that the
// domain's own policy (no lockout) stays as it is for every other test user,
// then fails LockoutThreshold binds with a wrong password.
func (d *DC) lockOut(c *ldap.Conn, dn string, u User) error {
	pso := "CN=pbn-lockout-" + ldap.EscapeDN(u.Name) + ",CN=Password Settings Container,CN=System," + d.BaseDN
	add := ldap.NewAddRequest(pso, nil)
	for attr, v := range map[string]string{
		"objectClass":                              "msDS-PasswordSettings",
		"msDS-PasswordSettingsPrecedence":          "1",
		"msDS-PasswordReversibleEncryptionEnabled": "FALSE",
		"msDS-PasswordHistoryLength":               "0",
		"msDS-PasswordComplexityEnabled":           "FALSE",
		"msDS-MinimumPasswordLength":               "1",
		"msDS-MinimumPasswordAge":                  "0",
		"msDS-MaximumPasswordAge":                  interval(42 * 24 * time.Hour),
		"msDS-LockoutThreshold":                    strconv.Itoa(LockoutThreshold),
		"msDS-LockoutObservationWindow":            interval(30 * time.Minute),
		"msDS-LockoutDuration":                     interval(30 * time.Minute),
		"msDS-PSOAppliesTo":                        dn,
	} {
		add.Attribute(attr, []string{v})
	}
	if err := c.Add(add); err != nil {
		return fmt.Errorf("password settings: %w", err)
	}
	for range LockoutThreshold {
		uc, err := d.dial()
		if err != nil {
			return err
		}
		err = uc.Bind(u.Name+"@"+d.DNSDomain, u.Password+"-wrong")
		uc.Close()
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return fmt.Errorf("wrong-password bind = %v, want invalid credentials", err)
		}
	}
	return nil
}

// setPwdLastSet writes pwdLastSet, which LDAP only lets be 0 or -1, through
// Samba's Python bindings on the DC's own database, with the private control
// DSDB_CONTROL_PASSWORD_BYPASS_LAST_SET_OID that a system session may use.
func (d *DC) setPwdLastSet(ctx context.Context, dn string, t time.Time) error {
	py, err := sambaPython()
	if err != nil {
		return err
	}
	const script = `import sys, ldb
from samba.samdb import SamDB
from samba.param import LoadParm
from samba.auth import system_session
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
m = ldb.Message()
m.dn = ldb.Dn(db, sys.argv[2])
m["pwdLastSet"] = ldb.MessageElement(sys.argv[3], ldb.FLAG_MOD_REPLACE, "pwdLastSet")
db.modify(m, controls=["local_oid:1.3.6.1.4.1.7165.4.3.20:0"])
`
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	out, err := d.command(ctx, py, "-c", script, d.conf(), dn,
		strconv.FormatInt(fileTime(t), 10)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("set pwdLastSet: %w: %s", err, tail(out))
	}
	return nil
}

// sambaPython returns the interpreter samba-tool runs on, which has Samba's
// Python modules (a python3 earlier on PATH may not).
func sambaPython() (string, error) {
	tool, err := exec.LookPath("samba-tool")
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(tool)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(strings.TrimPrefix(line, "#!"))
	if len(fields) == 0 {
		return "", fmt.Errorf("%s has no interpreter line", tool)
	}
	return fields[0], nil
}

// AddGroup creates a global security group in CN=Users with the members
// given by DN, users or groups, and returns its DN.
func (d *DC) AddGroup(name string, members ...string) (string, error) {
	c, err := d.admin()
	if err != nil {
		return "", err
	}
	defer c.Close()

	dn := "CN=" + ldap.EscapeDN(name) + ",CN=Users," + d.BaseDN
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"group"})
	add.Attribute("sAMAccountName", []string{name})
	add.Attribute("groupType", []string{globalSecurityGroup})
	if len(members) > 0 {
		add.Attribute("member", members)
	}
	if err := c.Add(add); err != nil {
		return "", fmt.Errorf("samba: add group %s: %w", name, err)
	}
	return dn, nil
}

// admin returns a connection bound as Administrator.
func (d *DC) admin() (*ldap.Conn, error) {
	c, err := d.dial()
	if err != nil {
		return nil, fmt.Errorf("samba: %w", err)
	}
	if err := c.Bind("Administrator@"+d.DNSDomain, d.AdminPassword); err != nil {
		c.Close()
		return nil, fmt.Errorf("samba: bind as Administrator: %w", err)
	}
	return c, nil
}

// unicodePwd encodes a password as the unicodePwd attribute wants it: in
// double quotes, UTF-16LE (MS-ADTS 3.1.1.3.1.5.1).
func unicodePwd(pw string) string {
	u := utf16.Encode([]rune(`"` + pw + `"`))
	b := make([]byte, 2*len(u))
	for i, r := range u {
		binary.LittleEndian.PutUint16(b[2*i:], r)
	}
	return string(b)
}

// fileTime returns t as AD stores times: 100 ns intervals since 1601-01-01
// UTC (MS-DTYP 2.3.3 FILETIME).
func fileTime(t time.Time) int64 {
	const epochDiff = 11644473600 // seconds from 1601 to 1970
	return (t.Unix()+epochDiff)*1e7 + int64(t.Nanosecond()/100)
}

// interval returns d as AD stores a policy interval: negative 100 ns units.
func interval(d time.Duration) string {
	return strconv.FormatInt(-int64(d/100), 10)
}

// AddMember adds members, given by DN, to the group named group, which
// AddGroup made.
func (d *DC) AddMember(group string, members ...string) error {
	c, err := d.admin()
	if err != nil {
		return err
	}
	defer c.Close()

	m := ldap.NewModifyRequest("CN="+ldap.EscapeDN(group)+",CN=Users,"+d.BaseDN, nil)
	m.Add("member", members)
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("samba: add members to group %s: %w", group, err)
	}
	return nil
}
