package handoff

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
)

// KeyringName is the name of the kernel keyring that PutKeys leaves the
// user's keys in.
const KeyringName = "pbn"

// The descriptions of the keys in the keyring: the enterprise key, and
// each group's key under its SID.
const (
	EnterpriseKey  = "pbn:enterprise"
	GroupKeyPrefix = "pbn:group:"
)

// Permissions of the keyring and its keys (keyctl_setperm(3)): their
// possessor may do anything, their owner (root) may see, read and search
// them, and nobody else may do anything.
const (
	possessorAll = 0x3f000000
	ownerRead    = 0x00010000 | 0x00020000 | 0x00080000 // view, read, search
	keyPerm      = possessorAll | ownerRead
)

// PutKeys puts the group keys and the enterprise key of ring into a new
// keyring named KeyringName, linked into the keyring dest, as keys of type
// "user" (add_key(2)) readable by their possessor and their owner alone.
// On a device dest is unix.KEY_SPEC_USER_KEYRING, root's user keyring,
// which outlives the agent and switch_root: the OS's root processes find
// the keyring there (keyctl search @u keyring pbn). The keys live in
// kernel memory only, never on a disk. It returns the keyring's serial
// number.
func PutKeys(dest int, ring *keyfile.Keyring) (int, error) {
	kr, err := unix.AddKey("keyring", KeyringName, nil, dest)
	if err != nil {
		return 0, fmt.Errorf("keyring %s: %w", KeyringName, err)
	}
	if err := unix.KeyctlSetperm(kr, keyPerm); err != nil {
		return 0, fmt.Errorf("keyring %s: %w", KeyringName, err)
	}
	put := func(desc string, key []byte) error {
		if len(key) == 0 {
			return nil
		}
		id, err := unix.AddKey("user", desc, key, kr)
		if err == nil {
			err = unix.KeyctlSetperm(id, keyPerm)
		}
		if err != nil {
			return fmt.Errorf("key %s: %w", desc, err)
		}
		return nil
	}
	if err := put(EnterpriseKey, ring.Enterprise); err != nil {
		return 0, err
	}
	for _, g := range ring.Groups {
		if err := put(GroupKeyPrefix+g.SID, g.Key); err != nil {
			return 0, err
		}
	}
	return kr, nil
}
