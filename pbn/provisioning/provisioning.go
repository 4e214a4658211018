// Package provisioning is the pre-boot agent's provisioning stage: a device
// whose ESP holds a provisioning key file, which belongs to no user yet.
//
// # Autoboot
//
// Stage.Run first opens the provisioning key file through its network
// factor: in PBN mode the key server that the key file names and pins is
// asked, over TLS with the device authenticated by its TPM-held key, and
// nothing the network says (DHCP, DNS) chooses the server. The server
// refuses a device marked lost or retired, a revoked binding, and any
// device whose group's policy (store.Policy.Autoboot) does not allow an
// unattended boot; it records every unlock it answers. When the key file
// opens, the sign-in prompt counts down (the image's config.Countdown) and
// the device boots unattended unless a key is pressed. When it does not
// open (off the enterprise network, the server down or refusing), the
// device never boots unattended: the prompt says why in a plain sentence
// and offers the sign-in.
//
// # Sign-in
//
// A person who signs in at that prompt makes the device theirs: the
// account and password go to the secure moment (package securemoment),
// which authenticates them against Active Directory, has the key server
// record the ownership, stores their key file and retires the provisioning
// key file. Where the policy turns autoboot off, the key server still
// opens the provisioning key file for the secure moment, as the user who
// claimed the device (keyserver.WithSignIn), and for nobody unattended.
// A wrong password is asked again within the limit of tries;
// any other failure (a domain controller that is down, a refusal) is said
// in a plain sentence and the prompt comes back.
//
// A device whose ESP holds a user's key file beside the provisioning key
// file was cut off in the middle of a secure moment (Stage.Owned): it has
// an owner, so it never boots unattended, and the owner's sign-in finishes
// the job.
package provisioning

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tang"
)

// DefaultUnlockTimeout bounds the autoboot's unlock: a key server on the
// LAN answers in milliseconds, and a device off the enterprise network
// should show its prompt soon.
const DefaultUnlockTimeout = 5 * time.Second

// DefaultTries is how many wrong passwords the sign-in takes when
// Stage.Tries is zero.
const DefaultTries = 3

// MaxSignIns bounds the sign-ins of one Run, wrong passwords and other
// failures together, so that a prompt that keeps failing ends.
const MaxSignIns = 10

// Mode tells how the stage opened the device.
type Mode int

// The modes of Result.
const (
	// Autoboot: the provisioning key file opened with the key server's
	// help and nobody signed in.
	Autoboot Mode = iota + 1
	// SignedIn: a user signed in and the secure moment made the device
	// theirs.
	SignedIn
)

func (m Mode) String() string {
	switch m {
	case Autoboot:
		return "autoboot"
	case SignedIn:
		return "sign-in"
	}
	return fmt.Sprintf("mode %d", int(m))
}

// Prompt is the person at the pre-boot console; Terminal is the real one.
type Prompt interface {
	// Say prints one line.
	Say(format string, args ...any)
	// Countdown calls line with the time left, once a second, until d has
	// passed or a key is pressed, and says whether one was. A console
	// whose input has ended counts as nobody there.
	Countdown(ctx context.Context, d time.Duration, line func(left time.Duration)) (bool, error)
	// Account reads an account name, shown as it is typed, and the time
	// the person took. It returns console.ErrClosed when the input ends.
	Account(prompt string) (string, time.Duration, error)
	// Password reads a password, masked, as console.Console.Password.
	Password(prompt string) (secret.Bytes, time.Duration, error)
}

// SecureMoment makes the device its owner's; *securemoment.Device is one.
type SecureMoment interface {
	Run(ctx context.Context, account string, password secret.Bytes) (*securemoment.Result, error)
}

// PasswordChanger changes an account's password from old to new;
// *ad.Client is one, with a change account configured.
type PasswordChanger interface {
	ChangePassword(ctx context.Context, account string, old, new secret.Bytes) error
}

