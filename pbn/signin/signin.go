// Package signin is the deployed stage of PBN's two-stage model: a user of
// the device signs in at the pre-boot prompt, and their key file opens
// with the TPM and their password together.
//
// # Online and offline
//
// Device.SignIn asks the directory and the key server first, when both
// answer: a disabled, locked or expired account, a device marked lost or
// retired, or a user removed from the device means no boot, even with the
// right password. The key server checks the password with the directory
// itself (keyserver.Client.SignIn), records the sign-in in its audit trail
// and says its time and the policy's offline limit, which the device
// records, authenticated, in its sign-in state on the ESP (state.go).
//
// Offline (the directory or the server unreachable), the key file alone
// decides, within the offline limit since the last recorded contact. The
// pre-boot clock is not trusted: a clock earlier than the latest time the
// device has seen, or behind the TPM's Clock, refuses the sign-in
// (ErrClockUntrusted), and a key file without a recorded contact does not
// open offline at all (ErrNoContact).
//
// # What an online sign-in repairs and adds
//
// A password changed in the directory opens neither the TPM nor the key
// file's password factor. Once the directory and the server have accepted
// the new one, the server hands the device the key file's escrowed
// recovery key, with which the key file opens and is sealed again to the
// TPM and the new password (tpm.Reseal), as its next generation: the user
// never types the old password.
//
// An account with no key file on the device (a further user the policy
// allows, or an administrator account of the device's package) gets one:
// the server admits it, escrows the new key file's recovery key and hands
// the device the escrowed recovery key of a key file it has, whose FDE
// secret authorizes the new key file's LUKS2 keyslot.
//
// A user the server says is no longer on the device has their key file
// removed and its keyslot killed, as long as another key file remains.
//
// # Recovery
//
// Device.Recover opens a key file with its recovery key, whatever the
// network; the use is recorded in the sign-in state and reported to the
// server at the next online sign-in.
package signin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// DefaultStepTimeout bounds each network step (the directory, the key
// server): a few round trips on a LAN, with room for a loaded server.
const DefaultStepTimeout = 15 * time.Second

// Directory authenticates a user; *ad.Client is one.
type Directory interface {
	Login(ctx context.Context, account string, password secret.Bytes) (*ad.Identity, error)
}

// Server is the key server as the deployed stage sees it;
// *keyserver.Client is one.
type Server interface {
	SignIn(ctx context.Context, req keyserver.SignInRequest) (*keyserver.SignIn, error)
}

// Device is what the deployed stage works on and talks to.
type Device struct {
	// ESP is the file system of the EFI system partition, writable, and
	// KeyDir the directory on it that holds the key files and the sign-in
	// state (disk.KeyDir under its mount point).
	ESP    keyfile.FS
	KeyDir string
	// Volume is the LUKS2 volume the key files open: a key file made for
	// a further user gets a keyslot there.
	Volume securemoment.Volume
	// TPM seals the key files; Clock is its Clock, nil when it cannot be
	// read (the offline check then goes by the pre-boot clock alone).
	TPM   *tpm.TPM
	Clock Clock
	// Directory checks the user's credentials and Server is the key
	// server; either nil means offline.
	Directory Directory
	Server    Server
	// Argon2 are the parameters of a new key file's password factor; zero
	// calibrates them on this device to keyfile.DefaultArgon2Target.
	Argon2 keyfile.Argon2Params
	// Now is the pre-boot clock; nil means time.Now.
	Now func() time.Time
	// StepTimeout bounds each network step; zero means
	// DefaultStepTimeout.
	StepTimeout time.Duration
	// Logger receives a record of each sign-in; nil discards them.
	Logger *slog.Logger
}

// Result is a signed-in user's key file.
type Result struct {
	// KeyFile is open: the caller hands its keys on and closes it. Path
	// is where it is stored.
	KeyFile *keyfile.KeyFile
	Path    string
	// Online tells whether the directory and the key server confirmed
	// the sign-in.
	Online bool
	// Reprotected says the key file was sealed again to a password
	// changed in the directory; Made says it was made at this sign-in;
	// Recovered says a recovery key opened it (Recover).
	Reprotected, Made, Recovered bool
}

// User is a user of the device, as the prompt lists them.
type User struct {
	UPN     string
	Kind    keyfile.Kind
	KeyFile keyfile.ID
}

