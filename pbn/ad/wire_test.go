package ad

import (
	"bytes"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/pbn-project/pbn/pbn/secret"
)

func TestEncodeBind(t *testing.T) {
	for _, tt := range []struct {
		id    int64
		name  string
		pwLen int
	}{
		{1, "alice@corp.example.test", 13},
		{2, `CORP\alice`, 0x7f},
		{128, strings.Repeat("n", 0x80), 0x80},
		{70000, strings.Repeat("n", 0x100), 0x10000},
	} {
		pw := secret.Bytes(bytes.Repeat([]byte{'p'}, tt.pwLen))
		msg := encodeBind(tt.id, tt.name, pw)
		if cap(msg) != len(msg) {
			t.Errorf("encodeBind(%d, %d-byte name, %d-byte password): cap %d, len %d; the buffer grew",
				tt.id, len(tt.name), tt.pwLen, cap(msg), len(msg))
		}
		p, err := ber.DecodePacketErr(msg)
		if err != nil {
			t.Fatalf("encodeBind(%d, ...) does not decode: %v", tt.id, err)
		}
		if len(p.Children) != 2 || len(p.Children[1].Children) != 3 {
			t.Fatalf("encodeBind(%d, ...) = %d elements, want messageID and a 3-element BindRequest", tt.id, len(p.Children))
		}
		req := p.Children[1].Children
		if p.Children[0].Value != tt.id || p.Children[1].Tag != 0 || req[0].Value != int64(3) ||
			req[1].Value != tt.name || !bytes.Equal(req[2].Data.Bytes(), pw) ||
			req[2].Tag != 0 || req[2].ClassType != ber.ClassContext {
			t.Errorf("encodeBind(%d, ...) decodes as id %v, version %v, name %d bytes, simple %d bytes", tt.id,
				p.Children[0].Value, req[0].Value, len(req[1].Data.Bytes()), len(req[2].Data.Bytes()))
		}
	}
}
