package keyfile

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRecoveryKeyDigits(t *testing.T) {
	for range 100 {
		k := NewRecoveryKey()
		d := k.Digits()
		if len(d) != 55 || bytes.Count(d, []byte("-")) != 7 {
			t.Fatalf("Digits() has the wrong shape (%d bytes)", len(d))
		}
		back, err := ParseRecoveryKey(d)
		if err != nil {
			t.Fatalf("ParseRecoveryKey(Digits()) = %v", err)
		}
		if !back.key.Equal(k.key) {
			t.Fatalf("ParseRecoveryKey(Digits()) is another key")
		}
		// Spaces and no separators at all are taken too.
		if _, err := ParseRecoveryKey(bytes.ReplaceAll(d, []byte("-"), []byte(" "))); err != nil {
			t.Fatalf("ParseRecoveryKey with spaces = %v", err)
		}
		if _, err := ParseRecoveryKey(bytes.ReplaceAll(d, []byte("-"), nil)); err != nil {
			t.Fatalf("ParseRecoveryKey without separators = %v", err)
		}
	}
}

// Every single mistyped digit and every swap of neighbouring digits is
// caught, and the error names the group.
func TestRecoveryKeyTypos(t *testing.T) {
	k := NewRecoveryKey()
	d := k.Digits()
	for i, c := range d {
		if c == '-' {
			continue
		}
		group := i/7 + 1
		for typo := byte('0'); typo <= '9'; typo++ {
			if typo == c {
				continue
			}
			b := bytes.Clone(d)
			b[i] = typo
			_, err := ParseRecoveryKey(b)
			var re *RecoveryKeyError
			if !errors.As(err, &re) || re.Group != group {
				t.Fatalf("digit %d typed as %c: ParseRecoveryKey = %v, want an error for group %d", i, typo, err, group)
			}
		}
		if i+1 < len(d) && d[i+1] != '-' && d[i+1] != c {
			b := bytes.Clone(d)
			b[i], b[i+1] = b[i+1], b[i]
			if _, err := ParseRecoveryKey(b); err == nil {
				t.Fatalf("digits %d and %d swapped: ParseRecoveryKey accepted it", i, i+1)
			}
		}
	}
}

func TestRecoveryKeyBadInput(t *testing.T) {
	good := NewRecoveryKey().Digits()
	swapped := append(bytes.Clone(good[7:14]), good[6])
	swapped = append(append(swapped, good[:6]...), good[13:]...)
	for _, tc := range []struct {
		name  string
		in    []byte
		group int
		text  string
	}{
		{"empty", nil, 0, "has 0 digits"},
		{"short group", append([]byte("12345-"), good[6:]...), 1, "has 5 digits"},
		{"letter", append([]byte("12a456"), good[6:]...), 1, "not a digit"},
		{"too long", append(bytes.Clone(good), '1'), 0, "more than 48"},
		{"groups swapped", swapped, 1, "group 2 typed in the wrong place"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecoveryKey(tc.in)
			var re *RecoveryKeyError
			if !errors.As(err, &re) || re.Group != tc.group || !bytes.Contains([]byte(err.Error()), []byte(tc.text)) {
				t.Errorf("ParseRecoveryKey = %v, want group %d, %q", err, tc.group, tc.text)
			}
		})
	}
}

func TestCalibrate(t *testing.T) {
	for _, target := range []time.Duration{time.Millisecond, 100 * time.Millisecond} {
		p := Calibrate(target)
		if p.Time < FloorArgon2.Time || p.Memory < FloorArgon2.Memory || p.check() != nil {
			t.Errorf("Calibrate(%v) = %+v, below the floor %+v or invalid", target, p, FloorArgon2)
		}
	}
	if _, _, err := PasswordWith([]byte("pw"), Argon2Params{Time: 1, Memory: 8 << 10, Threads: 1}).Enroll(nil, nil); err == nil {
		t.Errorf("Enroll below the floor succeeded")
	}
}
