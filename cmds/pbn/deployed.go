package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/provisioning"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/signin"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// signInTimeout bounds each network step of a deployed-stage sign-in (the
// directory, the key server): on a LAN they answer within a second, and
// one that does not should not keep the person waiting long before the
// offline rules apply.
const signInTimeout = 5 * time.Second

// recoveryChoice, typed at the account prompt, asks for a recovery key.
const recoveryChoice = "r"

// promptsPerTry bounds the prompts in all: empty entries and refusals
// that are not a wrong password do not count as tries, but do not go on
// for ever either.
const promptsPerTry = 4

// deployable reports whether any whole user or administrator key file
// sealed to a TPM, or awaiting its owner's first sign-in, is among files:
// then the deployed stage signs the user in. Key files with a password
// alone open at the password prompt.
func deployable(files []*keyfile.KeyFile) bool {
	for _, f := range files {
		if k := f.Header().Kind; k != keyfile.KindUser && k != keyfile.KindAdministrator {
			continue
		}
		if signin.AwaitsFirstSignIn(f) {
			return true
		}
		for _, p := range f.Protectors() {
			if slices.Contains(p.Factors, keyfile.FactorTPM) {
				return true
			}
		}
	}
	return false
}

// openKeyFile is the deployed stage: it opens a key file at the deployed
// stage's prompt when the device has one sealed to its TPM, else at the
// password prompt.
func (a *agent) openKeyFile(ctx context.Context) (*keyfile.KeyFile, error) {
	if deployable(a.files) {
		return a.deployed(ctx)
	}
	return disk.Unlock(ctx, a.unlockers(), a.files)
}

// unlockers open key files with a password alone.
func (a *agent) unlockers() []disk.Unlocker {
	return []disk.Unlocker{
		&disk.PasswordUnlocker{Console: a.con, Tries: a.cmdline.PBN.Tries, Typed: a.timing.Exclude},
	}
}

