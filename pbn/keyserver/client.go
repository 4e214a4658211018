package keyserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
)

// DefaultClientTimeout bounds one request of a Client, its connection and
// TLS handshake included, when the context has no earlier deadline.
const DefaultClientTimeout = 15 * time.Second

// Client talks to a key server's TLS API, as a device or as an
// administrator, depending on whose key it holds.
type Client struct {
	base *url.URL
	hc   *http.Client
}

// NewClient returns a client of the server at serverURL (https://) whose
// TLS key must be pin (a DER SubjectPublicKeyInfo, keyfile.Server.PublicKey).
// The client proves itself with key: a device's signing key (on a device,
// the TPM helper's (*tpm.TPM).DeviceKey) or an administrator's.
func NewClient(serverURL string, pin []byte, key crypto.Signer) (*Client, error) {
	return newClient(serverURL, pin, key, nil, nil)
}

// DialFunc makes a client's connections; net.Dialer's DialContext is one.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// NewClientVia is NewClient with the client's connections made by dial:
// for a server that this process's own network cannot reach, such as one
// inside a network namespace of the QEMU lab.
func NewClientVia(serverURL string, pin []byte, key crypto.Signer, dial DialFunc) (*Client, error) {
	return newClient(serverURL, pin, key, nil, dial)
}

// newClient is NewClient with the TLS key exchanges to offer (nil offers
// crypto/tls's defaults, post-quantum hybrids first) and the dialer (nil:
// a net.Dialer).
func newClient(serverURL string, pin []byte, key crypto.Signer, curves []tls.CurveID, dial DialFunc) (*Client, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("keyserver: server URL %q: want https://host[:port]", serverURL)
	}
	if len(pin) == 0 {
		return nil, errors.New("keyserver: no pinned server key")
	}
	cert, err := selfSigned(key, "pbn client")
	if err != nil {
		return nil, err
	}
	pin = bytes.Clone(pin)
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: curves,
		// Neither the chain, nor the name, nor the validity period is
		// checked: the pinned key replaces them, because the pre-boot
		// clock cannot be trusted. crypto/tls still verifies the
		// handshake's signature with the certificate's key, so
		// VerifyConnection passes only a server holding the pinned key.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 ||
				!bytes.Equal(cs.PeerCertificates[0].RawSubjectPublicKeyInfo, pin) {
				return ErrServerNotPinned
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		},
	}
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		DialContext:         dial,
		TLSHandshakeTimeout: DefaultClientTimeout,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 4,
	}
	return &Client{base: u, hc: &http.Client{Transport: tr, Timeout: DefaultClientTimeout}}, nil
}

