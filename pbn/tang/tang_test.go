package tang

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
)

// TestFactorRoundTrip binds to the package's own handler and recovers,
// on both curves.
func TestFactorRoundTrip(t *testing.T) {
	_, ks := newKeyDir(t)
	_, srv := serve(t, ks)
	h := header(srv.URL, ks.Pin())
	for _, curve := range []string{"", "P-521", "P-256"} {
		t.Run("curve="+curve, func(t *testing.T) {
			f := Factor{Curve: curve}
			params, want, err := f.Enroll(testContext(t), h)
			if err != nil {
				t.Fatalf("Enroll() = %v", err)
			}
			got, err := f.Recover(testContext(t), h, params)
			if err != nil {
				t.Fatalf("Recover() = %v", err)
			}
			if !got.Equal(want) || len(got) != secretSize {
				t.Errorf("Recover() made a different secret than Enroll()")
			}
			again, _, err := f.Enroll(testContext(t), h)
			if err != nil || bytes.Equal(again, params) {
				t.Errorf("Enroll() twice = the same parameters (%v), want fresh ones", err)
			}
		})
	}
}

// TestEnrollUntrusted: an advertisement that the pinned key did not sign
// is refused. It does not prove that every forgery is refused, only that
// another server's valid advertisement is.
func TestEnrollUntrusted(t *testing.T) {
	_, ks := newKeyDir(t)
	_, other := newKeyDir(t)
	_, srv := serve(t, ks)
	_, _, err := Factor{}.Enroll(testContext(t), header(srv.URL, other.Pin()))
	if !errors.Is(err, ErrUntrusted) {
		t.Errorf("Enroll(wrong pin) = %v, want ErrUntrusted", err)
	}
}

// TestEnrollUnreachable: a closed port is ErrUnreachable.
func TestEnrollUnreachable(t *testing.T) {
	_, ks := newKeyDir(t)
	_, _, err := Factor{}.Enroll(testContext(t), header("http://"+freePort(t), ks.Pin()))
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("Enroll(closed port) = %v, want ErrUnreachable", err)
	}
}

// TestRotation rotates the handler's keys: old bindings keep recovering
// through the hidden key, the old key is no longer advertised, a client
// pinned to the old signing key can still check the new advertisement,
// and retiring the old keys ends the old bindings.
func TestRotation(t *testing.T) {
	dir, ks := newKeyDir(t)
	handler, srv := serve(t, ks)
	h := header(srv.URL, ks.Pin())
	old, want, err := Factor{}.Enroll(testContext(t), h)
	if err != nil {
		t.Fatal(err)
	}
	oldKey, _ := ks.ExchangeKey("P-521")

	if err := RotateKeys(dir); err != nil {
		t.Fatal(err)
	}
	handler.SetKeys(mustLoad(t, dir))

	got, err := Factor{}.Recover(testContext(t), h, old)
	if err != nil || !got.Equal(want) {
		t.Fatalf("Recover(old binding) after rotation = %v, want the old secret", err)
	}
	keys, err := (&Client{}).Advertisement(testContext(t), srv.URL, ks.Pin())
	if err != nil {
		t.Fatalf("Advertisement(old pin) = %v", err)
	}
	for _, k := range keys {
		if k.ID == oldKey.ID {
			t.Errorf("Advertisement() lists the rotated-out key %s", k.ID)
		}
	}

	if _, err := RetireKeys(dir); err != nil {
		t.Fatal(err)
	}
	handler.SetKeys(mustLoad(t, dir))
	if _, err := (Factor{}).Recover(testContext(t), h, old); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Recover(old binding) after retirement = %v, want ErrUnknownKey", err)
	}
}

// TestLoadKeysEmpty: a directory without keys is ErrNoKeys.
func TestLoadKeysEmpty(t *testing.T) {
	if _, err := LoadKeys(t.TempDir()); !errors.Is(err, ErrNoKeys) {
		t.Errorf("LoadKeys(empty) = %v, want ErrNoKeys", err)
	}
}

