package keyserver

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/pbn/store"
)

// post sends body to the server as c's caller and returns the status and
// the refusal's code.
func post(t *testing.T, c *Client, ts *testServer, path string, body []byte) (int, string) {
	t.Helper()
	resp, err := c.hc.Post(ts.url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m errorV1
	json.Unmarshal(b, &m)
	return resp.StatusCode, m.Code
}

// TestBadInput sends malformed, wrongly versioned and oversized requests:
// each is answered with a clear refusal and the server keeps serving. It
// does not prove that every malformed input is caught: FuzzDecode covers
// the parser.
func TestBadInput(t *testing.T) {
	ts := startServer(t, nil, nil)
	d := ts.enroll(t, "laptop-1", "laptops")
	good := `"binding":"` + d.binding.String() + `"`

	tests := []struct {
		name       string
		body       string
		status     int
		code       string
		headerSize int
	}{
		{"not JSON", `{`, 400, "bad-request", 0},
		{"empty", ``, 400, "bad-request", 0},
		{"unknown field", `{"v":1,` + good + `,"extra":1}`, 400, "bad-request", 0},
		{"data after the object", `{"v":1,` + good + `}{}`, 400, "bad-request", 0},
		{"version 2", `{"v":2,` + good + `}`, 400, "bad-request", 0},
		{"no version", `{` + good + `}`, 400, "bad-request", 0},
		{"bad ID", `{"v":1,"binding":"xyz"}`, 400, "bad-request", 0},
		{"zero ID", `{"v":1,"binding":"00000000000000000000000000000000"}`, 400, "bad-request", 0},
		{"array", `[1,2]`, 400, "bad-request", 0},
		{"oversized", `{"v":1,"binding":"` + strings.Repeat("a", maxBody) + `"}`, 413, "too-large", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code := post(t, d.c, ts, "/v1/revoke", []byte(tt.body))
			if status != tt.status || code != tt.code {
				t.Errorf("POST /v1/revoke %.40q = %d %s, want %d %s", tt.body, status, code, tt.status, tt.code)
			}
		})
	}

	req, _ := http.NewRequest("GET", ts.url+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 2*maxHeaderBytes))
	resp, err := d.c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET /healthz with a %d-byte header = %d, want 431", 2*maxHeaderBytes, resp.StatusCode)
	}

	if b, err := ts.store.Binding(t.Context(), d.binding); err != nil || b.State != store.BindingActive {
		t.Errorf("binding after bad requests: %+v, %v, want active", b, err)
	}
	if err := d.c.Healthy(t.Context()); err != nil {
		t.Errorf("Healthy after bad requests = %v", err)
	}
}

// TestSlowClients checks that clients that stall in the TCP connection,
// the TLS handshake, the headers or the body are cut off after the
// server's timeouts. It does not prove the server survives a flood of
// them: connections are not limited in number.
func TestSlowClients(t *testing.T) {
	const limit = 300 * time.Millisecond
	ts := startServer(t, nil, nil, func(c *Config) {
		c.ReadHeaderTimeout, c.ReadTimeout = limit, 2*limit
	})
	addr := strings.TrimPrefix(ts.url, "https://")
	d := ts.enroll(t, "laptop-1", "laptops")
	cfg := d.c.hc.Transport.(*http.Transport).TLSClientConfig

	tests := []struct {
		name string
		send func(t *testing.T) net.Conn
	}{
		{"no TLS handshake", func(t *testing.T) net.Conn { return dial(t, addr) }},
		{"half a request line", func(t *testing.T) net.Conn {
			c := handshake(t, addr, cfg)
			io.WriteString(c, "POST /v1/rev")
			return c
		}},
		{"headers but half the body", func(t *testing.T) net.Conn {
			c := handshake(t, addr, cfg)
			io.WriteString(c, "POST /v1/revoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"v\":1")
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.send(t)
			defer c.Close()
			start := time.Now()
			c.SetReadDeadline(start.Add(10 * limit))
			_, err := io.ReadAll(c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the server kept a stalled connection open for %v", 10*limit)
			}
		})
	}
	if err := d.c.Healthy(t.Context()); err != nil {
		t.Errorf("Healthy after slow clients = %v", err)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func handshake(t *testing.T, addr string, cfg *tls.Config) net.Conn {
	t.Helper()
	c := tls.Client(dial(t, addr), cfg)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestGracefulShutdown starts a request, stops the server while the
// request's body is still on its way, and checks that the request is
// answered and applied before Serve returns.
func TestGracefulShutdown(t *testing.T) {
	ts := startServer(t, nil, nil)
	p := store.DefaultPolicy("kiosks")
	p.UsersPerDevice = 9
	body, _ := json.Marshal(&policyV1{v1{wireV1}, p})

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", ts.url+"/v1/admin/policy/kiosks", pr)
	answered := make(chan int, 1)
	go func() {
		resp, err := ts.admin.hc.Do(req)
		if err != nil {
			t.Errorf("request in flight: %v", err)
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	pw.Write(body[:10])
	waitInFlight(t, ts)

	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Serve returned %v with a request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	pw.Write(body[10:])
	pw.Close()

	if status := <-answered; status != http.StatusOK {
		t.Errorf("request in flight answered %d, want 200", status)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve = %v, want nil after a clean shutdown", err)
	}
	if got, _ := ts.store.Policy(t.Context(), "kiosks"); got.UsersPerDevice != 9 {
		t.Errorf("policy after shutdown: %d users per device, want 9", got.UsersPerDevice)
	}
}

// waitInFlight waits until the server counts a connection with a request
// being read: the TLS handshake and the headers are through.
func waitInFlight(t *testing.T, ts *testServer) {
	t.Helper()
	for range 100 {
		if ts.inFlight.Load() > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the request never reached the server")
}
