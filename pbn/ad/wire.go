package ad

import (
	"fmt"
	"io"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/pbn-project/pbn/pbn/secret"
)

// BER tags of a simple BindRequest (RFC 4511 section 4.2 and appendix B).
const (
	tagSequence    = 0x30
	tagInteger     = 0x02
	tagOctetString = 0x04
	tagBindRequest = 0x60 // [APPLICATION 0], constructed
	tagSimple      = 0x80 // [0], primitive: AuthenticationChoice simple
	ldapVersion    = 3
)

// encodeBind returns the LDAPMessage of a simple bind of name with pw, in
// one buffer that the caller wipes. Its size is computed first, so that no
// append moves the password and leaves a copy behind.
func encodeBind(id int64, name string, pw secret.Bytes) secret.Bytes {
	idBytes := intBytes(id)
	body := tlvLen(len(idBytes)) // messageID
	op := tlvLen(1) + tlvLen(len(name)) + tlvLen(len(pw))
	body += headerLen(op) + op
	msg := make(secret.Bytes, 0, headerLen(body)+body)

	msg = appendHeader(msg, tagSequence, body)
	msg = append(appendHeader(msg, tagInteger, len(idBytes)), idBytes...)
	msg = appendHeader(msg, tagBindRequest, op)
	msg = append(msg, tagInteger, 1, ldapVersion)
	msg = append(appendHeader(msg, tagOctetString, len(name)), name...)
	msg = append(appendHeader(msg, tagSimple, len(pw)), pw...)
	return msg
}

// intBytes is the minimal two's-complement encoding of a positive n.
func intBytes(n int64) []byte {
	b := []byte{byte(n)}
	for n >>= 8; n > 0; n >>= 8 {
		b = append([]byte{byte(n)}, b...)
	}
	if b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return b
}

// headerLen is the size of a tag and a definite length for n content bytes.
func headerLen(n int) int {
	if n <= 0x7f {
		return 2
	}
	size := 2
	for ; n > 0; n >>= 8 {
		size++
	}
	return size
}

// tlvLen is the size of a whole element with n content bytes.
func tlvLen(n int) int { return headerLen(n) + n }

// appendHeader appends a tag and the definite length n (X.690 section 8.1.3).
func appendHeader(b []byte, tag byte, n int) []byte {
	b = append(b, tag)
	if n <= 0x7f {
		return append(b, byte(n))
	}
	var l []byte
	for ; n > 0; n >>= 8 {
		l = append([]byte{byte(n)}, l...)
	}
	return append(append(b, 0x80|byte(len(l))), l...)
}

// readResult reads one LDAPMessage from r and returns nil if it is the
// response op to message id with resultCode success, the *ldap.Error of
// another result code, or an errNoAnswer error.
func readResult(r io.Reader, id int64, op ber.Tag) error {
	p, err := ber.ReadPacket(r)
	if err != nil {
		return fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	if len(p.Children) < 2 || p.Children[1].Tag != op {
		return fmt.Errorf("%w: not the response to request %d", errNoAnswer, id)
	}
	if got, ok := p.Children[0].Value.(int64); !ok || got != id {
		return fmt.Errorf("%w: response to message %v, want %d", errNoAnswer, p.Children[0].Value, id)
	}
	return ldap.GetLDAPError(p)
}
