package keyfile

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
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
// machine, never below FloorArgon2. It times one pass over the default
// memory and scales from there.
//
// The pass is timed cold, with the memory freshly faulted in, because that
// is what the user waits for: the agent derives once per boot. On machines
// whose page faults are slow the cold pass costs several warm ones (here, a
// virtual machine: 224 ms cold against 36 ms warm for 64 MiB), so the
// parameters chosen cost an attacker, who reuses memory, less than target.
// TODO: time the warm pass too and spend what the faults leave of target on
// passes, so that slow page faults do not lower the attacker's cost.
func Calibrate(target time.Duration) Argon2Params {
	p := Argon2Params{Time: 1, Memory: defaultArgon2Memory, Threads: uint8(min(4, runtime.NumCPU()))}
	salt := make([]byte, argon2SaltSize)
	start := time.Now()
	secret.Bytes(argon2.IDKey([]byte("calibration"), salt, p.Time, p.Memory, p.Threads, passwordKeySize)).Wipe()
	perPass := max(time.Since(start), time.Millisecond)

	if passes := uint32(min(target/perPass, time.Duration(maxArgon2.Time))); passes >= FloorArgon2.Time {
		p.Time = passes
		return p
	}
	// A slow machine: keep the floor's passes and shrink the memory to fit
	// the target, but not below the floor.
	p.Time = FloorArgon2.Time
	mem := time.Duration(defaultArgon2Memory) * target / (perPass * time.Duration(FloorArgon2.Time))
	p.Memory = uint32(max(min(mem, defaultArgon2Memory), time.Duration(FloorArgon2.Memory)))
	return p
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
type PasswordFactor struct {
	password secret.Bytes
	params   Argon2Params
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

// Type returns FactorPassword.
func (*PasswordFactor) Type() FactorType { return FactorPassword }

// Enroll derives a secret from the password under a fresh salt.
func (f *PasswordFactor) Enroll(ctx context.Context, h *Header) ([]byte, secret.Bytes, error) {
	if len(f.password) == 0 {
		return nil, nil, errors.New("empty password")
	}
	pp := passwordParams{Argon2Params: f.params}
	if pp.Argon2Params == (Argon2Params{}) {
		pp.Argon2Params = Calibrate(DefaultArgon2Target)
	}
	if err := pp.check(); err != nil {
		return nil, nil, err
	}
	if pp.Time < FloorArgon2.Time || pp.Memory < FloorArgon2.Memory {
		return nil, nil, fmt.Errorf("argon2id parameters below the floor of %d passes over %d KiB",
			FloorArgon2.Time, FloorArgon2.Memory)
	}
	copy(pp.salt[:], secret.Random(argon2SaltSize))
	return pp.encode(), f.derive(&pp), nil
}

// Recover derives the secret again with the stored parameters.
func (f *PasswordFactor) Recover(ctx context.Context, h *Header, params []byte) (secret.Bytes, error) {
	pp, err := parseArgon2Params(params)
	if err != nil {
		return nil, err
	}
	if len(f.password) == 0 {
		return nil, ErrWrongPassword
	}
	return f.derive(&pp), nil
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