// CloseIdleConnections closes the connections kept alive for later
// requests.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// send makes a request for target (a path, optionally with a query) and
// returns the answer when its status is 200; otherwise the server's
// refusal as an *Error.
func (c *Client) send(ctx context.Context, method, target string, req any) (*http.Response, error) {
	path, query, _ := strings.Cut(target, "?")
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("keyserver: %s: %w", path, err)
		}
		defer clear(b)
		body = bytes.NewReader(b)
	}
	u := c.base.JoinPath(path)
	u.RawQuery = query
	hr, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("keyserver: %s: %w", path, err)
	}
	if req != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(hr)
	if errors.Is(err, ErrServerNotPinned) {
		return nil, fmt.Errorf("keyserver: %s: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("keyserver: %s: %w: %w", path, ErrUnreachable, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	var m errorV1
	if err == nil {
		err = decodeV1(b, &m)
	}
	if err != nil {
		return nil, fmt.Errorf("keyserver: %s: status %s: %w", path, resp.Status, err)
	}
	return nil, fmt.Errorf("keyserver: %s: %w", path, &Error{resp.StatusCode, m.Code, m.Message})
}

// call sends req and parses the answer into ans.
func (c *Client) call(ctx context.Context, method, path string, req any, ans versioned) error {
	resp, err := c.send(ctx, method, path, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err == nil {
		err = decodeV1(b, ans)
	}
	clear(b)
	if err != nil {
		return fmt.Errorf("keyserver: %s: answer: %w", path, err)
	}
	return nil
}

// Unlock runs one McCallum-Relyea exchange over the TLS API for the
// provisioning key file binding: x is the client's blinded point for
// exchange key kid, and the server's point comes back. It returns errors
// matching ErrDeviceLost, ErrDeviceRetired or ErrBindingRevoked when the
// server refuses the device, ErrNotAllowed when the device's group does
// not allow autoboot (Transport's unlocks under WithSignIn may pass), and
// tang.ErrUnknownKey for a retired exchange key. Transport wraps it for
// the network factor.
func (c *Client) Unlock(ctx context.Context, binding keyfile.ID, kid string, x []byte) ([]byte, error) {
	return c.unlock(ctx, &unlockV1{v1: v1{wireV1}, Binding: hexID(binding), KID: kid, X: x})
}

func (c *Client) unlock(ctx context.Context, m *unlockV1) ([]byte, error) {
	var ans unlockedV1
	err := c.call(ctx, http.MethodPost, "/v1/unlock", m, &ans)
	return ans.Y, err
}

// ExchangeKey returns the server's advertised exchange key on curve, for
// a new binding. The pinned TLS connection vouches for it.
func (c *Client) ExchangeKey(ctx context.Context, curve string) (tang.ExchangeKey, error) {
	var ans exchangeKeyV1
	err := c.call(ctx, http.MethodGet, "/v1/exchange-key?curve="+url.QueryEscape(curve), nil, &ans)
	if err != nil {
		return tang.ExchangeKey{}, err
	}
	k, err := tang.ParseExchangeKey(ans.Key)
	if err != nil {
		return k, fmt.Errorf("keyserver: exchange key: %w", err)
	}
	if k.Curve != curve {
		return k, fmt.Errorf("keyserver: exchange key on %s, want %s", k.Curve, curve)
	}
	return k, nil
}

// ClaimRequest is the secure-moment claim of a device by a user.
type ClaimRequest struct {
	// Binding is the device's provisioning key file, zero if it has none.
	Binding keyfile.ID
	// Account and Password are what the user typed.
	Account  string
	Password secret.Bytes
	// KeyFile is the ID of the user's new key file and RecoveryKey its
	// recovery key, which the server keeps in escrow.
	KeyFile     keyfile.ID
	RecoveryKey secret.Bytes
}

// Claim is the server's answer to a claim: the user as the directory
// knows them, and the keys of their key file.
type Claim struct {
	UPN, SID string
	// Primary tells whether the user is the device's first user.
	Primary bool
	// Kind is the kind of the user's key file: keyfile.KindUser, or
	// KindAdministrator for an administrator account of the policy, whom
	// the claim does not make an owner.
	Kind       keyfile.Kind
	Groups     []keyfile.GroupKey
	Enterprise secret.Bytes
	Policy     store.Policy
}

// Wipe wipes the claim's keys.
func (c *Claim) Wipe() {
	c.Enterprise.Wipe()
	for _, g := range c.Groups {
		g.Key.Wipe()
	}
}

// Claim presents the user's credentials to the server, which checks them
// with the directory and the policy. It returns errors matching
// ErrLoginRefused, ErrNotAllowed, ErrTooManyUsers, ErrBindingRevoked,
// ErrDeviceLost or ErrDeviceRetired for the server's refusals.
func (c *Client) Claim(ctx context.Context, req ClaimRequest) (*Claim, error) {
	var ans claimedV1
	err := c.call(ctx, http.MethodPost, "/v1/claim", &claimV1{v1: v1{wireV1},
		Binding: hexID(req.Binding), Account: req.Account, Password: req.Password,
		KeyFile: hexID(req.KeyFile), RecoveryKey: req.RecoveryKey}, &ans)
	if err != nil {
		return nil, err
	}
	return claim(&ans)
}

// claim is the answer of a claim, or the owner of an enrolment, as the
// client returns it; the keys are ans's.
func claim(ans *claimedV1) (*Claim, error) {
	kind := keyfile.KindUser
	if ans.Kind != "" {
		var err error
		if kind, err = keyfile.ParseKind(ans.Kind); err != nil {
			wipeClaimed(ans)
			return nil, fmt.Errorf("keyserver: claim: %w", err)
		}
	}
	cl := &Claim{UPN: ans.UPN, SID: ans.SID, Primary: ans.Primary, Kind: kind,
		Enterprise: ans.Enterprise, Policy: ans.Policy}
	for _, g := range ans.Groups {
		cl.Groups = append(cl.Groups, keyfile.GroupKey{SID: g.SID, Name: g.Name, Key: g.Key})
	}
	return cl, nil
}

// Revoke revokes the device's binding of a provisioning key file, after
// the owner's key file is stored. It returns an error matching ErrNotFound
// for a binding that is not the device's.
func (c *Client) Revoke(ctx context.Context, binding keyfile.ID) error {
	return c.call(ctx, http.MethodPost, "/v1/revoke",
		&bindingV1{v1{wireV1}, hexID(binding)}, &okV1{})
}

// Provisioning is what a provisioning key file needs from enrollment.
type Provisioning struct {
	// Server is the server to bind the key file to: its URL and pinned key.
	Server keyfile.Server
	// ExchangeKey is the server's PBN-mode exchange key; zero when the
	// server has no exchange.
	ExchangeKey tang.ExchangeKey
	// Policy is the policy of the device's group.
	Policy store.Policy
	// Owner is the owner EnrollOwned named, with the keys of their key
	// file; nil from Enroll.
	Owner *Claim
}

// Enroll enrolls device d (its ID, hostname, group and keys) with
// the provisioning key file binding. An administrator's client only.
func (c *Client) Enroll(ctx context.Context, d store.Device, binding keyfile.ID) (*Provisioning, error) {
	var ans provisioningV1
	err := c.call(ctx, http.MethodPost, "/v1/enroll", &enrollV1{v1: v1{wireV1},
		Device: hexID(d.ID), Hostname: d.Hostname, Group: d.Group, EK: d.EK, SRK: d.SRK,
		DeviceKey: d.Key, Binding: hexID(binding)}, &ans)
	if err != nil {
		return nil, err
	}
	return provisioning(&ans)
}

// provisioning is the answer of an enrolment as the client returns it.
func provisioning(ans *provisioningV1) (*Provisioning, error) {
	p := &Provisioning{Server: keyfile.Server{URL: ans.URL, PublicKey: ans.ServerKey},
		Policy: ans.Policy}
	if len(ans.ExchangeKey) > 0 {
		var err error
		if p.ExchangeKey, err = tang.ParseExchangeKey(ans.ExchangeKey); err != nil {
			return nil, fmt.Errorf("keyserver: enroll: exchange key: %w", err)
		}
	}
	return p, nil
}

// DeviceInfo is a device as an administrator sees it.
type DeviceInfo struct {
	ID              keyfile.ID
	Hostname, Group string
	State           store.DeviceState
	Enrolled        time.Time
	Changed         time.Time
	// Owners are the device's users; Devices leaves them out.
	Owners []store.Owner
}

func deviceInfo(d deviceV1) DeviceInfo {
	di := DeviceInfo{ID: keyfile.ID(d.ID), Hostname: d.Hostname, Group: d.Group,
		State: store.DeviceState(d.State), Enrolled: d.Enrolled, Changed: d.Changed}
	for _, o := range d.Owners {
		di.Owners = append(di.Owners, store.Owner{DeviceID: di.ID, UPN: o.UPN, SID: o.SID,
			Primary: o.Primary, Added: o.Added})
	}
	return di
}

// Devices lists every device. An administrator's client only.
func (c *Client) Devices(ctx context.Context) ([]DeviceInfo, error) {
	var ans devicesV1
	if err := c.call(ctx, http.MethodGet, "/v1/admin/devices", nil, &ans); err != nil {
		return nil, err
	}
	var ds []DeviceInfo
	for _, d := range ans.Devices {
		ds = append(ds, deviceInfo(d))
	}
	return ds, nil
}

// Device returns one device with its owners, or an error matching
// ErrNotFound. An administrator's client only.
func (c *Client) Device(ctx context.Context, id keyfile.ID) (*DeviceInfo, error) {
	var ans devicesV1
	if err := c.call(ctx, http.MethodGet, "/v1/admin/devices/"+id.String(), nil, &ans); err != nil {
		return nil, err
	}
	if len(ans.Devices) != 1 {
		return nil, fmt.Errorf("keyserver: device %s: %d devices in the answer", id, len(ans.Devices))
	}
	d := deviceInfo(ans.Devices[0])
	return &d, nil
}

// SetDeviceState marks a device active, lost or retired, with the reason
// recorded in the audit trail. An administrator's client only.
func (c *Client) SetDeviceState(ctx context.Context, id keyfile.ID, st store.DeviceState, reason string) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/devices/"+id.String()+"/state",
		&deviceStateV1{v1{wireV1}, string(st), reason}, &okV1{})
}

