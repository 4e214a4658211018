package tang

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Transport carries the network factor's two messages to a key server.
// *Client carries them over plain HTTP, as Tang does; PBN mode carries
// them over its TLS API with the device authenticated, and implements
// Transport in the key server's client package.
type Transport interface {
	// ExchangeKey returns srv's exchange key on curve for a new binding,
	// after checking that the server is the one srv.PublicKey pins. h is
	// the key file being bound.
	ExchangeKey(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
		curve string) (ExchangeKey, error)
	// Exchange sends x, an uncompressed point, to srv's exchange key kid
	// and returns the server's answer s·x.
	Exchange(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
		kid string, x []byte) ([]byte, error)
}

// secretSize is the length of the factor's secret.
const secretSize = 32

// hkdfInfo separates the factor's secret from any other use of K.
const hkdfInfo = "pbn network factor v1"

// Factor is the key file's network factor (keyfile.FactorNetwork): its
// secret is made with a key server's help, in one McCallum-Relyea exchange,
// and nobody without the server's exchange key can make it.
//
// The server comes from the key file, never from the network: Enroll
// binds to Factor.Server, or to the key file header's Server when that is
// zero, and checks the advertisement against its PublicKey, the DER
// SubjectPublicKeyInfo of the server's ES512 signing key. The parameters
// record the server's URL and pin with the binding, so Recover needs
// nothing but them, and a key file may hold bindings to several servers.
type Factor struct {
	// Server is the key server to bind to; zero means the header's.
	Server keyfile.Server
	// Curve is the curve of the exchange key to bind to; empty means
	// CurveP521, Tang's default. PBN mode uses CurveP256.
	Curve string
	// Transport carries the exchange; nil means plain Tang over HTTP with
	// a zero Client.
	Transport Transport
}

// Type returns keyfile.FactorNetwork.
func (f Factor) Type() keyfile.FactorType { return keyfile.FactorNetwork }

// Enroll fetches the server's exchange key, checked against the pin, and
// binds to it: the parameters hold the server's URL and pin, the exchange
// key and the client's public point; the secret is derived from the shared
// point. It returns ErrUntrusted or ErrUnreachable from the transport.
func (f Factor) Enroll(ctx context.Context, h *keyfile.Header) ([]byte, secret.Bytes, error) {
	srv := f.Server
	if srv.URL == "" {
		srv = h.Server
	}
	if srv.URL == "" || len(srv.PublicKey) == 0 {
		return nil, nil, errors.New("network factor: no key server (URL and pinned key) to bind to")
	}
	curve := f.Curve
	if curve == "" {
		curve = CurveP521
	}
	key, err := f.transport().ExchangeKey(ctx, h, srv, curve)
	if err != nil {
		return nil, nil, fmt.Errorf("network factor: %w", err)
	}
	clt, k, err := bind(key)
	if err != nil {
		return nil, nil, fmt.Errorf("network factor: %w", err)
	}
	defer k.Wipe()
	p := &params{server: srv, key: key, client: clt}
	b, err := p.marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("network factor: %w", err)
	}
	return b, derive(k), nil
}

// Recover makes the secret again in one exchange with the server that the
// parameters name. It returns ErrUnknownKey when the server no longer has
// the exchange key (it was retired), ErrUnreachable when the server does
// not answer, and an error for parameters that do not parse.
func (f Factor) Recover(ctx context.Context, h *keyfile.Header, b []byte) (secret.Bytes, error) {
	p, err := parseParams(b)
	if err != nil {
		return nil, fmt.Errorf("network factor: %w", err)
	}
	t := f.transport()
	k, err := recoverKey(ctx, p.key, p.client, func(ctx context.Context, x []byte) ([]byte, error) {
		return t.Exchange(ctx, h, p.server, p.key.ID, x)
	})
	if err != nil {
		return nil, fmt.Errorf("network factor: %w", err)
	}
	defer k.Wipe()
	return derive(k), nil
}

func (f Factor) transport() Transport {
	if f.Transport == nil {
		return &Client{}
	}
	return f.Transport
}

// derive makes the factor's secret from the shared point's x coordinate
// with HKDF-SHA256 (RFC 5869).
func derive(x secret.Bytes) secret.Bytes {
	k, err := hkdf.Key(sha256.New, x, nil, hkdfInfo, secretSize)
	if err != nil {
		panic(err) // only for a length over 255 hashes
	}
	return secret.Bytes(k)
}

// Sentence returns what to tell a person at the pre-boot prompt about an
// error of the network factor, in plain words.
func Sentence(err error) string {
	switch {
	case errors.Is(err, ErrUnreachable):
		return "The key server cannot be reached. Connect the computer to the company network and try again."
	case errors.Is(err, ErrUnknownKey):
		return "The key server no longer accepts this computer's key. Ask the help desk for the recovery key."
	case errors.Is(err, ErrUntrusted):
		return "The key server's identity could not be verified. Contact the help desk before you go on."
	}
	return "The computer could not be unlocked over the network. Ask the help desk for the recovery key."
}
