package keyfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/pbn-project/pbn/pbn/secret"
)

// Argon2Params are the Argon2id parameters of a password factor (RFC 9106).
type Argon2Params struct {
	Time    uint32 // passes over memory
	Memory  uint32 // KiB
	Threads uint8  // lanes
}

// The floor below which calibration never goes, and the bounds a stored
// file may ask for.
//
// The floor is above the minimum of the OWASP password storage guidance
// (19 MiB with 2 passes), so that even on a slow device each guess costs an
// attacker 64 MiB of memory bandwidth twice over. The ceiling bounds what a
// modified file can make a reader spend before the file authenticates.
var (
	FloorArgon2 = Argon2Params{Time: 2, Memory: 32 << 10, Threads: 1}
	maxArgon2   = Argon2Params{Time: 64, Memory: 2 << 20, Threads: 16}
)

// DefaultArgon2Target is how long calibration lets one derivation take on
// the device that enrolls the password. The deployed stage's boot budget
// (1.5 s from agent start to switch_root, the TPM included) leaves room for
// about a quarter second.
const DefaultArgon2Target = 250 * time.Millisecond

// defaultArgon2Memory is what calibration starts from: enough to hurt a
// GPU farm, small enough for any laptop's pre-boot environment.
const defaultArgon2Memory = 64 << 10

const (
	argon2Version   = 1
	argon2SaltSize  = 16
	argon2ParamSize = 1 + argon2SaltSize + 4 + 4 + 1
	passwordKeySize = 32
)

// Calibrate returns Argon2id parameters that take about target on this
// machine, never below FloorArgon2. It times one pass and then two over
// the floor's memory, and scales from there to the default memory (a
// pass's time and its page faults grow with the memory it covers).
//
// The first pass over fresh memory costs its page faults on top of the
// pass itself; on machines whose page faults are slow, such as a virtual
// machine (224 ms for a cold pass over 64 MiB against 36 ms for a warm
// one), the faults are most of it. The user pays them once per
// derivation; an attacker, who reuses memory, never does. Calibrate
// therefore counts them once and spends the rest of target on warm
// passes, which are what an attacker's guesses cost. The two timings
// together cost about what one cold pass over the default memory does; on
// a machine where the first alone takes target, the answer is the floor
// and the second is not made.
func Calibrate(target time.Duration) Argon2Params {
	p := Argon2Params{Time: 1, Memory: FloorArgon2.Memory, Threads: uint8(min(4, runtime.NumCPU()))}
	one := timeDerivation(p)
	if one >= target {
		// Even the floor's passes cost more than target: no timing
		// of two passes can change the answer.
		return Argon2Params{Time: FloorArgon2.Time, Memory: FloorArgon2.Memory, Threads: p.Threads}
	}
	p.Time = 2
	two := timeDerivation(p)
	scale := time.Duration(defaultArgon2Memory / FloorArgon2.Memory)
	// A warm pass counts as an eighth of a cold one at least, so that
	// noise in the two timings cannot make a derivation many times target.
	warm := scale * max(two-one, one/8, time.Millisecond)
	faults := max(scale*one-warm, 0)

	p.Memory = defaultArgon2Memory
	if passes := uint32(min(max(target-faults, 0)/warm, time.Duration(maxArgon2.Time))); passes >= FloorArgon2.Time {
		p.Time = passes
		return p
	}
	// A slow machine: keep the floor's passes and shrink the memory to fit
	// the target, but not below the floor.
	p.Time = FloorArgon2.Time
	mem := time.Duration(defaultArgon2Memory) * target / (faults + warm*time.Duration(FloorArgon2.Time))
	p.Memory = uint32(max(min(mem, defaultArgon2Memory), time.Duration(FloorArgon2.Memory)))
	return p
}

