package qemu

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/initramfs"
)

// The lab's boot services listen on Gateway, on ports of their own beside
// the enterprise's.
var (
	// PXEAddr serves the PXE directory over HTTP (StartPXE).
	PXEAddr = netip.AddrPortFrom(Gateway, 8080)
	// ImagingAddr serves the imaging payload and boot files over HTTPS
	// (ServeImaging).
	ImagingAddr = netip.AddrPortFrom(Gateway, 9443)
)

// PXEBaseURL is the URL of the PXE directory that StartPXE serves, for
// initramfs.PXE's BaseURL.
var PXEBaseURL = "http://" + PXEAddr.String() + "/"

// ImagingURL returns the URL of a file that ServeImaging serves.
func ImagingURL(name string) string { return "https://" + ImagingAddr.String() + "/" + name }

// DefaultHTTPShutdown bounds how long Close waits for a lab HTTP server's
// requests to end.
const DefaultHTTPShutdown = 2 * time.Second

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
// would (see the README): dnsmasq is the DHCP server (in place of the one
// StartDHCP started, if any) and, with TFTP, hands
// iPXE (QEMU's network cards carry it as their option ROM) the script
// initramfs.PXEScript from dir; an HTTP server on PXEBaseURL serves dir, so
// the kernel and the image come over HTTP when the script names
// PXEBaseURL as its base (initramfs.WritePXE).
func (l *Lab) StartPXE(ctx context.Context, dir string) (*Process, error) {
	if _, err := os.Stat(filepath.Join(dir, initramfs.PXEScript)); err != nil {
		return nil, fmt.Errorf("lab: pxe: %w", err)
	}
	if err := l.ServeHTTP(PXEAddr.String(), http.FileServer(http.Dir(dir)), nil); err != nil {
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

// ServeImaging serves h over HTTPS on ImagingAddr, as an enterprise's
// imaging server: with a certificate for Gateway from a CA made for this
// call, whose certificate it returns as PEM, for the image's
// config.ImagingCAFile.
func (l *Lab) ServeImaging(h http.Handler) ([]byte, error) {
	ca, leaf, err := imagingCerts()
	if err != nil {
		return nil, fmt.Errorf("lab: imaging server: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}
	if err := l.ServeHTTP(ImagingAddr.String(), h, cfg); err != nil {
		return nil, err
	}
	return ca, nil
}

// imagingCerts makes a CA and a server certificate for Gateway that it
// issued, valid for a day.
func imagingCerts() (caPEM []byte, leaf tls.Certificate, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, leaf, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "PBN lab imaging CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, leaf, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, leaf, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: Gateway.String()},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{Gateway.AsSlice()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		return nil, leaf, err
	}
	leaf = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), leaf, nil
}
