package disk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/secret"
)

// An Unlocker opens one of a device's key files: with a password typed at
// the prompt, a TPM, a key server. The boot flow tries its unlockers in
// order until one opens a file.
type Unlocker interface {
	// Name names the unlocker in logs ("password", "tpm").
	Name() string
	// Unlock opens one of files and returns it open. It returns an error
	// wrapping ErrNotApplicable when none of the files has a protector it
	// can try, so that the next unlocker gets its turn; any other error
	// ends the flow.
	Unlock(ctx context.Context, files []*keyfile.KeyFile) (*keyfile.KeyFile, error)
}

// ErrNotApplicable says an unlocker has nothing to try on these key files.
var ErrNotApplicable = errors.New("no key file has a protector this unlocker can try")

// ErrNoUnlocker says no unlocker applied to the key files. [Unlock]
// returns it.
var ErrNoUnlocker = errors.New("no unlocker can open the key files")

// Unlock tries each unlocker in order and returns the first key file one
// opened.
func Unlock(ctx context.Context, unlockers []Unlocker, files []*keyfile.KeyFile) (*keyfile.KeyFile, error) {
	for _, u := range unlockers {
		f, err := u.Unlock(ctx, files)
		if errors.Is(err, ErrNotApplicable) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("unlock with %s: %w", u.Name(), err)
		}
		return f, nil
	}
	return nil, ErrNoUnlocker
}

// PasswordUnlocker asks for a password at the console and opens the key
// file whose password protector takes it.
type PasswordUnlocker struct {
	Console *console.Console
	// Tries is how many wrong passwords it takes before it gives up.
	Tries int
	// Typed, when set, is told how long each prompt waited for the
	// person, to leave out of the boot time.
	Typed func(time.Duration)
}

// Name returns "password".
func (*PasswordUnlocker) Name() string { return "password" }

// WrongPassword is the line shown after a wrong password.
const WrongPassword = "That password is not correct. Try again."

// Unlock asks for the password up to u.Tries times. It returns
// console.ErrTooManyTries after the last wrong one, ErrNotApplicable when
// no file has a password protector, and keyfile.ErrTampered when a file
// opened but does not authenticate.
func (u *PasswordUnlocker) Unlock(ctx context.Context, files []*keyfile.KeyFile) (*keyfile.KeyFile, error) {
	var candidates []*keyfile.KeyFile
	for _, f := range files {
		if hasPassword(f) {
			candidates = append(candidates, f)
		}
	}
	if len(candidates) == 0 {
		return nil, ErrNotApplicable
	}

	var opened *keyfile.KeyFile
	took, err := u.Console.Ask(prompt(candidates), WrongPassword, u.Tries, func(pw secret.Bytes) error {
		var errs []error
		for _, f := range candidates {
			err := f.Open(ctx, keyfile.Password(pw))
			if err == nil {
				opened = f
				return nil
			}
			if !errors.Is(err, keyfile.ErrWrongPassword) {
				return err
			}
			errs = append(errs, err)
		}
		return fmt.Errorf("%w: %w", console.ErrWrong, errors.Join(errs...))
	})
	if u.Typed != nil {
		u.Typed(took)
	}
	return opened, err
}

func hasPassword(f *keyfile.KeyFile) bool {
	for _, p := range f.Protectors() {
		if len(p.Factors) == 1 && p.Factors[0] == keyfile.FactorPassword {
			return true
		}
	}
	return false
}

// prompt names the user when one key file is in question. The name comes
// from a file not yet authenticated, so control characters are dropped
// before it reaches the terminal.
func prompt(files []*keyfile.KeyFile) string {
	if len(files) == 1 {
		upn := strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return -1
			}
			return r
		}, files[0].Header().UPN)
		if upn != "" {
			return fmt.Sprintf("Enter password for %s: ", upn)
		}
	}
	return "Enter password: "
}
