package keyfile

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/pbn/secret"
)

// A recovery key is 128 random bits that a help desk can read over the
// phone: 48 digits in eight groups of six. Group g (counting from 0) holds
// a 16-bit value v as the number 11*v + g, so every group is checked on its
// own: a mistyped digit changes the number's remainder modulo 11, and so
// does a swap of two neighbouring digits; a group typed in the wrong place
// shows as the remainder of another position.

const (
	recoveryGroups    = 8
	recoveryGroupSize = 6
	recoveryKeySize   = 2 * recoveryGroups
	recoveryVersion   = 1
	recoverySaltSize  = 16
)

// RecoveryKey is a recovery key. It never prints: use Digits to show it.
type RecoveryKey struct {
	key secret.Bytes
}

// NewRecoveryKey returns a fresh random recovery key.
func NewRecoveryKey() RecoveryKey {
	return RecoveryKey{secret.Random(recoveryKeySize)}
}

// RecoveryKeyError says which group of a typed recovery key is wrong.
type RecoveryKeyError struct {
	Group  int    // 1 to 8; 0 when the key as a whole is wrong
	Reason string // for people: "has 5 digits", "is mistyped"
}

func (e *RecoveryKeyError) Error() string {
	if e.Group == 0 {
		return "recovery key " + e.Reason
	}
	return fmt.Sprintf("recovery key group %d %s", e.Group, e.Reason)
}

// ParseRecoveryKey parses a typed recovery key: 48 digits, in groups of six
// separated by dashes or spaces, or not separated at all. It returns a
// *RecoveryKeyError that names the first group that is wrong. The input is
// not kept.
func ParseRecoveryKey(typed []byte) (RecoveryKey, error) {
	var digits [recoveryGroups * recoveryGroupSize]byte
	n := 0
	for _, c := range typed {
		switch {
		case c >= '0' && c <= '9':
			if n == len(digits) {
				return RecoveryKey{}, &RecoveryKeyError{Reason: "has more than 48 digits"}
			}
			digits[n] = c - '0'
			n++
		case c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if n%recoveryGroupSize != 0 {
				return RecoveryKey{}, &RecoveryKeyError{Group: n/recoveryGroupSize + 1,
					Reason: fmt.Sprintf("has %d digits, want 6", n%recoveryGroupSize)}
			}
		default:
			return RecoveryKey{}, &RecoveryKeyError{Group: n/recoveryGroupSize + 1, Reason: "holds a character that is not a digit"}
		}
	}
	defer clear(digits[:])
	if n != len(digits) {
		return RecoveryKey{}, &RecoveryKeyError{Reason: fmt.Sprintf("has %d digits, want 48", n)}
	}
	key := make(secret.Bytes, recoveryKeySize)
	for g := range recoveryGroups {
		v := 0
		for _, d := range digits[g*recoveryGroupSize : (g+1)*recoveryGroupSize] {
			v = v*10 + int(d)
		}
		if r := v % 11; r != g {
			reason := "is mistyped"
			if r < recoveryGroups {
				reason = fmt.Sprintf("is mistyped, or is group %d typed in the wrong place", r+1)
			}
			key.Wipe()
			return RecoveryKey{}, &RecoveryKeyError{Group: g + 1, Reason: reason}
		}
		if v/11 > 0xffff {
			key.Wipe()
			return RecoveryKey{}, &RecoveryKeyError{Group: g + 1, Reason: "is out of range"}
		}
		key[2*g], key[2*g+1] = byte(v/11>>8), byte(v/11)
	}
	return RecoveryKey{key}, nil
}

// Digits returns the recovery key as people read it:
// 123456-123456-123456-123456-123456-123456-123456-123456. The caller wipes
// the result.
func (k RecoveryKey) Digits() secret.Bytes {
	if len(k.key) != recoveryKeySize {
		return nil
	}
	out := make(secret.Bytes, 0, recoveryGroups*(recoveryGroupSize+1))
	for g := range recoveryGroups {
		v := (int(k.key[2*g])<<8|int(k.key[2*g+1]))*11 + g
		if g > 0 {
			out = append(out, '-')
		}
		for div := 100000; div > 0; div /= 10 {
			out = append(out, byte('0'+v/div%10))
		}
	}
	return out
}

// Wipe overwrites the recovery key with zeros.
func (k RecoveryKey) Wipe() { k.key.Wipe() }

// RecoveryFactor is a factor derived from a recovery key.
type RecoveryFactor struct {
	key RecoveryKey
}

// Recovery returns a factor for recovery key k. The factor keeps k: wipe it
// when done with the factor.
func Recovery(k RecoveryKey) *RecoveryFactor { return &RecoveryFactor{k} }

// Type returns FactorRecovery.
func (*RecoveryFactor) Type() FactorType { return FactorRecovery }

// Enroll derives a secret from the recovery key under a fresh salt. The
// key has 128 random bits, so no stretching is needed.
func (f *RecoveryFactor) Enroll(ctx context.Context, h *Header) ([]byte, secret.Bytes, error) {
	if len(f.key.key) != recoveryKeySize {
		return nil, nil, errors.New("no recovery key")
	}
	params := append([]byte{recoveryVersion}, secret.Random(recoverySaltSize)...)
	s, err := f.derive(params[1:])
	return params, s, err
}

// Recover derives the secret again from the stored salt.
func (f *RecoveryFactor) Recover(ctx context.Context, h *Header, params []byte) (secret.Bytes, error) {
	salt, err := parseRecoveryParams(params)
	if err != nil {
		return nil, err
	}
	if len(f.key.key) != recoveryKeySize {
		return nil, ErrWrongRecoveryKey
	}
	return f.derive(salt)
}

func (f *RecoveryFactor) derive(salt []byte) (secret.Bytes, error) {
	s, err := hkdf.Key(sha256.New, f.key.key, salt, "PBN recovery key v1", 32)
	return secret.Bytes(s), err
}

func parseRecoveryParams(b []byte) ([]byte, error) {
	if len(b) == 0 || b[0] != recoveryVersion {
		return nil, errors.New("unknown recovery parameter version")
	}
	if len(b) != 1+recoverySaltSize {
		return nil, fmt.Errorf("recovery parameters are %d bytes, want %d", len(b), 1+recoverySaltSize)
	}
	return b[1:], nil
}
