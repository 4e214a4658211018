package ad

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
)

func TestDecodeSID(t *testing.T) {
	// S-1-5-21-1004336348-1177238915-682003330-512, as MS-DTYP 2.4.2.3 lays it out.
	b := []byte{1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0}
	for _, sub := range []uint32{1004336348, 1177238915, 682003330, 512} {
		b = binary.LittleEndian.AppendUint32(b, sub)
	}
	got, err := DecodeSID(b)
	if want := "S-1-5-21-1004336348-1177238915-682003330-512"; got != want || err != nil {
		t.Errorf("DecodeSID = %q, %v; want %q", got, err, want)
	}
	for _, bad := range [][]byte{nil, b[:7], b[:len(b)-1], append([]byte{2}, b[1:]...), append(b, 0)} {
		if s, err := DecodeSID(bad); err == nil {
			t.Errorf("DecodeSID(% x) = %q, want an error", bad, s)
		}
	}
}

func TestDecodeGUID(t *testing.T) {
	b := []byte{0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	got, err := DecodeGUID(b)
	if want := "00112233-4455-6677-8899-aabbccddeeff"; got != want || err != nil {
		t.Errorf("DecodeGUID = %q, %v; want %q", got, err, want)
	}
	if _, err := DecodeGUID(b[:15]); err == nil {
		t.Errorf("DecodeGUID(15 bytes) succeeded")
	}
}

// FuzzDecodeSID checks that an accepted SID's string form encodes back to
// the same bytes.
func FuzzDecodeSID(f *testing.F) {
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 15})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSID(b)
		if err != nil {
			return
		}
		parts := strings.Split(strings.TrimPrefix(s, "S-1-"), "-")
		auth, err := strconv.ParseUint(parts[0], 10, 48)
		if err != nil || len(parts)-1 != int(b[1]) {
			t.Fatalf("DecodeSID(% x) = %q", b, s)
		}
		enc := []byte{1, byte(len(parts) - 1), byte(auth >> 40), byte(auth >> 32), byte(auth >> 24), byte(auth >> 16), byte(auth >> 8), byte(auth)}
		for _, p := range parts[1:] {
			n, err := strconv.ParseUint(p, 10, 32)
			if err != nil {
				t.Fatalf("DecodeSID(% x) = %q", b, s)
			}
			enc = binary.LittleEndian.AppendUint32(enc, uint32(n))
		}
		if string(enc) != string(b) {
			t.Fatalf("DecodeSID(% x) = %q, which encodes as % x", b, s, enc)
		}
	})
}
