package tang

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func TestClientLimiter(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	l := newClientLimiter(2, 3)
	l.now = func() time.Time { return clock }
	allowed := func(remote string, n int) int {
		got := 0
		for range n {
			if l.allow(remote) {
				got++
			}
		}
		return got
	}

	if got := allowed("192.0.2.1:1000", 5); got != 3 {
		t.Errorf("a new address: %d of 5 allowed, want the burst of 3", got)
	}
	if got := allowed("192.0.2.2:1000", 1); got != 1 {
		t.Errorf("another address: %d of 1 allowed, want 1", got)
	}
	if got := allowed("[::ffff:192.0.2.1]:2000", 1); got != 0 {
		t.Errorf("the first address mapped into IPv6: %d allowed, want 0 (the same client)", got)
	}
	clock = clock.Add(time.Second)
	if got := allowed("192.0.2.1:1001", 5); got != 2 {
		t.Errorf("a second later: %d of 5 allowed, want the rate of 2", got)
	}
	if got := allowed("[2001:db8:1:2::1]:443", 3) + allowed("[2001:db8:1:2:ffff::9]:443", 3); got != 3 {
		t.Errorf("two hosts of one IPv6 /64: %d of 6 allowed, want 3 (counted as one)", got)
	}
	if got := allowed("[2001:db8:1:3::1]:443", 1); got != 1 {
		t.Errorf("another /64: %d allowed, want 1", got)
	}
	if got := allowed("pipe", 10); got != 10 {
		t.Errorf("a RemoteAddr that is no address: %d of 10 allowed, want all", got)
	}
}

// TestClientLimiterFull fills the limiter's memory with addresses that
// are all still counting, and then with ones that have refilled.
func TestClientLimiterFull(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	l := newClientLimiter(1, 2)
	l.now = func() time.Time { return clock }
	for i := range maxClients {
		l.allow("10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255) + ":1")
	}
	if l.allow("192.0.2.1:1") {
		t.Error("a new address allowed while every remembered one is still counting")
	}
	clock = clock.Add(2 * time.Second)
	if !l.allow("192.0.2.1:1") {
		t.Error("a new address refused after the others refilled")
	}
	if n := len(l.buckets); n != 1 {
		t.Errorf("%d addresses remembered after the sweep, want 1", n)
	}
}

// TestRateLimited: past its burst a client is answered 429 with
// Retry-After before any work on its request, and another client is not.
func TestRateLimited(t *testing.T) {
	_, ks := newKeyDir(t)
	h := NewHandler(ks, nil)
	exc, _ := ks.ExchangeKey("P-521")
	status := func(remote string) (int, string) {
		r := httptest.NewRequest(http.MethodPost, "/rec/"+exc.ID, nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Header().Get("Retry-After")
	}
	for i := range DefaultClientBurst {
		if code, _ := status("192.0.2.7:40000"); code != http.StatusBadRequest {
			t.Fatalf("request %d = %d, want 400 for the empty body, not yet limited", i, code)
		}
	}
	if code, retry := status("192.0.2.7:40001"); code != http.StatusTooManyRequests || retry != "1" {
		t.Errorf("past the burst = %d, Retry-After %q; want 429, 1", code, retry)
	}
	if code, _ := status("192.0.2.8:40000"); code != http.StatusBadRequest {
		t.Errorf("another client = %d, want 400 (not limited)", code)
	}
	h.SetClientLimit(0, 0)
	if code, _ := status("192.0.2.7:40002"); code != http.StatusBadRequest {
		t.Errorf("with the limit lifted = %d, want 400", code)
	}
}