// deployed is the deployed stage: the users of the device are listed, one
// signs in (online with the directory and the key server, else within the
// offline limit) or types a recovery key, and their key file opens. The
// ESP is mounted read-write meanwhile: a sign-in records its contact, a
// changed password re-protects the key file, a new user's key file is
// stored there. The unlock step closes the TPM and unmounts the ESP.
func (a *agent) deployed(ctx context.Context) (*keyfile.KeyFile, error) {
	start := time.Now()
	if err := a.espWritable(); err != nil {
		return nil, err
	}
	t, err := a.openTPM(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := disk.Cryptsetup()
	if err != nil {
		return nil, err
	}

	d := &signin.Device{ESP: keyfile.OSFS{}, KeyDir: filepath.Join(espMount, disk.KeyDir),
		Volume: disk.Keyslots{Cryptsetup: cs, Dev: a.luksDev.Path}, TPM: t, Clock: signin.TPMClock(a.tpmTr),
		StepTimeout: signInTimeout, Logger: a.log}
	users, err := d.Users()
	if err != nil {
		return nil, err
	}
	// The directory and the key server are made ready while the person
	// types, the network too; a sign-in waits for them, a recovery key
	// does not need them.
	connected := make(chan struct{})
	go func() {
		defer close(connected)
		a.connect(ctx, d)
	}()
	defer func() {
		<-connected
		if c, ok := d.Server.(*keyserver.Client); ok {
			c.CloseIdleConnections()
		}
	}()
	a.log.Debug("sign-in prompt ready", "took", time.Since(start))
	return a.signInPrompt(ctx, d, users, connected)
}

// connect gives d the directory and the key server, as far as the image's
// configuration and the key files name them; what is missing leaves the
// device offline. It waits for the network step, then opens a connection
// to the key server, which the sign-in then uses: its TLS handshake,
// signed by the TPM's device key, is done while the person types when the
// network came up in time. When the network did not come up, the sign-in
// finds the directory and the server unreachable and the offline rules
// apply.
func (a *agent) connect(ctx context.Context, d *signin.Device) {
	dir, err := a.directory()
	if err != nil {
		a.log.Warn("no directory: offline sign-in only", "err", err)
		return
	}
	// The key server and its pin come from a key file not yet
	// authenticated (it opens only after the server's answer); the
	// keyfiles step kept only key files bound to the server that the
	// image's configuration pins (agent.trusted).
	// An image whose configuration pins no key server trusts the server
	// a key file names; pbnctl image build refuses to build one that
	// names a domain.
	var srv keyfile.Server
	for _, f := range a.files {
		if srv = f.Header().Server; srv.URL != "" {
			break
		}
	}
	c, err := a.keyServer(ctx, srv)
	if err != nil {
		a.log.Warn("no key server: offline sign-in only", "err", err)
		return
	}
	d.Directory, d.Server = dir, c
	if err := a.awaitNetwork(ctx); err != nil {
		return
	}
	hctx, cancel := context.WithTimeout(ctx, signInTimeout)
	defer cancel()
	if err := c.Healthy(hctx); err != nil {
		a.log.Info("key server not answering yet", "err", err)
	}
}

// signInPrompt lists the users and asks for an account (or a recovery
// key) and a password until one opens a key file. Wrong passwords count
// against the kernel command line's tries; a locked TPM ends the prompt.
func (a *agent) signInPrompt(ctx context.Context, d *signin.Device, users []signin.User,
	connected <-chan struct{}) (*keyfile.KeyFile, error) {
	tries := max(a.cmdline.PBN.Tries, 1)
	a.say("users of this device:")
	for i, u := range users {
		a.say("  %d. %s", i+1, printable(u.UPN))
	}
	wrong := 0
	for range promptsPerTry * tries {
		choice, err := a.ask("Sign in as (number or account; R for a recovery key): ")
		if err != nil {
			return nil, err
		}
		var res *signin.Result
		switch {
		case choice == "":
			continue
		case strings.EqualFold(choice, recoveryChoice):
			res, err = a.recover(ctx, d)
		default:
			res, err = a.signIn(ctx, d, account(users, choice), connected)
		}
		if err == nil {
			a.session = handoff.Session{Stage: handoff.StageDeployed, Online: res.Online}
			if res.Recovered {
				a.session.Stage = handoff.StageRecovery
			}
			a.say("signed in as %s (%s)", printable(res.KeyFile.Header().UPN), onlineWord(res.Online))
			return res.KeyFile, nil
		}
		a.con.Say("%s", signin.Sentence(err))
		var lo *tpm.LockoutError
		switch {
		case errors.As(err, &lo):
			return nil, err
		case signin.WrongPassword(err):
			if wrong++; wrong >= tries {
				return nil, console.ErrTooManyTries
			}
		}
	}
	return nil, console.ErrTooManyTries
}

func (a *agent) signIn(ctx context.Context, d *signin.Device, account string,
	connected <-chan struct{}) (*signin.Result, error) {
	pw, took, err := a.con.Password("Password for " + printable(account) + ": ")
	a.timing.Exclude(took)
	if err != nil {
		return nil, err
	}
	defer pw.Wipe()
	<-connected
	res, err := d.SignIn(ctx, account, pw)
	if dir := a.passwordChanger(d.Directory); dir != nil && ad.NeedsNewPassword(err) {
		// The directory takes the new password; the sign-in then finds
		// the key file sealed to the old one and has the key server
		// vouch for the new one, as after a change made elsewhere.
		var changed secret.Bytes
		changed, took, err = console.ChangePassword(a.con, signin.Sentence(err), max(a.cmdline.PBN.Tries, 1),
			func(changed secret.Bytes) error { return dir.ChangePassword(ctx, account, pw, changed) })
		a.timing.Exclude(took)
		if err != nil {
			return nil, err
		}
		defer changed.Wipe()
		a.log.Info("password changed at the prompt", "account", account)
		return d.SignIn(ctx, account, changed)
	}
	return res, err
}

// passwordChanger returns the directory dir when it can change an expired
// password at the prompt: a domain's client, with a change account that
// the image's configuration names. Otherwise it returns nil.
func (a *agent) passwordChanger(dir any) *ad.Client {
	c, err := a.loadConfig()
	if client, ok := dir.(*ad.Client); ok && err == nil && c.ChangesPasswords() {
		return client
	}
	return nil
}

func (a *agent) recover(ctx context.Context, d *signin.Device) (*signin.Result, error) {
	typed, took, err := a.con.Password("Recovery key: ")
	a.timing.Exclude(took)
	if err != nil {
		return nil, err
	}
	defer typed.Wipe()
	k, err := keyfile.ParseRecoveryKey(typed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", keyfile.ErrWrongRecoveryKey, err)
	}
	defer k.Wipe()
	return d.Recover(ctx, k)
}

// ask reads a choice at the prompt, echoed as typed: a user's number,
// an account or R.
func (a *agent) ask(prompt string) (string, error) {
	t := provisioning.Terminal{Console: a.con, In: a.conIn}
	choice, took, err := t.Account(prompt)
	a.timing.Exclude(took)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(choice), nil
}

// account returns the account a choice names: a user's number in the
// list, or what was typed.
func account(users []signin.User, choice string) string {
	if n, err := strconv.Atoi(choice); err == nil && n >= 1 && n <= len(users) {
		return users[n-1].UPN
	}
	return choice
}

func onlineWord(online bool) string {
	if online {
		return "confirmed online"
	}
	return "offline"
}

// printable drops control characters from a name read from a key file not
// yet authenticated, before it reaches the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
}

// handover leaves the OS, once the disk is open, who signed in (the
// session file under /run, which switch_root carries over) and the user's
// group keys and enterprise key, in the kernel keyring. A failure costs
// the user a second sign-in in the OS, not the boot.
func (a *agent) handover() {
	h := a.opened.Header()
	s := a.session
	s.UPN, s.SID, s.KeyFile, s.Kind, s.Keyring = h.UPN, h.SID, h.ID, h.Kind, handoff.KeyringName
	if s.Stage == "" && h.Kind == keyfile.KindProvisioning {
		s.Stage = handoff.StageProvisioning
	}
	if h.Kind != keyfile.KindProvisioning {
		if _, err := handoff.PutKeys(unix.KEY_SPEC_USER_KEYRING, a.opened.Keyring()); err != nil {
			a.log.Warn("handover: keys", "err", err)
		}
	}
	if err := handoff.WriteSession(handoff.SessionFile, s); err != nil {
		a.log.Warn("handover: session", "err", err)
	}
}