// RevokeBinding revokes any device's binding. An administrator's client
// only.
func (c *Client) RevokeBinding(ctx context.Context, binding keyfile.ID) error {
	return c.call(ctx, http.MethodPost, "/v1/admin/revoke",
		&bindingV1{v1{wireV1}, hexID(binding)}, &okV1{})
}

// Recovery returns a device's escrowed recovery keys, newest first; the
// server records the reading with reason first. The caller wipes the keys.
// An administrator's client only.
func (c *Client) Recovery(ctx context.Context, id keyfile.ID, reason string) ([]store.Escrow, error) {
	var ans recoveryV1
	err := c.call(ctx, http.MethodPost, "/v1/admin/recovery",
		&recoveryRequestV1{v1{wireV1}, hexID(id), reason}, &ans)
	if err != nil {
		return nil, err
	}
	var es []store.Escrow
	for _, k := range ans.Keys {
		es = append(es, store.Escrow{DeviceID: id, KeyFileID: keyfile.ID(k.KeyFile), UPN: k.UPN,
			Key: k.Key, Created: k.Created})
	}
	return es, nil
}

// AuditQuery selects events of the audit trail: the last Tail ones when
// Tail is set, else those after After, at most Limit of them (all when
// Limit is zero).
type AuditQuery struct {
	After, Limit, Tail int64
}