// stored is a key file and where it is stored.
type stored struct {
	f    *keyfile.KeyFile
	path string
}

// Users lists the users whose key files are on the device. Their names come
// from files not yet authenticated: the caller drops control characters
// before showing them.
func (d *Device) Users() ([]User, error) {
	files, err := d.load()
	if err != nil {
		return nil, err
	}
	var us []User
	for _, s := range files {
		h := s.f.Header()
		us = append(us, User{UPN: h.UPN, Kind: h.Kind, KeyFile: h.ID})
		s.f.Close()
	}
	return us, nil
}

// SignIn signs in the user who typed account and password and returns
// their open key file. The password is not wiped; the caller does that.
//
// It returns the directory's *ad.Error for an account it refuses, the key
// server's refusals (keyserver.ErrDeviceLost, ErrUserRemoved and the
// others), a wrong password as an error matching keyfile.ErrWrongPassword
// (the TPM's *tpm.WrongPasswordError among them) and *tpm.LockoutError;
// offline, ErrUnknownUser, ErrAmbiguous, ErrNoContact, ErrOfflineLimit and
// ErrClockUntrusted; and ErrNeedsNetwork for an account with no key file
// there. Sentence says each to the person, and WrongPassword tells which
// count as a wrong password.
func (d *Device) SignIn(ctx context.Context, account string, password secret.Bytes) (*Result, error) {
	start := time.Now()
	files, err := d.load()
	if err != nil {
		return nil, err
	}
	s := &session{d: d, files: files, account: account, password: password,
		pw: keyfile.Remembering(password, d.Argon2)}
	defer s.closeOthers()
	s.st = d.loadState()
	ahead := s.deriveAhead()
	defer func() {
		<-ahead
		s.pw.Wipe()
	}()

	res, err := s.signIn(ctx)
	log := d.logger().With("account", account, "took", time.Since(start))
	if err != nil {
		log.Warn("sign-in refused", "err", err)
		return nil, err
	}
	s.res = res
	log.Info("signed in", "upn", res.KeyFile.Header().UPN, "key_file", res.KeyFile.Header().ID,
		"online", res.Online, "reprotected", res.Reprotected, "made", res.Made)
	return res, nil
}

// session is the state of one SignIn.
type session struct {
	d        *Device
	files    []stored
	st       *state
	account  string
	password secret.Bytes
	pw       *keyfile.PasswordFactor // remembers its derivations until SignIn returns
	res      *Result
}

// deriveAhead derives the password's Argon2id secret for the key file the
// typed account names while the directory and the key server check the
// user, and closes the channel it returns when done. The key file then
// opens without deriving, once both have answered: the TPM, whose
// dictionary-attack protection counts wrong passwords, is asked only
// after them, as before. A sign-in that fails waits for the derivation
// before it returns, at worst the time of one derivation.
func (s *session) deriveAhead() <-chan struct{} {
	done := make(chan struct{})
	f, err := s.byAccount()
	var params []byte
	if err == nil {
		params = passwordParams(f.f)
	}
	if params == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		s.pw.DeriveRecovery(params)
	}()
	return done
}

// passwordParams returns the stored parameters of the password factor of
// the first protector of f that the user's factors open (the password,
// with or without the TPM), which Open tries first; nil if there is none.
func passwordParams(f *keyfile.KeyFile) []byte {
	for _, p := range f.Protectors() {
		var params []byte
		opens := true
		for i, t := range p.Factors {
			switch t {
			case keyfile.FactorPassword:
				params = p.Params[i]
			case keyfile.FactorTPM:
			default:
				opens = false
			}
		}
		if opens && params != nil {
			return params
		}
	}
	return nil
}

