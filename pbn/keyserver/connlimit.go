package keyserver

import (
	"net"
	"sync"
)

// DefaultMaxConnections is Config.MaxConnections's default: far above what a
// fleet booting at once keeps open (each boot holds a connection for a few
// round trips), far below the descriptors a process may hold.
const DefaultMaxConnections = 1024

// limitListener takes a connection only while fewer than cap(slots) of
// its connections are open. Past that, Accept waits, and new clients wait
// in the kernel's listen backlog, holding no descriptor and no memory of
// the server's, until a connection closes or times out.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, max), closed: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

// Close stops an Accept that waits for a slot, and closes the listener.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// open returns how many of the listener's connections are open.
func (l *limitListener) open() int { return len(l.slots) }

// limitConn gives its slot back when it is closed, once.
type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
