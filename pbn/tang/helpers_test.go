package tang

import (
	"context"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/keyfile"
)

// newKeyDir generates a key directory and loads it.
func newKeyDir(t testing.TB) (string, *Keys) {
	t.Helper()
	dir := t.TempDir()
	if err := GenerateKeys(dir); err != nil {
		t.Fatal(err)
	}
	return dir, mustLoad(t, dir)
}

func mustLoad(t testing.TB, dir string) *Keys {
	t.Helper()
	ks, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// serve serves keys with the package's handler and server settings on a
// loopback port.
func serve(t testing.TB, ks *Keys) (*Handler, *httptest.Server) {
	t.Helper()
	h := NewHandler(ks, nil)
	srv := httptest.NewUnstartedServer(h)
	srv.Config = NewServer(h, nil)
	srv.Start()
	t.Cleanup(srv.Close)
	return h, srv
}

// thumbprintOfPin returns the SHA-256 thumbprint of a pinned signing key,
// as clevis's "thp" wants it.
func thumbprintOfPin(t testing.TB, pin []byte) string {
	t.Helper()
	thp, err := PinThumbprint(pin)
	if err != nil {
		t.Fatal(err)
	}
	return thp
}

// tangdKeys makes a key directory with Debian's tangd-keygen and returns
// it with the pin of its signing key.
func tangdKeys(t testing.TB) (dir string, pin []byte) {
	t.Helper()
	keygen := testenv.Command(t, "/usr/libexec/tangd-keygen")
	dir = t.TempDir()
	if out, err := exec.Command(keygen, dir).CombinedOutput(); err != nil {
		t.Fatalf("tangd-keygen: %v\n%s", err, out)
	}
	return dir, tangdPin(t, dir)
}

// tangdPin returns the pin of the advertised signing key of a tangd key
// directory.
func tangdPin(t testing.TB, dir string) []byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "[^.]*.jwk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if pin, err := PinJWK(b); err == nil {
			return pin
		}
	}
	t.Fatalf("no signing key in %s", dir)
	return nil
}

// startTangd runs Debian's tangd on dir as Debian does, one process per
// connection (systemd socket activation there, socat's fork here), on a
// loopback port, and returns its URL. The processes are killed when the
// test ends. A port taken between freePort and socat's bind (other tests
// run beside these) is retried on another.
func startTangd(t testing.TB, dir string) string {
	t.Helper()
	tangd := testenv.Command(t, "/usr/libexec/tangd")
	socat := testenv.Command(t, "socat")
	for range 3 {
		addr := freePort(t)
		_, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command(socat,
			"TCP-LISTEN:"+port+",bind=127.0.0.1,fork,reuseaddr,backlog=512",
			"EXEC:"+tangd+" "+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			// socat and the tangd processes it forked share its group.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		})
		if waitListening(t, addr, exited) {
			return "http://" + addr
		}
	}
	t.Fatal("socat could not listen for tangd on three ports")
	return ""
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitListening reports whether addr accepts connections within 5s,
// giving up early when the listening process has exited.
func waitListening(t testing.TB, addr string, exited <-chan struct{}) bool {
	t.Helper()
	for range 100 {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("nothing listens on %s after 5s", addr)
	return false
}

// testContext returns a context that ends with the test, within a minute.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// header returns a key file header bound to the server at url with pin.
func header(url string, pin []byte) *keyfile.Header {
	return &keyfile.Header{
		ID: keyfile.NewID(), Kind: keyfile.KindProvisioning, DeviceID: keyfile.NewID(),
		Server: keyfile.Server{URL: url, PublicKey: pin},
	}
}