func (s *session) signIn(ctx context.Context) (*Result, error) {
	ahead := s.askAhead(ctx)
	id, err := s.authenticate(ctx)
	var f *stored
	if err == nil && id != nil {
		f = s.bySID(id.SID)
	}
	if f == nil {
		ahead.discard()
	}
	switch {
	case err != nil:
		return nil, err
	case id == nil:
		return s.offline(ctx)
	case f == nil:
		return s.addUser(ctx, id)
	}
	ans, err := ahead.answer(ctx, s, f)
	switch {
	case offline(err):
		s.d.logger().Info("key server unreachable: offline sign-in", "err", err)
		return s.offline(ctx)
	case errors.Is(err, keyserver.ErrUserRemoved):
		s.remove(ctx, f)
		return nil, err
	case err != nil:
		return nil, err
	}
	defer ans.Wipe()
	if ans.SID != id.SID {
		return nil, fmt.Errorf("the key server's account %s is not the directory's %s", ans.SID, id.SID)
	}
	// TODO: the key file keeps the group keys of its making; the server
	// could hand the keys of the user's groups today, so that a group
	// joined or left in the directory shows at the next online sign-in.
	res := &Result{KeyFile: f.f, Path: f.path, Online: true}
	start := time.Now()
	err = f.f.Open(ctx, s.factors(nil)...)
	s.d.logger().Debug("key file", "took", time.Since(start))
	if WrongPassword(err) {
		// The directory and the server took the password: the key file
		// has an older one.
		err = s.reprotect(ctx, *f)
		res.Reprotected = err == nil
	}
	if err != nil {
		return nil, err
	}
	return res, s.recordContact(ctx, f.f, ans)
}

// ahead is a sign-in sent to the key server while the directory checks
// the password, so that the two round trips overlap: for the key file the
// typed account names, which the directory's answer must confirm before
// the server's is taken.
type ahead struct {
	keyFile keyfile.ID // zero when nothing was sent
	cancel  context.CancelFunc
	done    chan struct{}
	ans     *keyserver.SignIn
	err     error
}

// askAhead sends the sign-in of the key file the account names, if the
// device is online and has one.
func (s *session) askAhead(ctx context.Context) *ahead {
	a := &ahead{}
	if s.d.Directory == nil || s.d.Server == nil {
		return a
	}
	f, err := s.byAccount()
	if err != nil {
		return a
	}
	ctx, a.cancel = context.WithCancel(ctx)
	a.keyFile, a.done = f.f.Header().ID, make(chan struct{})
	go func() {
		defer close(a.done)
		a.ans, a.err = s.ask(ctx, keyserver.SignInRequest{KeyFile: a.keyFile})
	}()
	return a
}

// answer returns the server's answer for key file f: the one sent ahead
// when it was for f, else one asked now.
func (a *ahead) answer(ctx context.Context, s *session, f *stored) (*keyserver.SignIn, error) {
	id := f.f.Header().ID
	if a.done == nil || a.keyFile != id {
		a.discard()
		return s.ask(ctx, keyserver.SignInRequest{KeyFile: id})
	}
	<-a.done
	a.cancel()
	return a.ans, a.err
}

// discard cancels a sign-in sent ahead that is not wanted, waits for it
// and wipes its answer. The session's state is the caller's again after.
func (a *ahead) discard() {
	if a.done == nil {
		return
	}
	a.cancel()
	<-a.done
	if a.ans != nil {
		a.ans.Wipe()
	}
	a.done = nil
}

// authenticate asks the directory; a nil identity without an error means
// offline.
func (s *session) authenticate(ctx context.Context) (*ad.Identity, error) {
	if s.d.Directory == nil || s.d.Server == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.d.stepTimeout())
	defer cancel()
	start := time.Now()
	id, err := s.d.Directory.Login(ctx, s.account, s.password)
	s.d.logger().Debug("directory", "took", time.Since(start))
	if r := ad.ReasonOf(err); r == ad.Unreachable || r == ad.PinMismatch {
		s.d.logger().Info("directory unreachable: offline sign-in", "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !sidPattern.MatchString(id.SID) {
		return nil, fmt.Errorf("directory gave the account an objectSid %q that is not a domain SID", id.SID)
	}
	return id, nil
}

// sidPattern is a SID's string form (MS-DTYP 2.4.2.1); it names a key
// file, so it must be safe as a file name.
var sidPattern = regexp.MustCompile(`^S-1(-[0-9]{1,10}){2,15}$`)

// offline reports whether err means the key server did not answer.
func offline(err error) bool {
	return errors.Is(err, keyserver.ErrUnreachable) || errors.Is(err, keyserver.ErrUnavailable)
}