// Audit reads the audit trail and calls fn with each event in order,
// stopping at fn's first error. An administrator's client only.
func (c *Client) Audit(ctx context.Context, q AuditQuery, fn func(store.Event) error) error {
	v := url.Values{}
	if q.Tail > 0 {
		v.Set("tail", fmt.Sprint(q.Tail))
	} else {
		v.Set("after", fmt.Sprint(q.After))
		if q.Limit > 0 {
			v.Set("limit", fmt.Sprint(q.Limit))
		}
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/admin/audit?"+v.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4096), maxBody)
	for sc.Scan() {
		var m eventV1
		if err := decodeV1(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("keyserver: audit: %w", err)
		}
		if err := fn(m.Event); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("keyserver: audit: %w", err)
	}
	return nil
}

// Policy returns a device group's policy. An administrator's client only.
func (c *Client) Policy(ctx context.Context, group string) (store.Policy, error) {
	var ans policyV1
	err := c.call(ctx, http.MethodGet, "/v1/admin/policy/"+url.PathEscape(group), nil, &ans)
	return ans.Policy, err
}

// SetPolicy sets the policy of p.Group. An administrator's client only.
func (c *Client) SetPolicy(ctx context.Context, p store.Policy) error {
	return c.call(ctx, http.MethodPut, "/v1/admin/policy/"+url.PathEscape(p.Group),
		&policyV1{v1{wireV1}, p}, &okV1{})
}

// Healthy reports whether the server and its database answer.
func (c *Client) Healthy(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/healthz", nil, &okV1{})
}
