package tang

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pbn-project/pbn/keyfile"
)

// DefaultTimeout bounds each request of a Client whose Timeout is zero.
const DefaultTimeout = 10 * time.Second

// maxReply bounds the body of a /rec reply.
const maxReply = 4 << 10

// ErrUnreachable is returned by the Client's methods when the server
// cannot be reached or does not answer in time; the cause (a context
// error, a dial error) is wrapped too.
var ErrUnreachable = errors.New("tang: key server unreachable")

// ErrUntrusted is returned by Client.Advertisement and Client.ExchangeKey
// when the advertisement is not signed by the pinned key, or is not signed
// by every key it advertises.
var ErrUntrusted = errors.New("tang: advertisement not signed by the pinned key")

// Client speaks Tang's protocol to a server over plain HTTP. Its zero
// value is ready to use. It implements Transport.
type Client struct {
	// HTTP sends the requests; nil means a client that uses no proxy and
	// follows no redirect: the server's address comes from the key file
	// alone.
	HTTP *http.Client
	// Timeout bounds each request when the context has no earlier
	// deadline; zero means DefaultTimeout.
	Timeout time.Duration
}

var defaultHTTP = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Advertisement fetches the server's advertisement from baseURL/adv/{thp}
// where thp is the thumbprint of pin, verifies it (every signing key it
// lists has signed it, and so has pin) and returns its exchange keys. pin
// is the DER SubjectPublicKeyInfo of an ES512 key on P-521. It returns
// ErrUntrusted for a bad signature and ErrUnreachable when the server does
// not answer.
func (c *Client) Advertisement(ctx context.Context, baseURL string, pin []byte) ([]ExchangeKey, error) {
	pub, err := parsePin(pin)
	if err != nil {
		return nil, err
	}
	b, err := c.do(ctx, http.MethodGet, baseURL, "adv/"+pinThumbprint(pub), nil, maxAdvertisement)
	if errors.Is(err, ErrUnknownKey) {
		return nil, fmt.Errorf("%w: %s does not know the pinned key", ErrUntrusted, baseURL)
	}
	if err != nil {
		return nil, err
	}
	keys, err := verifyAdvertisement(b, pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUntrusted, baseURL, err)
	}
	var exc []ExchangeKey
	for _, k := range keys {
		if k.alg == algExchange {
			exc = append(exc, exchangeKey(k))
		}
	}
	return exc, nil
}

// ExchangeKey fetches srv's advertisement, checked against srv.PublicKey
// (Advertisement), and returns its first exchange key on curve. h is not
// used: plain Tang does not know devices.
func (c *Client) ExchangeKey(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
	curve string) (ExchangeKey, error) {
	keys, err := c.Advertisement(ctx, srv.URL, srv.PublicKey)
	if err != nil {
		return ExchangeKey{}, err
	}
	for _, k := range keys {
		if k.Curve == curve {
			return k, nil
		}
	}
	return ExchangeKey{}, fmt.Errorf("tang: %s advertises no exchange key on %s", srv.URL, curve)
}

// Exchange posts x, an uncompressed point, to srv.URL/rec/{kid} and
// returns the server's answer, checked to be a point on the same curve. It
// returns ErrUnknownKey when the server does not know kid, and
// ErrUnreachable when it does not answer. h is not used.
func (c *Client) Exchange(ctx context.Context, h *keyfile.Header, srv keyfile.Server,
	kid string, x []byte) ([]byte, error) {
	crv, err := curveOfPoint(x)
	if err != nil {
		return nil, err
	}
	body := publicJWK(crv, x, algExchange).marshal()
	b, err := c.do(ctx, http.MethodPost, srv.URL, "rec/"+url.PathEscape(kid), body, maxReply)
	if err != nil {
		return nil, err
	}
	y, err := parsePointJWK(b, crv)
	if err != nil {
		return nil, fmt.Errorf("tang: %s: bad reply: %w", srv.URL, err)
	}
	return y, nil
}

// curveOfPoint tells a P-256 from a P-521 point by its length.
func curveOfPoint(p []byte) (*curve, error) {
	for _, c := range []*curve{p256, p521} {
		if len(p) == 1+2*c.size && p[0] == 4 {
			return c, nil
		}
	}
	return nil, ErrInvalidPoint
}

// do sends one request to baseURL/path and returns the body of a 200
// reply, at most limit bytes.
func (c *Client) do(ctx context.Context, method, baseURL, path string, body []byte,
	limit int64) ([]byte, error) {
	u, err := endpoint(baseURL, path)
	if err != nil {
		return nil, err
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("tang: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/jwk+json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %s %s: %w", ErrUnreachable, method, u, err)
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%w: %s %s", ErrUnknownKey, method, u)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("tang: %s %s: %s", method, u, resp.Status)
	case int64(len(b)) > limit:
		return nil, fmt.Errorf("tang: %s %s: reply larger than %d bytes", method, u, limit)
	}
	return b, nil
}

// endpoint joins a server's base URL, http or https, and a path.
func endpoint(baseURL, path string) (string, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("tang: invalid server URL %q", baseURL)
	}
	return strings.TrimSuffix(u.String(), "/") + "/" + path, nil
}

// parsePin parses a pinned signing key: the DER SubjectPublicKeyInfo of an
// ECDSA key on P-521.
func parsePin(pin []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(pin)
	if err != nil {
		return nil, fmt.Errorf("tang: pinned key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P521() {
		return nil, errors.New("tang: pinned key is not an ECDSA P-521 key")
	}
	return pub, nil
}

// pinThumbprint returns the SHA-256 JWK thumbprint of a pinned key.
func pinThumbprint(pub *ecdsa.PublicKey) string {
	b, err := pub.Bytes()
	if err != nil {
		panic(err) // parsePin only returns valid keys
	}
	return publicJWK(p521, b, algSign).thumbprint(crypto.SHA256)
}

// PinThumbprint returns the SHA-256 JWK thumbprint (RFC 7638) of a pinned
// signing key, as clevis's "thp" and tangd's key file names give it.
func PinThumbprint(pin []byte) (string, error) {
	pub, err := parsePin(pin)
	if err != nil {
		return "", err
	}
	return pinThumbprint(pub), nil
}

// PinJWK returns the pin of a signing key given as a JWK, public or
// private (as tangd keeps it): its DER SubjectPublicKeyInfo, as
// keyfile.Server.PublicKey holds it.
func PinJWK(b []byte) ([]byte, error) {
	k, err := parseJWK(b)
	if err != nil {
		return nil, err
	}
	k.d.Wipe()
	if err := checkUse(k, false); err != nil || k.alg != algSign {
		return nil, errors.New("tang: pin: not an ES512 signing key")
	}
	return x509.MarshalPKIXPublicKey(k.ecdsaPublic())
}
