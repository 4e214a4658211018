package qemu

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/initramfs"
)

// The lab's boot services listen on Gateway.
const (
	// HTTPPort serves the PXE directory (StartPXE).
	HTTPPort = 80
	// DefaultHTTPShutdown bounds how long Close waits for a lab HTTP
	// server's requests to end.
	DefaultHTTPShutdown = 2 * time.Second
)

// PXEBaseURL is the URL of the PXE directory that StartPXE serves, for
// initramfs.PXE's BaseURL.
var PXEBaseURL = fmt.Sprintf("http://%s:%d/", Gateway, HTTPPort)

// Listen opens a listening socket inside the lab's namespace: services the
// test runs itself, in Go, reach the LAN through it. A socket keeps the
// namespace it was made in, so only the making needs a thread of its own
// that enters the namespace.
func (l *Lab) Listen(network, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ln, err, restored := l.listenIn(network, addr)
		if restored {
			runtime.UnlockOSThread()
		} // else the thread ends with the goroutine, still locked
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// listenIn makes the socket on a locked thread that it moves into the
// lab's namespace and back; restored says whether the move back worked.
func (l *Lab) listenIn(network, addr string) (ln net.Listener, err error, restored bool) {
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, fmt.Errorf("lab: listen: %w", err), true
	}
	defer self.Close()
	lab, err := os.Open(filepath.Join("/run/netns", l.Name))
	if err != nil {
		return nil, fmt.Errorf("lab: listen: %w", err), true
	}
	defer lab.Close()
	if err := unix.Setns(int(lab.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("lab: listen: entering %s: %w", l.Name, err), true
	}
	ln, err = net.Listen(network, addr)
	if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); serr != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, fmt.Errorf("lab: listen: leaving %s: %w", l.Name, serr), false
	}
	if err != nil {
		return nil, fmt.Errorf("lab: listen on %s in %s: %w", addr, l.Name, err), true
	}
	return ln, nil, true
}

// ServeHTTP serves h on addr inside the lab's namespace, over TLS when
// tlsConfig is set, until Close. It returns once the server listens.
func (l *Lab) ServeHTTP(addr string, h http.Handler, tlsConfig *tls.Config) error {
	ln, err := l.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	l.onClose(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultHTTPShutdown)
		defer cancel()
		err := srv.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			err = srv.Close()
		}
		if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	})
	l.log.Info("serving http", "addr", addr, "tls", tlsConfig != nil)
	return nil
}

// StartPXE makes the LAN boot laptops from the network as an enterprise's
// would (see the README): dnsmasq is the DHCP server and, with TFTP, hands
// iPXE (QEMU's network cards carry it as their option ROM) the script
// initramfs.PXEScript from dir; an HTTP server on PXEBaseURL serves dir, so
// the kernel and the image come over HTTP when the script names
// PXEBaseURL as its base (initramfs.WritePXE). dnsmasq's TFTP serves only
// dir, and only files that exist when asked.
func (l *Lab) StartPXE(ctx context.Context, dir string) (*Process, error) {
	if _, err := os.Stat(filepath.Join(dir, initramfs.PXEScript)); err != nil {
		return nil, fmt.Errorf("lab: pxe: %w", err)
	}
	if err := l.ServeHTTP(fmt.Sprintf("%s:%d", Gateway, HTTPPort), http.FileServer(http.Dir(dir)), nil); err != nil {
		return nil, err
	}
	// dnsmasq reads TFTP files when asked, after it dropped to nobody by
	// default; the lab's directories are root's alone, so it stays root,
	// inside the lab's namespace.
	return l.startDnsmasq(ctx, "--user=root", "--enable-tftp", "--tftp-root="+dir,
		// iPXE says who it is in option 175; the script is for it only
		// (other firmware would first chain-load iPXE, see the README).
		"--dhcp-match=set:ipxe,175", "--dhcp-boot=tag:ipxe,"+initramfs.PXEScript)
}
