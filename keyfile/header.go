package keyfile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// Kind tells whose keys a key file holds. The values are part of the format.
type Kind uint8

// The kinds of key file.
const (
	// KindProvisioning belongs to no user: it opens a device before its
	// owner is known, with the key server's help.
	KindProvisioning Kind = 1
	// KindUser holds the keys of one user of one device.
	KindUser Kind = 2
	// KindAdministrator holds the keys of an administrator account that is
	// added to every device of a package.
	KindAdministrator Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindProvisioning:
		return "provisioning"
	case KindUser:
		return "user"
	case KindAdministrator:
		return "administrator"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// ParseKind parses the name that Kind.String returns.
func ParseKind(s string) (Kind, error) {
	for k := KindProvisioning; k <= KindAdministrator; k++ {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown key file kind %q (want provisioning, user or administrator)", s)
}

// ID identifies a key file or a device: 16 random bytes, shown in hex.
type ID [16]byte

// NewID returns a random ID.
func NewID() ID {
	var id ID
	rand.Read(id[:])
	return id
}

// ParseID parses the 32 hex digits that ID.String returns.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid ID %q: want 32 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is unset.
func (id ID) IsZero() bool { return id == ID{} }

// Server is the key server a key file is bound to.
type Server struct {
	// URL is the server's base address, https:// for PBN mode or http://
	// for plain Tang.
	URL string
	// PublicKey pins the server: the DER SubjectPublicKeyInfo of the key
	// that must sign its advertisements and its TLS handshakes. A key file
	// without a server has neither.
	PublicKey []byte
}

// Header is the public part of a key file: it is stored in the clear and
// authenticated as part of the whole file.
type Header struct {
	// ID identifies this key file; it stays the same across generations.
	ID ID
	// Kind tells whose keys the file holds.
	Kind Kind
	// DeviceID identifies the device the key file belongs to.
	DeviceID ID
	// UPN and SID are the user's Active Directory identity (the
	// userPrincipalName and the objectSid in its string form). Both are
	// empty in a provisioning key file.
	UPN string
	SID string
	// Generation counts the versions of this key file. Every replacement
	// writes a higher one, and a reader never takes an older generation
	// over a newer one.
	Generation uint64
	// Created is when the key file's first generation was made.
	Created time.Time
	// Server is the key server the key file is bound to.
	Server Server
	// OfflineLimit is how long the key file may open the device without
	// contact with the key server; zero means no limit.
	OfflineLimit time.Duration
}