// TestBadRequests sends what a broken or hostile client might: each is
// refused with its status and a fixed text. It does not prove that no
// other input crashes the handler; the fuzz targets look for that.
func TestBadRequests(t *testing.T) {
	_, ks := newKeyDir(t)
	_, srv := serve(t, ks)
	exc, _ := ks.ExchangeKey("P-521")
	exc256, _ := ks.ExchangeKey("P-256")
	valid := string(publicJWK(p521, exc.Point, algExchange).marshal())
	// An off-curve point: the server key's x with y+1.
	off := bytes.Clone(exc.Point)
	off[len(off)-1] ^= 1
	offCurve := strings.Replace(valid, b64.EncodeToString(exc.Point[1+66:]),
		b64.EncodeToString(off[1+66:]), 1)
	sigKid := thumbprintOfPin(t, ks.Pin())
	tests := []struct {
		name, method, path, ctype, body string
		want                            int
	}{
		{"valid", "POST", "/rec/" + exc.ID, "application/jwk+json", valid, 200},
		{"not on the curve", "POST", "/rec/" + exc.ID, "application/jwk+json", offCurve, 400},
		{"unknown kid", "POST", "/rec/AAAA", "application/jwk+json", valid, 404},
		{"kid of a signing key", "POST", "/rec/" + sigKid, "", valid, 404},
		{"other curve's key", "POST", "/rec/" + exc256.ID, "", valid, 400},
		{"malformed", "POST", "/rec/" + exc.ID, "", `{"kty":"EC",`, 400},
		{"unknown member", "POST", "/rec/" + exc.ID, "",
			strings.Replace(valid, `{`, `{"kid":"x",`, 1), 400},
		{"member twice", "POST", "/rec/" + exc.ID, "",
			strings.Replace(valid, `{`, `{"kty":"EC",`, 1), 400},
		{"private key", "POST", "/rec/" + exc.ID, "",
			strings.Replace(valid, `{`, `{"d":"AAAA",`, 1), 400},
		{"trailing data", "POST", "/rec/" + exc.ID, "", valid + "{}", 400},
		{"oversized", "POST", "/rec/" + exc.ID, "", strings.Repeat(" ", MaxRequestBody+1), 413},
		{"content type", "POST", "/rec/" + exc.ID, "text/plain", valid, 415},
		{"GET /rec", "GET", "/rec/" + exc.ID, "", "", 405},
		{"unknown adv kid", "GET", "/adv/" + exc.ID, "", "", 404},
		{"adv", "GET", "/adv", "", "", 200},
		{"adv/", "GET", "/adv/", "", "", 200},
		{"adv/sig", "GET", "/adv/" + sigKid, "", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s = %d %q, want %d", tt.method, tt.path, resp.StatusCode, body, tt.want)
			}
			if tt.want >= 400 && len(body) > 40 {
				t.Errorf("%s %s error body %q, want a short fixed text", tt.method, tt.path, body)
			}
		})
	}
}

// TestSlowClient: a client that sends its headers and then dribbles its
// body is answered and cut off once the body timeout passes, instead of
// holding the connection. It does not prove anything about many slow
// clients at once, only that each costs a bounded time.
func TestSlowClient(t *testing.T) {
	_, ks := newKeyDir(t)
	h, srv := serve(t, ks)
	h.BodyTimeout = 200 * time.Millisecond
	exc, _ := ks.ExchangeKey("P-521")

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /rec/"+exc.ID+" HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() {
		for range 40 { // one byte every 100ms, for 4s at most
			time.Sleep(100 * time.Millisecond)
			if _, err := c.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	// The server may reset the connection instead of closing it, since the
	// client is still sending: either ends the read before the deadline.
	reply, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("reading the reply to a slow body: %v, want the server to close within 5s", err)
	}
	if len(reply) > 0 && !bytes.HasPrefix(reply, []byte("HTTP/1.1 408")) {
		t.Errorf("reply to a slow body = %q, want 408", reply)
	}
}

// TestParamsStrict: the factor's parameters parse back, and changed or
// unknown forms are refused.
func TestParamsStrict(t *testing.T) {
	_, ks := newKeyDir(t)
	_, srv := serve(t, ks)
	b, _, err := Factor{}.Enroll(testContext(t), header(srv.URL, ks.Pin()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseParams(b); err != nil {
		t.Fatalf("parseParams(Enroll's) = %v", err)
	}
	tests := []struct{ name, params string }{
		{"version 2", strings.Replace(string(b), `"v":1`, `"v":2`, 1)},
		{"unknown member", strings.Replace(string(b), `{"v":1`, `{"v":1,"x":1`, 1)},
		{"white space", string(b) + " "},
		{"bad url", strings.Replace(string(b), srv.URL, "ftp://x", 1)},
		{"empty", ""},
	}
	for _, tt := range tests {
		if _, err := parseParams([]byte(tt.params)); err == nil {
			t.Errorf("parseParams(%s) = nil, want an error", tt.name)
		}
	}
}

// TestFactorType checks the factor's type.
func TestFactorType(t *testing.T) {
	var f keyfile.Factor = Factor{}
	if got := f.Type(); got != keyfile.FactorNetwork {
		t.Errorf("Type() = %v, want %v", got, keyfile.FactorNetwork)
	}
}

// TestSentence: each error a person at the prompt can act on has its own
// sentence, also when wrapped.
func TestSentence(t *testing.T) {
	seen := map[string]error{}
	for _, err := range []error{ErrUnreachable, ErrUnknownKey, ErrUntrusted, errors.New("other")} {
		got := Sentence(fmt.Errorf("network factor: %w", err))
		if prev, ok := seen[got]; ok {
			t.Errorf("Sentence(%v) = Sentence(%v) = %q, want distinct sentences", err, prev, got)
		}
		seen[got] = err
	}
}