// timeDerivation times one derivation with p over fresh memory: it hands
// the memory of earlier derivations back to the kernel first, so that
// each one faults its pages in as the user's first derivation at boot
// does.
func timeDerivation(p Argon2Params) time.Duration {
	salt := make([]byte, argon2SaltSize)
	debug.FreeOSMemory()
	start := time.Now()
	secret.Bytes(argon2.IDKey([]byte("calibration"), salt, p.Time, p.Memory, p.Threads, passwordKeySize)).Wipe()
	return max(time.Since(start), time.Millisecond)
}

func (p Argon2Params) check() error {
	switch {
	case p.Time < 1 || p.Time > maxArgon2.Time:
		return fmt.Errorf("argon2id time %d outside 1 to %d", p.Time, maxArgon2.Time)
	case p.Memory < 8*uint32(max(p.Threads, 1)) || p.Memory > maxArgon2.Memory:
		return fmt.Errorf("argon2id memory %d KiB outside 8 to %d", p.Memory, maxArgon2.Memory)
	case p.Threads < 1 || p.Threads > maxArgon2.Threads:
		return fmt.Errorf("argon2id threads %d outside 1 to %d", p.Threads, maxArgon2.Threads)
	}
	return nil
}

// passwordParams is what a password factor stores.
type passwordParams struct {
	salt [argon2SaltSize]byte
	Argon2Params
}

func (pp *passwordParams) encode() []byte {
	b := []byte{argon2Version}
	b = append(b, pp.salt[:]...)
	b = binary.BigEndian.AppendUint32(b, pp.Time)
	b = binary.BigEndian.AppendUint32(b, pp.Memory)
	return append(b, pp.Threads)
}

func parseArgon2Params(b []byte) (passwordParams, error) {
	var pp passwordParams
	if len(b) == 0 || b[0] != argon2Version {
		return pp, errors.New("unknown password parameter version")
	}
	if len(b) != argon2ParamSize {
		return pp, fmt.Errorf("password parameters are %d bytes, want %d", len(b), argon2ParamSize)
	}
	copy(pp.salt[:], b[1:])
	pp.Time = binary.BigEndian.Uint32(b[17:])
	pp.Memory = binary.BigEndian.Uint32(b[21:])
	pp.Threads = b[25]
	return pp, pp.check()
}

// PasswordFactor is a factor derived from a password with Argon2id.
//
// A factor made by Remembering keeps what it derives, with the stored
// parameters it was derived under, until Wipe: Recover with the same
// parameters then returns it without deriving again, so that opening a key
// file the factor has just enrolled costs no second derivation.
// DeriveEnrollment and DeriveRecovery make a derivation ahead of its use,
// while the caller waits for something else. Its methods are safe for
// concurrent use; one that needs a derivation under way waits for it.
type PasswordFactor struct {
	password secret.Bytes
	params   Argon2Params
	remember bool

	mu        sync.Mutex
	enrolment *derivation  // made ahead for the next Enroll, nil if none
	derived   []derivation // remembered for Recover
}

// derivation is a secret and the encoded parameters it was derived under.
type derivation struct {
	params []byte
	key    secret.Bytes
}

// Password returns a password factor. Enrolling it calibrates Argon2id to
// DefaultArgon2Target on this machine; use PasswordWith to choose the
// parameters. The factor keeps pw: wipe pw when done with the factor.
func Password(pw secret.Bytes) *PasswordFactor {
	return &PasswordFactor{password: pw}
}

// PasswordWith returns a password factor that enrolls with params, which
// must not be below FloorArgon2; zero params calibrate as Password does.
func PasswordWith(pw secret.Bytes, params Argon2Params) *PasswordFactor {
	return &PasswordFactor{password: pw, params: params}
}

// Remembering returns a password factor like PasswordWith that remembers
// its derivations until Wipe. The caller calls Wipe when done with it, as
// it wipes pw.
func Remembering(pw secret.Bytes, params Argon2Params) *PasswordFactor {
	return &PasswordFactor{password: pw, params: params, remember: true}
}

// Type returns FactorPassword.
func (*PasswordFactor) Type() FactorType { return FactorPassword }

