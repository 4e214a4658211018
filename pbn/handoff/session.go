package handoff

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pbn-project/pbn/keyfile"
)

// SessionFile is where the agent tells the OS who signed in: under /run,
// which SwitchRoot carries into the real root.
const SessionFile = "/run/pbn/session"

// Stage is how the key file that opened the disk was opened.
type Stage string

// The stages of a session.
const (
	// StageProvisioning: the provisioning key file, unattended; no user
	// signed in.
	StageProvisioning Stage = "provisioning"
	// StageSecureMoment: the user's secure moment made their key file.
	StageSecureMoment Stage = "secure-moment"
	// StageDeployed: the user signed in with the TPM and their password.
	StageDeployed Stage = "deployed"
	// StageRecovery: a recovery key opened the key file.
	StageRecovery Stage = "recovery"
)

// Session is who signed in at the pre-boot prompt, for the OS, which
// finds the keys they were given in the kernel keyring Keyring (PutKeys).
// It holds nothing secret.
type Session struct {
	// UPN and SID are the user's userPrincipalName and objectSid.
	UPN, SID string
	// KeyFile is the ID of the key file that opened the disk, and Kind
	// its kind.
	KeyFile keyfile.ID
	Kind    keyfile.Kind
	Stage   Stage
	// Online tells whether the directory and the key server confirmed
	// the sign-in.
	Online bool
	// Keyring is the name of the kernel keyring that holds the keys.
	Keyring string
}

// WriteSession writes s to path (SessionFile on a device), readable by
// root alone, creating its directory.
func WriteSession(path string, s Session) error {
	b, err := s.marshal()
	if err != nil {
		return fmt.Errorf("session file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("session file: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("session file: %w", err)
	}
	return nil
}

// ReadSession reads the session file at path, for the OS.
func ReadSession(path string) (*Session, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("session file: %w", err)
	}
	return ParseSession(b)
}