// Stage is the provisioning stage of one boot.
type Stage struct {
	// Provisioning is the provisioning key file, as read from the ESP.
	Provisioning *keyfile.KeyFile
	// Owned says a whole key file of a user lies beside it: a secure
	// moment was cut short, the device has an owner and must not boot
	// unattended.
	Owned bool
	// Network is the provisioning key file's network factor (tang.Factor
	// in PBN mode, with keyserver.Transport and the TPM's device key).
	Network keyfile.Factor
	// Countdown is how long the prompt counts down before the unattended
	// boot (config.Config.Countdown).
	Countdown time.Duration
	// Prompt is the person; SecureMoment runs their sign-in.
	Prompt       Prompt
	SecureMoment SecureMoment
	// Passwords, when set, changes a password that the directory says
	// has expired or must change (the first sign-in of a new account,
	// typically), and the sign-in goes on with the new one. Nil: the
	// person is told to change it elsewhere.
	Passwords PasswordChanger
	// Tries is how many wrong passwords the sign-in takes; zero means
	// DefaultTries.
	Tries int
	// UnlockTimeout bounds the autoboot's unlock; zero means
	// DefaultUnlockTimeout.
	UnlockTimeout time.Duration
	// Typed, when set, is told how long the person took at each prompt,
	// to leave out of the boot time. Entered, when set, is called when the
	// credentials have been typed, just before the secure moment starts.
	Typed   func(time.Duration)
	Entered func()
	// Prompted, when set, is called once, when the sign-in prompt first
	// shows: work the sign-in will need (calibrating Argon2id, say) can
	// run while the person types, and not at all after an autoboot.
	Prompted func()
	// Logger receives why an autoboot or a sign-in failed; nil discards.
	Logger *slog.Logger
}

// Result is how the stage opened the device.
type Result struct {
	Mode Mode
	// KeyFile is open: the provisioning key file after an autoboot,
	// the user's after a sign-in. The caller opens the disk with it and
	// closes it.
	KeyFile *keyfile.KeyFile
	// SecureMoment is the finished secure moment after a sign-in.
	SecureMoment *securemoment.Result
}

// ErrNoSignIn says the sign-in prompt gave up: too many failed sign-ins.
// Run returns it wrapping console.ErrTooManyTries after the last wrong
// password allowed.
var ErrNoSignIn = errors.New("no one signed in")

// Lines of the prompt.
const (
	signInLine = "Sign in with your company account to make this computer yours."
	finishLine = "Sign in again to finish setting up this computer."
)

// Run boots the device unattended or has a person sign in, and returns the
// open key file that opens the disk. It returns an error wrapping
// ErrNoSignIn when no sign-in succeeded within the limits (with
// console.ErrTooManyTries after too many wrong passwords), and
// console.ErrClosed when the console's input ends before anyone signed in.
func (s *Stage) Run(ctx context.Context) (*Result, error) {
	if s.Owned {
		s.Prompt.Say("%s", finishLine)
		return s.signIn(ctx)
	}
	if err := s.unlock(ctx); err != nil {
		s.logger().Warn("no autoboot", "err", err)
		s.Prompt.Say("%s", Sentence(err))
		s.Prompt.Say("%s", signInLine)
		return s.signIn(ctx)
	}
	pressed, err := s.Prompt.Countdown(ctx, s.Countdown, func(left time.Duration) {
		s.Prompt.Say("Booting unattended in %d s. Press Enter to sign in.", seconds(left))
	})
	if err != nil {
		s.Provisioning.Close()
		return nil, err
	}
	if !pressed {
		return &Result{Mode: Autoboot, KeyFile: s.Provisioning}, nil
	}
	// The secure moment opens the provisioning key file again itself.
	s.Provisioning.Close()
	s.Prompt.Say("%s", signInLine)
	return s.signIn(ctx)
}

// seconds rounds a time left up to whole seconds, as a countdown shows it.
func seconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// unlock opens the provisioning key file with the key server's help.
func (s *Stage) unlock(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(s.UnlockTimeout, DefaultUnlockTimeout))
	defer cancel()
	if err := s.Provisioning.Open(ctx, s.Network); err != nil {
		return fmt.Errorf("open the provisioning key file: %w", err)
	}
	return nil
}

