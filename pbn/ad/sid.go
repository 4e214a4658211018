package ad

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DecodeSID returns the string form S-1-5-21-... of a binary SID, as AD
// stores objectSid (MS-DTYP 2.4.2.2 and 2.4.2.1).
func DecodeSID(b []byte) (string, error) {
	if len(b) < 8 || b[0] != 1 {
		return "", errors.New("ad: objectSid: not a revision 1 SID")
	}
	n := int(b[1])
	if n > 15 || len(b) != 8+4*n {
		return "", fmt.Errorf("ad: objectSid: %d bytes for %d sub-authorities", len(b), n)
	}
	var auth uint64
	for _, x := range b[2:8] { // 48 bits, big-endian
		auth = auth<<8 | uint64(x)
	}
	var s strings.Builder
	s.WriteString("S-1-")
	s.WriteString(strconv.FormatUint(auth, 10))
	for i := range n {
		s.WriteByte('-')
		s.WriteString(strconv.FormatUint(uint64(binary.LittleEndian.Uint32(b[8+4*i:])), 10))
	}
	return s.String(), nil
}

// DecodeGUID returns the string form of a binary GUID, as AD stores
// objectGUID (MS-DTYP 2.3.4.2 and 2.3.4.3): the first three fields are
// little-endian.
func DecodeGUID(b []byte) (string, error) {
	if len(b) != 16 {
		return "", fmt.Errorf("ad: objectGUID: %d bytes, want 16", len(b))
	}
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(b),
		binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:]), nil
}
