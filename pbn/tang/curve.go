package tang

import (
	"crypto/ecdh"
	"crypto/elliptic"
	"errors"
	"fmt"

	"filippo.io/nistec"
)

// ErrInvalidPoint is returned when a point is not on the key's curve, is
// the point at infinity or is not encoded canonically: the defence against
// invalid-curve attacks.
var ErrInvalidPoint = errors.New("tang: point is not on the curve")

// A curve is one of the NIST curves that Tang keys use, with its
// arithmetic on uncompressed SEC 1 points (SEC 1 v2 section 2.3.3).
type curve struct {
	name     string // the JWK "crv" (RFC 7518 section 6.2.1.1)
	size     int    // bytes of one coordinate or scalar
	ecdh     ecdh.Curve
	elliptic elliptic.Curve

	// mul returns k·p; add returns p+q; sub returns p-q. Each rejects a
	// point off the curve and a result at infinity.
	mul      func(p, k []byte) ([]byte, error)
	add, sub func(p, q []byte) ([]byte, error)
}

var (
	p256 = &curve{
		name: CurveP256, size: 32, ecdh: ecdh.P256(), elliptic: elliptic.P256(),
		mul: scalarMult(nistec.NewP256Point),
		add: combine(nistec.NewP256Point, false),
		sub: combine(nistec.NewP256Point, true),
	}
	p521 = &curve{
		name: CurveP521, size: 66, ecdh: ecdh.P521(), elliptic: elliptic.P521(),
		mul: scalarMult(nistec.NewP521Point),
		add: combine(nistec.NewP521Point, false),
		sub: combine(nistec.NewP521Point, true),
	}
)

// curveNamed returns the curve whose JWK name is name.
func curveNamed(name string) (*curve, error) {
	switch name {
	case p256.name:
		return p256, nil
	case p521.name:
		return p521, nil
	}
	return nil, fmt.Errorf("unsupported curve %q (want P-256 or P-521)", name)
}

// point is what the nistec point types have in common.
type point[T any] interface {
	*T
	SetBytes([]byte) (*T, error)
	Bytes() []byte
	Add(*T, *T) *T
	Negate(*T) *T
	ScalarMult(*T, []byte) (*T, error)
	IsInfinity() int
}

// decode parses an uncompressed point; SetBytes checks that it is on the
// curve and canonical, and the length check refuses the one-byte encoding
// of the point at infinity.
func decode[T any, P point[T]](newPoint func() P, b []byte) (P, error) {
	if len(b) == 0 || b[0] != 4 {
		return nil, ErrInvalidPoint
	}
	p, err := newPoint().SetBytes(b)
	if err != nil {
		return nil, ErrInvalidPoint
	}
	return P(p), nil
}

// encode returns p's uncompressed encoding, refusing the point at infinity.
func encode[T any, P point[T]](p P) ([]byte, error) {
	if p.IsInfinity() == 1 {
		return nil, ErrInvalidPoint
	}
	return p.Bytes(), nil
}

func scalarMult[T any, P point[T]](newPoint func() P) func(p, k []byte) ([]byte, error) {
	return func(pb, k []byte) ([]byte, error) {
		p, err := decode(newPoint, pb)
		if err != nil {
			return nil, err
		}
		r, err := newPoint().ScalarMult(p, k)
		if err != nil {
			return nil, fmt.Errorf("scalar multiplication: %w", err)
		}
		return encode(P(r))
	}
}

func combine[T any, P point[T]](newPoint func() P, negate bool) func(p, q []byte) ([]byte, error) {
	return func(pb, qb []byte) ([]byte, error) {
		p, err := decode(newPoint, pb)
		if err != nil {
			return nil, err
		}
		q, err := decode(newPoint, qb)
		if err != nil {
			return nil, err
		}
		if negate {
			q = P(newPoint().Negate(q))
		}
		return encode(P(newPoint().Add(p, q)))
	}
}
