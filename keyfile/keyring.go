package keyfile

import (
	"fmt"

	"github.com/pbn-project/pbn/pbn/secret"
)

// Keyring is the secret part of a key file, stored encrypted under the data
// key.
type Keyring struct {
	// FDE is the secret that opens this key file's LUKS2 keyslot.
	FDE secret.Bytes
	// Groups are the file and folder encryption keys of the groups the user
	// belongs to.
	Groups []GroupKey
	// Enterprise is the enterprise key for file sync; it may be empty.
	Enterprise secret.Bytes
}

// GroupKey is the key of one Active Directory group.
type GroupKey struct {
	SID  string // the group's objectSid, in string form
	Name string // the group's name, for people to read; may be empty
	Key  secret.Bytes
}

// Wipe overwrites every secret of the keyring with zeros.
func (r *Keyring) Wipe() {
	if r == nil {
		return
	}
	r.FDE.Wipe()
	r.Enterprise.Wipe()
	for _, g := range r.Groups {
		g.Key.Wipe()
	}
}

// Limits of the keyring in format version 1.
const (
	maxFDE    = 512
	minKey    = 16
	maxKey    = 64
	maxGroups = 1024
	maxName   = 256
)

const (
	tagRingFDE        = 1
	tagRingGroup      = 2
	tagRingEnterprise = 3

	tagGroupSID  = 1
	tagGroupName = 2
	tagGroupKey  = 3
)

var ringSpec = map[uint8]fieldSpec{
	tagRingFDE:        {name: "FDE secret", min: 1, max: maxFDE, required: true},
	tagRingGroup:      {name: "group key", min: 1, max: 3 + maxName + 3 + maxName + 3 + maxKey, repeat: maxGroups},
	tagRingEnterprise: {name: "enterprise key", min: minKey, max: maxKey},
}

var groupSpec = map[uint8]fieldSpec{
	tagGroupSID:  {name: "group SID", min: 1, max: maxName, required: true},
	tagGroupName: {name: "group name", min: 1, max: maxName},
	tagGroupKey:  {name: "group key", min: minKey, max: maxKey, required: true},
}

// check reports what is wrong with a keyring before it is stored.
func (r *Keyring) check() error {
	if len(r.FDE) == 0 || len(r.FDE) > maxFDE {
		return fmt.Errorf("keyfile: FDE secret must be 1 to %d bytes", maxFDE)
	}
	if len(r.Enterprise) != 0 && (len(r.Enterprise) < minKey || len(r.Enterprise) > maxKey) {
		return fmt.Errorf("keyfile: enterprise key must be %d to %d bytes", minKey, maxKey)
	}
	if len(r.Groups) > maxGroups {
		return fmt.Errorf("keyfile: more than %d group keys", maxGroups)
	}
	for _, g := range r.Groups {
		if !validSID(g.SID) {
			return fmt.Errorf("keyfile: group key for %q: not a SID", g.SID)
		}
		if len(g.Name) > maxName {
			return fmt.Errorf("keyfile: group %s: name longer than %d bytes", g.SID, maxName)
		}
		if len(g.Key) < minKey || len(g.Key) > maxKey {
			return fmt.Errorf("keyfile: group %s: key must be %d to %d bytes", g.SID, minKey, maxKey)
		}
	}
	return nil
}

// encode returns the keyring's plaintext encoding. The caller wipes it.
func (r *Keyring) encode() secret.Bytes {
	var e encoder
	e.bytes(tagRingFDE, r.FDE)
	for _, g := range r.Groups {
		var ge encoder
		ge.string(tagGroupSID, g.SID)
		ge.string(tagGroupName, g.Name)
		ge.bytes(tagGroupKey, g.Key)
		e.bytes(tagRingGroup, ge.b)
		secret.Bytes(ge.b).Wipe()
	}
	if len(r.Enterprise) > 0 {
		e.bytes(tagRingEnterprise, r.Enterprise)
	}
	return e.b
}

// decodeKeyring parses a keyring's plaintext. The result copies every
// secret out of b.
func decodeKeyring(b []byte) (*Keyring, error) {
	const section = "keyring"
	fields, err := decodeFields(section, b, ringSpec)
	if err != nil {
		return nil, err
	}
	r := new(Keyring)
	for _, f := range fields {
		switch f.tag {
		case tagRingFDE:
			r.FDE = secret.Bytes(f.value).Clone()
		case tagRingEnterprise:
			r.Enterprise = secret.Bytes(f.value).Clone()
		case tagRingGroup:
			g, err := decodeGroup(f.value)
			if err != nil {
				r.Wipe()
				return nil, err
			}
			r.Groups = append(r.Groups, g)
		}
	}
	return r, nil
}

func decodeGroup(b []byte) (GroupKey, error) {
	const section = "keyring group"
	var g GroupKey
	fields, err := decodeFields(section, b, groupSpec)
	if err != nil {
		return g, err
	}
	for _, f := range fields {
		switch f.tag {
		case tagGroupSID:
			if g.SID, err = text(section, "SID", f.value); err != nil {
				return g, err
			}
			if !validSID(g.SID) {
				return g, formatErr(section, "group SID is not a SID")
			}
		case tagGroupName:
			if g.Name, err = text(section, "name", f.value); err != nil {
				return g, err
			}
		case tagGroupKey:
			g.Key = secret.Bytes(f.value).Clone()
		}
	}
	return g, nil
}

// validSID reports whether s is a security identifier in string form,
// S-1-<authority>-<sub>-..., as MS-DTYP section 2.4.2.1 defines it.
func validSID(s string) bool {
	if len(s) < 5 || len(s) > maxName || s[:4] != "S-1-" {
		return false
	}
	parts, digits := 1, 0
	for _, c := range s[4:] {
		switch {
		case c >= '0' && c <= '9':
			digits++
			if digits > 13 { // 48-bit authority; 32-bit sub-authorities
				return false
			}
		case c == '-' && digits > 0:
			parts++
			digits = 0
		default:
			return false
		}
	}
	return digits > 0 && parts <= 16
}
