// Package secret holds key material and passwords in memory.
//
// A [Bytes] value never prints: every fmt verb, slog and JSON show a fixed
// placeholder instead of its contents, so a secret that slips into a log line
// or an error message leaks nothing. Call [Bytes.Wipe] when a secret is no
// longer needed. Go's garbage collector may still have copied the bytes
// before the wipe; keeping secrets in one slice, never converted to a
// string, keeps such copies few.
package secret

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// Bytes is a secret byte string.
type Bytes []byte

const placeholder = "[secret]"

// Random returns n bytes from the system's random source.
func Random(n int) Bytes {
	b := make(Bytes, n)
	rand.Read(b) // never fails on Linux (crypto/rand since Go 1.24)
	return b
}

// Wipe overwrites the secret with zeros.
func (b Bytes) Wipe() {
	clear(b)
}

// Equal reports whether b and o hold the same bytes, in constant time.
func (b Bytes) Equal(o Bytes) bool {
	return subtle.ConstantTimeCompare(b, o) == 1
}

// Clone returns a copy of b that the caller wipes separately.
func (b Bytes) Clone() Bytes {
	if b == nil {
		return nil
	}
	return append(Bytes(nil), b...)
}

// Format prints a placeholder for every verb, so that fmt never shows the
// secret.
func (b Bytes) Format(f fmt.State, verb rune) {
	fmt.Fprint(f, placeholder)
}

// LogValue makes slog record a placeholder.
func (b Bytes) LogValue() slog.Value {
	return slog.StringValue(placeholder)
}

// MarshalText makes encoding/json and others write a placeholder.
func (b Bytes) MarshalText() ([]byte, error) {
	return []byte(placeholder), nil
}

// WipeAll wipes every secret given.
func WipeAll(bs ...Bytes) {
	for _, b := range bs {
		b.Wipe()
	}
}

// DisableCoreDumps keeps the calling process's memory, and the secrets in
// it, out of core dumps and away from ptrace by other users: it sets
// RLIMIT_CORE to zero and clears the process's dumpable flag. Every PBN
// command that handles a secret calls it first.
func DisableCoreDumps() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("disable core dumps: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("disable core dumps: %w", err)
	}
	return nil
}