// Enroll derives a secret from the password under a fresh salt, or takes
// the one DeriveEnrollment made.
func (f *PasswordFactor) Enroll(ctx context.Context, h *Header) ([]byte, secret.Bytes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.enrolment
	f.enrolment = nil
	if d == nil {
		var err error
		if d, err = f.newEnrolment(); err != nil {
			return nil, nil, err
		}
	}
	f.keep(*d)
	return d.params, d.key, nil
}

// DeriveEnrollment derives, ahead of the next Enroll, the secret that
// Enroll returns, with a fresh salt and the factor's parameters
// (calibrated now when they are zero). Enroll returns the errors it meets.
func (f *PasswordFactor) DeriveEnrollment() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.enrolment != nil {
		return
	}
	if d, err := f.newEnrolment(); err == nil {
		f.enrolment = d
	}
}

// newEnrolment checks the factor's parameters, calibrating zero ones, and
// derives a secret under a fresh salt.
func (f *PasswordFactor) newEnrolment() (*derivation, error) {
	if len(f.password) == 0 {
		return nil, errors.New("empty password")
	}
	pp := passwordParams{Argon2Params: f.params}
	if pp.Argon2Params == (Argon2Params{}) {
		pp.Argon2Params = Calibrate(DefaultArgon2Target)
	}
	if err := pp.check(); err != nil {
		return nil, err
	}
	if pp.Time < FloorArgon2.Time || pp.Memory < FloorArgon2.Memory {
		return nil, fmt.Errorf("argon2id parameters below the floor of %d passes over %d KiB",
			FloorArgon2.Time, FloorArgon2.Memory)
	}
	copy(pp.salt[:], secret.Random(argon2SaltSize))
	return &derivation{params: pp.encode(), key: f.derive(&pp)}, nil
}

// Recover derives the secret again with the stored parameters, or returns
// the one remembered for them.
func (f *PasswordFactor) Recover(ctx context.Context, h *Header, params []byte) (secret.Bytes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recover(params)
}

// DeriveRecovery derives, ahead of Recover, the secret for the stored
// parameters params, and remembers it whether or not the factor was made
// by Remembering. Recover returns the errors it meets.
func (f *PasswordFactor) DeriveRecovery(params []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.remember = true
	if key, err := f.recover(params); err == nil {
		key.Wipe()
	}
}

// recover returns a copy of the secret for params, remembered or derived;
// the factor keeps it when it remembers.
func (f *PasswordFactor) recover(params []byte) (secret.Bytes, error) {
	for _, d := range f.derived {
		if bytes.Equal(d.params, params) {
			return d.key.Clone(), nil
		}
	}
	pp, err := parseArgon2Params(params)
	if err != nil {
		return nil, err
	}
	if len(f.password) == 0 {
		return nil, ErrWrongPassword
	}
	d := derivation{params: bytes.Clone(params), key: f.derive(&pp)}
	f.keep(d)
	return d.key, nil
}

// keep remembers a copy of d if the factor remembers.
func (f *PasswordFactor) keep(d derivation) {
	if f.remember {
		f.derived = append(f.derived, derivation{params: d.params, key: d.key.Clone()})
	}
}

// Wipe wipes and forgets every secret the factor remembers. It does not
// wipe the password, which the caller owns.
func (f *PasswordFactor) Wipe() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.derived {
		d.key.Wipe()
	}
	if f.enrolment != nil {
		f.enrolment.key.Wipe()
	}
	f.derived, f.enrolment = nil, nil
}

func (f *PasswordFactor) derive(pp *passwordParams) secret.Bytes {
	return argon2.IDKey(f.password, pp.salt[:], pp.Time, pp.Memory, pp.Threads, passwordKeySize)
}

// PasswordParams returns the Argon2id parameters stored in a password
// factor's params, for inspection.
func PasswordParams(params []byte) (Argon2Params, error) {
	pp, err := parseArgon2Params(params)
	return pp.Argon2Params, err
}
