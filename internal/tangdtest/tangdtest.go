// Package tangdtest runs Debian's tangd for tests and benchmarks, as Debian
// runs it: one tangd process per connection (socat's fork standing in for
// systemd's socket activation), on a loopback port, with keys that
// tangd-keygen made.
package tangdtest

import (
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
)

// startTimeout bounds waiting for socat to listen.
const startTimeout = 10 * time.Second

// Keys makes a key directory with tangd-keygen and returns its path.
func Keys(t testing.TB) string {
	t.Helper()
	keygen := testenv.Command(t, "/usr/libexec/tangd-keygen")
	dir := t.TempDir()
	if out, err := exec.Command(keygen, dir).CombinedOutput(); err != nil {
		t.Fatalf("tangd-keygen: %v\n%s", err, out)
	}
	return dir
}

// Start serves the keys of dir with tangd on a loopback port and returns
// its base URL. socat and every tangd it forked are killed when the test
// ends. A port that another test takes between the probe and socat's bind
// is retried on another.
func Start(t testing.TB, dir string) string {
	t.Helper()
	tangd := testenv.Command(t, "/usr/libexec/tangd")
	socat := testenv.Command(t, "socat")
	for range 3 {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(socat, "TCP-LISTEN:"+port+",bind=127.0.0.1,fork,reuseaddr,backlog=512",
			"EXEC:"+tangd+" "+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		})
		addr := net.JoinHostPort("127.0.0.1", port)
		if listening(addr, exited) {
			return "http://" + addr
		}
	}
	t.Fatal("socat could not listen for tangd on three ports")
	return ""
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	return port, err
}

// listening waits until addr takes connections, or socat exits.
func listening(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