// signIn asks for an account and password until the secure moment
// succeeds, or the limits are reached.
func (s *Stage) signIn(ctx context.Context) (*Result, error) {
	if s.Prompted != nil {
		s.Prompted()
	}
	tries := cmp.Or(s.Tries, DefaultTries)
	wrongs := 0
	for range MaxSignIns {
		account, password, err := s.credentials()
		if err != nil {
			return nil, err
		}
		if s.Entered != nil {
			s.Entered()
		}
		res, err := s.SecureMoment.Run(ctx, account, password)
		if ad.NeedsNewPassword(err) && s.Passwords != nil {
			var changed secret.Bytes
			if changed, err = s.changePassword(ctx, account, password, err); err == nil {
				password.Wipe()
				password = changed
				res, err = s.SecureMoment.Run(ctx, account, password)
			}
		}
		password.Wipe()
		if err == nil {
			return &Result{Mode: SignedIn, KeyFile: res.KeyFile, SecureMoment: res}, nil
		}
		// Not the account: people type their password there too.
		s.logger().Warn("sign-in failed", "err", err)
		if ctx.Err() != nil || errors.Is(err, console.ErrClosed) {
			return nil, err
		}
		if WrongPassword(err) {
			if wrongs++; wrongs >= tries {
				return nil, fmt.Errorf("%w: %w", ErrNoSignIn, console.ErrTooManyTries)
			}
		}
		s.Prompt.Say("%s", signInSentence(err))
	}
	return nil, fmt.Errorf("%w: %d sign-ins failed", ErrNoSignIn, MaxSignIns)
}

// signInSentence returns what to tell the person about a failed sign-in:
// a secure moment's or a password change's.
func signInSentence(err error) string {
	var se *securemoment.StepError
	var ae *ad.Error
	switch {
	case errors.Is(err, console.ErrMismatch):
		return console.MismatchSentence
	case !errors.As(err, &se) && errors.As(err, &ae):
		return ae.Sentence()
	}
	return securemoment.Sentence(err)
}

// changePassword has the person choose a new password, after why, the
// directory's refusal of old, is said; changes it in the directory; and
// returns it. The caller wipes old and the new password.
func (s *Stage) changePassword(ctx context.Context, account string, old secret.Bytes, why error) (secret.Bytes, error) {
	pw, took, err := console.ChangePassword(s.Prompt, securemoment.Sentence(why), cmp.Or(s.Tries, DefaultTries),
		func(pw secret.Bytes) error { return s.Passwords.ChangePassword(ctx, account, old, pw) })
	s.typed(took)
	if err == nil {
		s.logger().Info("password changed at the prompt", "account", account)
	}
	return pw, err
}

// maxEmpty bounds the empty entries the prompt takes in a row.
const maxEmpty = 10

// credentials asks for an account and its password; empty entries are
// asked again.
func (s *Stage) credentials() (string, secret.Bytes, error) {
	for range maxEmpty {
		account, took, err := s.Prompt.Account("Account: ")
		s.typed(took)
		if err != nil {
			return "", nil, err
		}
		if account == "" {
			continue
		}
		for range maxEmpty {
			pw, took, err := s.Prompt.Password("Password for " + account + ": ")
			s.typed(took)
			if err != nil {
				return "", nil, err
			}
			if len(pw) > 0 {
				return account, pw, nil
			}
		}
	}
	return "", nil, fmt.Errorf("%w: only empty entries", ErrNoSignIn)
}

func (s *Stage) typed(d time.Duration) {
	if s.Typed != nil {
		s.Typed(d)
	}
}

func (s *Stage) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// WrongPassword reports whether a secure moment failed because the
// directory or the key server refused the account or its password: the
// person may try again within the limit of tries.
func WrongPassword(err error) bool {
	return ad.ReasonOf(err) == ad.WrongCredentials || errors.Is(err, keyserver.ErrLoginRefused)
}

// Sentence returns what to tell the person at the prompt about why the
// device does not boot unattended: an error of the provisioning key file's
// network factor in PBN mode.
func Sentence(err error) string {
	switch {
	case errors.Is(err, keyserver.ErrNotAllowed):
		return "This computer may not start unattended. Sign in to start it."
	case errors.Is(err, keyserver.ErrDeviceLost), errors.Is(err, keyserver.ErrDeviceRetired),
		errors.Is(err, keyserver.ErrBindingRevoked):
		return keyserver.Sentence(err)
	case errors.Is(err, tang.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
		return "This computer cannot reach the company's key server, so it does not start " +
			"unattended. Connect it to the company network to start it unattended."
	}
	return tang.Sentence(err)
}
