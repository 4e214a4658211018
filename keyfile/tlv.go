package keyfile

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// The sections of a key file are sequences of fields: a one-byte tag, a
// two-byte big-endian length and the value. Within a section the tags of a
// format version come in ascending order, a tag repeats only where the
// format allows it, and any other tag is an error, so each file has exactly
// one encoding and a reader never guesses.

// field is one decoded field.
type field struct {
	tag   uint8
	value []byte
}

// encoder appends fields to a buffer.
type encoder struct {
	b []byte
}

func (e *encoder) bytes(tag uint8, v []byte) {
	if len(v) > math.MaxUint16 {
		panic("keyfile: field too long to encode") // limits are checked before encoding
	}
	e.b = append(e.b, tag)
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(v)))
	e.b = append(e.b, v...)
}

func (e *encoder) string(tag uint8, s string) {
	if s != "" {
		e.bytes(tag, []byte(s))
	}
}

func (e *encoder) uint64(tag uint8, v uint64) {
	e.bytes(tag, binary.BigEndian.AppendUint64(nil, v))
}

func (e *encoder) uint8(tag uint8, v uint8) {
	e.bytes(tag, []byte{v})
}

// fieldSpec says what a section allows under one tag.
type fieldSpec struct {
	name     string
	min, max int  // bounds on the value's length
	repeat   int  // how many times the tag may appear; 0 means once
	required bool // whether the tag must appear
}

// decodeFields splits a section into fields and checks them against spec,
// which maps each allowed tag to its rules. It returns the fields in order.
func decodeFields(section string, b []byte, spec map[uint8]fieldSpec) ([]field, error) {
	var (
		fields []field
		last   = -1
		count  = map[uint8]int{}
	)
	for len(b) > 0 {
		if len(b) < 3 {
			return nil, formatErr(section, "truncated field")
		}
		tag, n := b[0], int(binary.BigEndian.Uint16(b[1:3]))
		s, ok := spec[tag]
		if !ok {
			return nil, formatErr(section, fmt.Sprintf("unknown field tag %d", tag))
		}
		if int(tag) < last {
			return nil, formatErr(section, fmt.Sprintf("field %s out of order", s.name))
		}
		if int(tag) == last && s.repeat == 0 {
			return nil, formatErr(section, fmt.Sprintf("field %s appears twice", s.name))
		}
		count[tag]++
		if s.repeat > 0 && count[tag] > s.repeat {
			return nil, formatErr(section, fmt.Sprintf("more than %d %s fields", s.repeat, s.name))
		}
		if len(b)-3 < n {
			return nil, formatErr(section, fmt.Sprintf("field %s truncated", s.name))
		}
		if n < s.min || n > s.max {
			return nil, formatErr(section, fmt.Sprintf("field %s has length %d, want %d to %d", s.name, n, s.min, s.max))
		}
		fields = append(fields, field{tag, b[3 : 3+n]})
		last = int(tag)
		b = b[3+n:]
	}
	for tag, s := range spec {
		if s.required && count[tag] == 0 {
			return nil, formatErr(section, fmt.Sprintf("field %s missing", s.name))
		}
	}
	return fields, nil
}

// text checks that a field holds printable UTF-8 text.
func text(section, name string, v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", formatErr(section, fmt.Sprintf("field %s is not UTF-8", name))
	}
	for _, r := range string(v) {
		if r < 0x20 || r == 0x7f {
			return "", formatErr(section, fmt.Sprintf("field %s holds a control character", name))
		}
	}
	return string(v), nil
}
