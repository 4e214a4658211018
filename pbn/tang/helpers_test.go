package tang

import (
	"context"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/tangdtest"
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
	dir = tangdtest.Keys(t)
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
