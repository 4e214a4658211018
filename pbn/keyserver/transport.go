package keyserver

import (
	"context"
	"crypto"
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
// is not the pinned one and tang.ErrUnreachable when it cannot be reached.
type Transport struct {
	// Key is the device's signing key: on a device, the TPM helper's
	// (*tpm.TPM).DeviceKey.
	Key crypto.Signer

	mu      sync.Mutex
	clients map[string]*Client
}

// client returns the client of srv, made on first use.
func (t *Transport) client(srv keyfile.Server) (*Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := srv.URL + "\x00" + string(srv.PublicKey)
	if c, ok := t.clients[id]; ok {
		return c, nil
	}
	c, err := NewClient(srv.URL, srv.PublicKey, t.Key)
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

// Exchange runs one unlock for the key file whose header is h.
func (t *Transport) Exchange(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
	kid string, x []byte) ([]byte, error) {
	c, err := t.client(srv)
	if err != nil {
		return nil, err
	}
	y, err := c.Unlock(ctx, h.ID, kid, x)
	return y, transportError(err)
}

// transportError adds tang's sentinels to the client's errors.
func transportError(err error) error {
	var refused *Error
	switch {
	case err == nil, errors.As(err, &refused):
		return err
	case errors.Is(err, ErrServerNotPinned):
		return fmt.Errorf("%w: %w", tang.ErrUntrusted, err)
	}
	return fmt.Errorf("%w: %w", tang.ErrUnreachable, err)
}