// ask sends the sign-in to the key server with the recovery-key uses not
// yet reported, and forgets those once the server has them.
func (s *session) ask(ctx context.Context, req keyserver.SignInRequest) (*keyserver.SignIn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.d.stepTimeout())
	defer cancel()
	req.Account, req.Password = s.account, s.password
	for _, r := range s.st.recoveries {
		req.Recoveries = append(req.Recoveries, keyserver.RecoveryUse{KeyFile: r.KeyFile, At: r.At})
	}
	start := time.Now()
	ans, err := s.d.Server.SignIn(ctx, req)
	s.d.logger().Debug("key server", "took", time.Since(start))
	if err != nil {
		return nil, err
	}
	if len(s.st.recoveries) > 0 {
		s.st.recoveries = nil
		if err := s.st.save(s.d.ESP, s.d.KeyDir); err != nil {
			s.d.logger().Warn("recovery reports sent but not cleared", "err", err)
		}
	}
	return ans, nil
}

// offline opens the account's key file with the TPM and the password and
// checks the offline limit.
func (s *session) offline(ctx context.Context) (*Result, error) {
	f, err := s.byAccount()
	if err != nil {
		return nil, err
	}
	if err := f.f.Open(ctx, s.factors(nil)...); err != nil {
		return nil, err
	}
	c, ok := s.st.contactOf(f.f)
	if !ok {
		f.f.Close()
		return nil, ErrNoContact
	}
	now := s.d.now()
	if err := c.allows(now, s.d.tpmClock(ctx)); err != nil {
		f.f.Close()
		return nil, err
	}
	if now.After(c.Floor) {
		c.Floor = now
		s.st.setContact(f.f, c)
		if err := s.st.save(s.d.ESP, s.d.KeyDir); err != nil {
			// The sign-in stands: the floor only guards against a
			// clock set back later.
			s.d.logger().Warn("sign-in state not saved", "err", err)
		}
	}
	return &Result{KeyFile: f.f, Path: f.path}, nil
}

// recordContact records the server's answer as the key file's last
// contact.
func (s *session) recordContact(ctx context.Context, f *keyfile.KeyFile, ans *keyserver.SignIn) error {
	s.st.setContact(f, contact{ServerTime: ans.Time, Floor: ans.Time, Limit: ans.Policy.OfflineLimit,
		TPMClock: s.d.tpmClock(ctx)})
	return s.st.save(s.d.ESP, s.d.KeyDir)
}

// reprotect opens f with its escrowed recovery key and seals it again to
// the TPM and the password the directory just accepted, as the next
// generation of the key file. The new protector seals to the PCRs and
// derives with the Argon2id parameters of the one it replaces.
func (s *session) reprotect(ctx context.Context, f stored) error {
	ans, err := s.ask(ctx, keyserver.SignInRequest{KeyFile: f.f.Header().ID, Open: f.f.Header().ID})
	if err != nil {
		return fmt.Errorf("re-protect %s: %w", f.path, err)
	}
	defer ans.Wipe()
	if err := openWithRecovery(ctx, f.f, ans.RecoveryKey); err != nil {
		return fmt.Errorf("re-protect %s: %w", f.path, err)
	}
	pcrs, argon := sealedWith(f.f)
	tf := tpm.NewFactor(s.d.TPM, pcrs, s.password)
	if _, err := tpm.Reseal(ctx, f.f, tf, argon); err != nil {
		f.f.Close()
		return fmt.Errorf("re-protect %s: %w", f.path, err)
	}
	if err := keyfile.Replace(s.d.ESP, f.path, f.f); err != nil {
		f.f.Close()
		return fmt.Errorf("re-protect %s: %w", f.path, err)
	}
	return nil
}

// openWithRecovery opens f with a recovery key in the form people type.
func openWithRecovery(ctx context.Context, f *keyfile.KeyFile, digits secret.Bytes) error {
	rk, err := keyfile.ParseRecoveryKey(digits)
	if err != nil {
		return fmt.Errorf("escrowed recovery key: %w", err)
	}
	defer rk.Wipe()
	return f.Open(ctx, keyfile.Recovery(rk))
}

// sealedWith returns the PCR selection and the Argon2id parameters of f's
// TPM and password protector; nil and the floor when they cannot be read.
func sealedWith(f *keyfile.KeyFile) (tpm.PCRSelection, keyfile.Argon2Params) {
	var pcrs tpm.PCRSelection
	argon := keyfile.FloorArgon2
	for _, p := range f.Protectors() {
		for i, t := range p.Factors {
			switch t {
			case keyfile.FactorTPM:
				if sealed, err := tpm.ParseParams(p.Params[i]); err == nil {
					pcrs = sealed.PCRs
				}
			case keyfile.FactorPassword:
				if a, err := keyfile.PasswordParams(p.Params[i]); err == nil {
					argon = a
				}
			}
		}
		if pcrs != nil {
			break
		}
	}
	return pcrs, argon
}

