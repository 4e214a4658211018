package tang

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/pbn-project/pbn/pbn/secret"
)

// bind makes a new McCallum-Relyea binding to the server key s: it returns
// the client's public point C = cG, to be stored, and the secret, the x
// coordinate of K = cS. The scalar c is wiped.
func bind(s ExchangeKey) (clt []byte, k secret.Bytes, err error) {
	crv, err := curveNamed(s.Curve)
	if err != nil {
		return nil, nil, err
	}
	c, err := crv.ecdh.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tang bind: %w", err)
	}
	scalar := secret.Bytes(c.Bytes())
	defer scalar.Wipe()
	p, err := crv.mul(s.Point, scalar)
	if err != nil {
		return nil, nil, fmt.Errorf("tang bind: server key: %w", err)
	}
	return c.PublicKey().Bytes(), xOf(crv, p), nil
}

// exchangeFunc sends X to the server and returns sX.
type exchangeFunc func(ctx context.Context, x []byte) ([]byte, error)

// recoverKey makes again the secret of a binding to s whose client point
// is clt, in one exchange: it sends X = C + eG for a fresh e and computes
// K = sX - eS.
func recoverKey(ctx context.Context, s ExchangeKey, clt []byte, exchange exchangeFunc) (secret.Bytes, error) {
	crv, err := curveNamed(s.Curve)
	if err != nil {
		return nil, err
	}
	e, err := crv.ecdh.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tang recover: %w", err)
	}
	scalar := secret.Bytes(e.Bytes())
	defer scalar.Wipe()
	x, err := crv.add(clt, e.PublicKey().Bytes())
	if err != nil {
		return nil, fmt.Errorf("tang recover: client key: %w", err)
	}
	y, err := exchange(ctx, x)
	if err != nil {
		return nil, err
	}
	z, err := crv.mul(s.Point, scalar)
	if err != nil {
		return nil, fmt.Errorf("tang recover: server key: %w", err)
	}
	defer secret.Bytes(z).Wipe()
	k, err := crv.sub(y, z)
	if err != nil {
		return nil, fmt.Errorf("tang recover: server reply: %w", err)
	}
	return xOf(crv, k), nil
}

// xOf returns the x coordinate of the uncompressed point p as a secret,
// and wipes p.
func xOf(crv *curve, p []byte) secret.Bytes {
	x := secret.Bytes(p[1 : 1+crv.size]).Clone()
	clear(p)
	return x
}
