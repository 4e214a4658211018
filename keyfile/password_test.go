package keyfile

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"github.com/pbn-project/pbn/pbn/secret"
)

// allocated returns how many bytes fn allocates. An Argon2id derivation
// allocates its whole memory parameter, so a call that allocates much less
// than that did not derive.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// derived reports whether fn derived a secret at the floor parameters.
func derived(fn func()) bool {
	return allocated(fn) > uint64(FloorArgon2.Memory)<<10/2
}

// recoverWith recovers the secret of params with factor f.
func recoverWith(t *testing.T, f *PasswordFactor, params []byte) secret.Bytes {
	t.Helper()
	s, err := f.Recover(context.Background(), nil, params)
	if err != nil {
		t.Fatalf("Recover = %v", err)
	}
	return s
}

// TestRememberingFactor checks that a remembering factor returns, without
// deriving again, only the secret derived under the very parameters asked
// for, and that a plain factor derives every time. It does not prove that
// the remembered secret is wiped from memory that Go copied before Wipe.
func TestRememberingFactor(t *testing.T) {
	pw := secret.Bytes("correct horse")
	ctx := context.Background()
	f := Remembering(pw, FloorArgon2)
	defer f.Wipe()
	var params []byte
	var enrolled secret.Bytes
	if !derived(func() { params, enrolled, _ = f.Enroll(ctx, nil) }) {
		t.Fatal("Enroll did not derive")
	}
	plain := PasswordWith(pw, FloorArgon2)
	want := recoverWith(t, plain, params)
	if !enrolled.Equal(want) {
		t.Fatal("Enroll's secret is not the one a plain factor recovers")
	}
	otherSalt := append([]byte(nil), params...)
	otherSalt[1] ^= 1

	for _, tc := range []struct {
		name        string
		f           *PasswordFactor
		params      []byte
		wantDerived bool
		wantSame    bool
	}{
		{"the enrolled parameters", f, params, false, true},
		{"another salt", f, otherSalt, true, false},
		{"another salt again", f, otherSalt, false, false},
		{"a plain factor", plain, params, true, true},
		{"another password", Remembering(secret.Bytes("correct horsf"), FloorArgon2), params, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got secret.Bytes
			if d := derived(func() { got = recoverWith(t, tc.f, tc.params) }); d != tc.wantDerived {
				t.Errorf("Recover derived: %v, want %v", d, tc.wantDerived)
			}
			if same := got.Equal(want); same != tc.wantSame {
				t.Errorf("Recover returned the enrolled secret: %v, want %v", same, tc.wantSame)
			}
		})
	}

	f.Wipe()
	var got secret.Bytes
	if !derived(func() { got = recoverWith(t, f, params) }) {
		t.Error("Recover after Wipe did not derive")
	}
	if !got.Equal(want) {
		t.Error("Recover after Wipe returned another secret")
	}
}

// TestDeriveAhead checks that the derivations made ahead are the ones
// Enroll and Recover then return, without deriving, also when Recover
// runs while the derivation ahead is under way.
func TestDeriveAhead(t *testing.T) {
	pw := secret.Bytes("correct horse")
	ctx := context.Background()

	f := Remembering(pw, FloorArgon2)
	defer f.Wipe()
	f.DeriveEnrollment()
	var params []byte
	var enrolled secret.Bytes
	if derived(func() { params, enrolled, _ = f.Enroll(ctx, nil) }) {
		t.Error("Enroll after DeriveEnrollment derived again")
	}
	if want := recoverWith(t, PasswordWith(pw, FloorArgon2), params); !enrolled.Equal(want) {
		t.Error("Enroll after DeriveEnrollment returned a secret that its parameters do not derive")
	}
	if p2, _, _ := f.Enroll(ctx, nil); string(p2) == string(params) {
		t.Error("a second Enroll reused the salt of the first")
	}

	g := PasswordWith(pw, FloorArgon2)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.DeriveRecovery(params)
	}()
	got := recoverWith(t, g, params) // waits for, or precedes, the derivation ahead
	wg.Wait()
	if !got.Equal(enrolled) {
		t.Error("Recover beside DeriveRecovery returned another secret")
	}
	if derived(func() { got = recoverWith(t, g, params) }) {
		t.Error("Recover after DeriveRecovery derived again")
	}
	if !got.Equal(enrolled) {
		t.Error("Recover after DeriveRecovery returned another secret")
	}
	g.Wipe()
}

// TestDeriveAheadErrors checks that the errors a derivation ahead meets
// reach Enroll and Recover.
func TestDeriveAheadErrors(t *testing.T) {
	f := Remembering(nil, FloorArgon2)
	f.DeriveEnrollment()
	if _, _, err := f.Enroll(context.Background(), nil); err == nil {
		t.Error("Enroll of an empty password after DeriveEnrollment succeeded")
	}
	g := Remembering(secret.Bytes("pw"), FloorArgon2)
	g.DeriveRecovery([]byte{9})
	if _, err := g.Recover(context.Background(), nil, []byte{9}); err == nil {
		t.Error("Recover of unknown parameters after DeriveRecovery succeeded")
	}
}