// Recover opens the key file that recovery key k opens, whatever the
// network, and records the use for the key server. It returns
// ErrWrongRecoveryKey when no key file opens with it.
func (d *Device) Recover(ctx context.Context, k keyfile.RecoveryKey) (*Result, error) {
	files, err := d.load()
	if err != nil {
		return nil, err
	}
	s := &session{d: d, files: files}
	defer s.closeOthers()
	for _, f := range files {
		err := f.f.Open(ctx, keyfile.Recovery(k))
		if errors.Is(err, keyfile.ErrWrongRecoveryKey) || errors.Is(err, keyfile.ErrNoProtector) {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.res = &Result{KeyFile: f.f, Path: f.path, Recovered: true}
		st := d.loadState()
		st.addRecovery(recovery{f.f.Header().ID, d.now().UTC()})
		if err := st.save(d.ESP, d.KeyDir); err != nil {
			// The device opens: a person who holds the recovery key
			// is let in even if the report cannot be kept.
			d.logger().Warn("recovery-key use not recorded", "err", err)
		}
		d.logger().Info("recovery key used", "upn", f.f.Header().UPN, "key_file", f.f.Header().ID)
		return s.res, nil
	}
	return nil, ErrWrongRecoveryKey
}

// load reads the user and administrator key files on the ESP; damaged
// ones and provisioning key files are left out.
func (d *Device) load() ([]stored, error) {
	paths, err := keyfile.List(d.ESP, d.KeyDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list key files: %w", err)
	}
	var files []stored
	for _, p := range paths {
		f, err := keyfile.Load(d.ESP, p)
		if err != nil {
			d.logger().Warn("key file skipped", "path", p, "err", err)
			continue
		}
		if k := f.Header().Kind; k != keyfile.KindUser && k != keyfile.KindAdministrator {
			continue
		}
		files = append(files, stored{f, p})
	}
	return files, nil
}

func (d *Device) loadState() *state {
	st, damaged := loadState(d.ESP, d.KeyDir)
	for _, err := range damaged {
		d.logger().Warn("sign-in state file skipped", "err", err)
	}
	return st
}

// closeOthers closes every key file but the result's.
func (s *session) closeOthers() {
	for _, f := range s.files {
		if s.res == nil || f.f != s.res.KeyFile {
			f.f.Close()
		}
	}
}

func (s *session) bySID(sid string) *stored {
	for i, f := range s.files {
		if f.f.Header().SID == sid {
			return &s.files[i]
		}
	}
	return nil
}

// byAccount finds the key file of a typed account without the directory:
// by the whole userPrincipalName, or by the name before its @ when the
// account is typed without a domain (or as DOMAIN\name).
func (s *session) byAccount() (stored, error) {
	a, err := ad.ParseAccount(s.account)
	if err != nil {
		return stored{}, err
	}
	var found []stored
	for _, f := range s.files {
		upn := f.f.Header().UPN
		name, _, _ := strings.Cut(upn, "@")
		if strings.EqualFold(upn, a.String()) || a.Form != ad.Principal && strings.EqualFold(name, a.Name) {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 0:
		return stored{}, ErrUnknownUser
	case 1:
		return found[0], nil
	}
	return stored{}, ErrAmbiguous
}

// factors returns the factors of the user's TPM and password protector,
// sealing to pcrs (empty: the default).
func (s *session) factors(pcrs tpm.PCRSelection) []keyfile.Factor {
	return securemoment.FactorsWith(s.d.TPM, pcrs, s.password, s.pw)
}

// tpmClock reads the TPM's Clock, nil when there is none to read.
func (d *Device) tpmClock(ctx context.Context) *time.Duration {
	if d.Clock == nil {
		return nil
	}
	c, err := d.Clock.ReadClock(ctx)
	if err != nil {
		d.logger().Warn("TPM clock", "err", err)
		return nil
	}
	return &c
}

func (d *Device) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Device) stepTimeout() time.Duration {
	if d.StepTimeout > 0 {
		return d.StepTimeout
	}
	return DefaultStepTimeout
}

func (d *Device) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.New(slog.DiscardHandler)
}
