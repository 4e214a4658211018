package keyserver

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/tang"
)

// Transport carries the network factor's messages over the TLS API: PBN
// mode. The server is the key file's, pinned by its Server.PublicKey (the
// server's TLS key), the device proves itself with Key, and the binding is
// the key file's ID. It implements tang.Transport:
//
//	tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: k}}
//
// Besides the key server's refusals (ErrDeviceLost, ErrDeviceRetired,
// ErrBindingRevoked), its errors match tang.ErrUntrusted when the server
// is not the pinned one and tang.ErrUnreachable when it cannot be reached
// or is unavailable.
type Transport struct {
	// Key is the device's signing key: on a device, the TPM helper's
	// (*tpm.TPM).DeviceKey.
	Key crypto.Signer
	// Dial makes the connections; nil means a net.Dialer. The lab's
	// host-side enrolment reaches the server in the lab's namespace so.
	Dial DialFunc

	mu      sync.Mutex
	clients map[string]*Client
}

// unlockCurves are the TLS key exchanges of unlocks: ECDHE on P-256 alone
// (RFC 8446 section 4.2.7), without the post-quantum hybrid that
// crypto/tls offers first. What an unlock carries needs no confidentiality
// (plain Tang sends the same points in the clear; they are blinded), only
// the authentication of both sides, so the hybrid's cost buys nothing
// here. P-256 rather than X25519 because Go's P-256 is the cheaper of the
// two on both sides of a handshake (its key generation uses a precomputed
// table; about 100 µs against 150 µs for key generation and agreement
// together on the 2-core test machine), and the key server does one
// handshake per unlock. Claims, which carry passwords and keys, keep the
// defaults.
var unlockCurves = []tls.CurveID{tls.CurveP256}

// client returns the client of srv, made on first use.
func (t *Transport) client(srv keyfile.Server) (*Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := srv.URL + "\x00" + string(srv.PublicKey)
	if c, ok := t.clients[id]; ok {
		return c, nil
	}
	c, err := newClient(srv.URL, srv.PublicKey, t.Key, unlockCurves, t.Dial)
	if err != nil {
		return nil, err
	}
	if t.clients == nil {
		t.clients = map[string]*Client{}
	}
	t.clients[id] = c
	return c, nil
}

// ExchangeKey returns srv's exchange key on curve, fetched over the pinned
// connection.
func (t *Transport) ExchangeKey(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
	curve string) (tang.ExchangeKey, error) {
	c, err := t.client(srv)
	if err != nil {
		return tang.ExchangeKey{}, err
	}
	k, err := c.ExchangeKey(ctx, curve)
	return k, transportError(err)
}

// Exchange runs one unlock for the key file whose header is h, with the
// user at the prompt when ctx carries one (WithSignIn).
func (t *Transport) Exchange(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
	kid string, x []byte) ([]byte, error) {
	c, err := t.client(srv)
	if err != nil {
		return nil, err
	}
	account, password := signInOf(ctx)
	y, err := c.unlock(ctx, &unlockV1{v1: v1{wireV1}, Binding: hexID(h.ID), KID: kid, X: x,
		Account: account, Password: password})
	return y, transportError(err)
}

// transportError adds tang's sentinels to the client's errors.
func transportError(err error) error {
	switch {
	case errors.Is(err, ErrServerNotPinned):
		return fmt.Errorf("%w: %w", tang.ErrUntrusted, err)
	case errors.Is(err, ErrUnreachable), errors.Is(err, ErrUnavailable):
		return fmt.Errorf("%w: %w", tang.ErrUnreachable, err)
	}
	return err
}
