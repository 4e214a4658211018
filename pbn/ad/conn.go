package ad

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
	"unsafe"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/pbn-project/pbn/pbn/secret"
)

// session is one TLS connection to one DC. It counts the LDAP round trips
// (requests that wait for a response) it makes.
type session struct {
	dc    dcURL
	conn  *ldap.Conn
	trips int
	stop  func() bool // unregisters the context's deadline hook
}

// connect dials dc, secures the connection (LDAPS, or StartTLS first) with
// the pinned CA, and returns a session whose every read and write ends when
// ctx does.
func (c *Client) connect(ctx context.Context, dc dcURL) (*session, error) {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.Connect)
	defer cancel()
	d := net.Dialer{Resolver: c.cfg.Resolver}
	raw, err := d.DialContext(cctx, "tcp", dc.addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := cctx.Deadline()
	raw.SetDeadline(deadline)

	s := &session{dc: dc}
	if dc.startTLS {
		if err := s.startTLS(raw); err != nil {
			raw.Close()
			return nil, fmt.Errorf("%w: %w", errTLS, err)
		}
	}
	tc := tls.Client(raw, &tls.Config{
		RootCAs:    c.roots,
		ServerName: dc.host,
		MinVersion: tls.VersionTLS12,
		Time:       c.cfg.Now,
	})
	if err := tc.HandshakeContext(cctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("%w: %w", errTLS, err)
	}

	// From here ctx alone bounds the session: its deadline, or its end.
	deadline, _ = ctx.Deadline()
	raw.SetDeadline(deadline)
	s.stop = context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	if err := ctx.Err(); err != nil {
		s.stop()
		raw.Close()
		return nil, err
	}
	s.conn = ldap.NewConn(tc, true)
	s.conn.Start()
	return s, nil
}

// oidStartTLS names the StartTLS extended operation (RFC 4511 section 4.14.1).
const oidStartTLS = "1.3.6.1.4.1.1466.20037"

// startTLS sends the StartTLS extended request on the bare connection and
// reads its response, so that the TLS handshake that follows is ours and a
// certificate error keeps its type (go-ldap's StartTLS flattens it).
func (s *session) startTLS(raw net.Conn) error {
	msg := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAPMessage")
	msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 1, "messageID"))
	req := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationExtendedRequest, nil, "ExtendedRequest")
	req.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oidStartTLS, "requestName"))
	msg.AppendChild(req)
	s.trips++
	if _, err := raw.Write(msg.Bytes()); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	resp, err := ber.ReadPacket(raw)
	if err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	if err := ldap.GetLDAPError(resp); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	return nil
}

func (s *session) close() {
	if s.stop != nil {
		s.stop()
	}
	s.conn.Close()
}

// bind makes a simple bind (RFC 4513 section 5.1.3) over the session's TLS.
func (s *session) bind(name string, pw secret.Bytes) error {
	if len(pw) == 0 {
		return errors.New("empty password") // an anonymous bind; never sent
	}
	s.trips++
	_, err := s.conn.SimpleBind(ldap.NewSimpleBindRequest(name, view(pw), nil))
	return answered(err)
}

func (s *session) search(req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	s.trips++
	res, err := s.conn.Search(req)
	return res, answered(err)
}

func (s *session) modify(req *ldap.ModifyRequest) error {
	s.trips++
	return answered(s.conn.Modify(req))
}

// view returns b as a string without copying it, for go-ldap's string
// parameters. The string shares b's memory: it must not outlive the call it
// is passed to, and b's Wipe clears it too.
//
// TODO: go-ldap still copies the value into its BER packet, which only the
// garbage collector frees; wiping that copy needs our own encoder of the bind
// and modify requests.
func view(b secret.Bytes) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// retryable reports whether err means the DC did not answer (network,
// timeout, TLS), so that the next DC may; an LDAP result is an answer.
func retryable(err error) bool {
	var ne net.Error
	return errors.Is(err, errTLS) || errors.Is(err, errNoAnswer) || errors.As(err, &ne) ||
		errors.Is(err, context.DeadlineExceeded)
}

var (
	// errTLS marks a failed StartTLS or TLS handshake.
	errTLS = errors.New("tls")
	// errNoAnswer marks a request that got no LDAP result.
	errNoAnswer = errors.New("no answer")
)

// answered marks an error of a request that got no LDAP result: go-ldap
// reports a lost or timed-out connection as ErrorNetwork or as a plain error.
func answered(err error) error {
	var le *ldap.Error
	if err == nil || errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork {
		return err
	}
	return fmt.Errorf("%w: %w", errNoAnswer, err)
}

// withDC runs f on a session with each DC in turn, each bounded by the DC
// timeout, until f succeeds or fails with an answer (not retryable). It
// returns the DC that answered and the round trips made with it.
func (c *Client) withDC(ctx context.Context, account string, f func(*session) error) (string, int, error) {
	dcs, err := c.dcs(ctx)
	if err != nil {
		return "", 0, &Error{Reason: Unreachable, Account: account, Err: err}
	}
	var causes []DCError
	for _, dc := range dcs {
		trips, err := c.tryDC(ctx, dc, f)
		if err == nil || !retryable(err) {
			return dc.raw, trips, err
		}
		if ctx.Err() != nil {
			return "", 0, &Error{Reason: Unreachable, Account: account, Err: ctx.Err(), Causes: causes}
		}
		c.cfg.Logger.Warn("domain controller failed", "dc", dc.raw, "err", err)
		causes = append(causes, DCError{URL: dc.raw, Err: err})
	}
	e := &Error{Reason: Unreachable, Account: account, Causes: causes}
	for _, ce := range causes {
		if isPinMismatch(ce.Err) {
			e.Reason = PinMismatch
		}
	}
	if len(dcs) == 0 {
		e.Err = errors.New("no domain controller configured or found")
	}
	return "", 0, e
}

func (c *Client) tryDC(ctx context.Context, dc dcURL, f func(*session) error) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeouts.DC)
	defer cancel()
	s, err := c.connect(ctx, dc)
	if err != nil {
		return 0, err
	}
	defer s.close()
	err = f(s)
	return s.trips, err
}
