package tang

import (
	"net/netip"
	"sync"
	"time"
)

// Defaults of the exchanges one client address may make (POST /rec): a
// burst of DefaultClientBurst, then DefaultClientRate a second. A device
// makes one exchange per boot, so even a network address translator in
// front of a whole floor of clients rebooting at once stays within them,
// while one host cannot take the server's CPU (an exchange on P-521 costs
// about 2 ms of it).
const (
	DefaultClientRate  = 20
	DefaultClientBurst = 100
)

// maxClients bounds how many client addresses the limiter remembers at
// once (about 100 bytes each).
const maxClients = 1 << 16

// clientLimiter is a token bucket per client address: each address starts
// with burst tokens, gains rate a second up to burst, and spends one per
// exchange.
type clientLimiter struct {
	rate, burst float64
	now         func() time.Time

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newClientLimiter(rate float64, burst int) *clientLimiter {
	return &clientLimiter{rate: rate, burst: float64(burst), now: time.Now,
		buckets: map[netip.Addr]*bucket{}}
}

// allow spends a token of the client at remote (an http.Request's
// RemoteAddr) and reports whether it had one. IPv6 clients count by their
// /64, which one host may hold all of. When maxClients addresses are
// remembered, none of them full, a new address is refused: a flood from
// that many hosts is refused in part rather than served whole.
func (l *clientLimiter) allow(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return true // not a TCP client (a test's or a pipe's); nothing to count by
	}
	addr := ap.Addr().Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		addr = p.Addr()
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) >= maxClients && !l.sweep(now) {
			return false
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[addr] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets the addresses whose buckets are full again, which a new
// bucket would be too, and reports whether it forgot any.
func (l *clientLimiter) sweep(now time.Time) bool {
	n := len(l.buckets)
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
	return len(l.buckets) < n
}
