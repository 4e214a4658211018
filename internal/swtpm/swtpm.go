// Package swtpm runs a software TPM 2.0 (swtpm, Debian package swtpm) for
// tests: one process per test on Unix sockets in the test's temporary
// directory, so that tests running side by side never share a TPM or race
// for a port.
//
// The TPM's state lives in a directory that outlives the process:
// [Sim.Restart] stops swtpm and starts it again on the same state (a reboot:
// the seeds, persistent objects and dictionary-attack counters survive, the
// PCRs are reset), and another [Start] makes a different TPM.
package swtpm

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/internal/testenv"
)

// StartTimeout bounds how long Start waits for swtpm's socket to appear.
const StartTimeout = 10 * time.Second

// stopTimeout bounds the orderly shutdown before swtpm is killed.
const stopTimeout = 5 * time.Second

// A Sim is a running swtpm.
type Sim struct {
	bin   string
	dir   string // holds the state and the sockets
	state string
	cmd   *exec.Cmd
	done  chan error
}

// Start starts swtpm on a fresh state and stops it when the test ends. It
// skips or fails t (see [testenv.Command]) when swtpm is not installed.
func Start(t testing.TB) *Sim {
	t.Helper()
	s := newSim(t)
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

// StartWithBanks starts swtpm on a fresh state whose only active PCR banks
// are banks, a comma-separated list such as "sha1", as swtpm_setup
// --pcr-banks sets them.
func StartWithBanks(t testing.TB, banks string) *Sim {
	t.Helper()
	s := newSim(t)
	setup := testenv.Command(t, "swtpm_setup")
	out, err := exec.Command(setup, "--tpm2", "--tpmstate", s.state, "--pcr-banks", banks).CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup --pcr-banks %s: %v\n%s", banks, err, out)
	}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

func newSim(t testing.TB) *Sim {
	t.Helper()
	bin := testenv.Command(t, "swtpm")
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Sim{bin: bin, dir: dir, state: filepath.Join(dir, "state")}
	if err := os.Mkdir(s.state, 0o700); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	return s
}

// Path is the TPM's command socket in the form pbn/tpm.Open takes.
func (s *Sim) Path() string { return "unix:" + s.socket() }

func (s *Sim) ctrlSocket() string { return filepath.Join(s.dir, "ctrl.sock") }

// StateDir is the directory that holds the TPM's persistent state.
func (s *Sim) StateDir() string { return s.state }

func (s *Sim) socket() string { return filepath.Join(s.dir, "tpm.sock") }

// Restart shuts the TPM down in order and starts it again on the same state,
// as a reboot does. Connections to the old process are closed by then; the
// caller opens a new one.
func (s *Sim) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	s.start(t)
}

func (s *Sim) start(t testing.TB) {
	t.Helper()
	os.Remove(s.socket())
	os.Remove(s.ctrlSocket())
	s.cmd = exec.Command(s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+s.state,
		"--server", "type=unixio,path="+s.socket(),
		"--ctrl", "type=unixio,path="+s.ctrlSocket(),
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(s.dir, "swtpm.log"))
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	s.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(s.cmd, s.done)

	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.cmd = nil
			log, _ := os.ReadFile(filepath.Join(s.dir, "swtpm.log"))
			t.Fatalf("swtpm exited at start: %v\n%s", err, log)
		default:
		}
		if c, err := net.Dial("unix", s.socket()); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.stop()
	t.Fatalf("swtpm: no socket after %v", StartTimeout)
}

// Extend extends a PCR of the SHA-256 bank, as ExtendOn does, on a
// connection of its own: no other connection to the TPM may be open.
func (s *Sim) Extend(t testing.TB, pcr int, event string) {
	t.Helper()
	c, err := net.DialTimeout("unix", s.socket(), stopTimeout)
	if err != nil {
		t.Fatalf("swtpm: extend PCR %d: %v", pcr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(stopTimeout))
	ExtendOn(t, transport.FromReadWriter(c), pcr, event)
}

// ExtendOn extends a PCR of the SHA-256 bank of the TPM at tr with the
// digest of event (TPM 2.0 Part 3, 22.2 TPM2_PCR_Extend), as a boot
// component that measures something does.
func ExtendOn(t testing.TB, tr transport.TPM, pcr int, event string) {
	t.Helper()
	d := sha256.Sum256([]byte(event))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}.Execute(tr)
	if err != nil {
		t.Fatalf("swtpm: extend PCR %d: %v", pcr, err)
	}
}

// stop sends TPM2_Shutdown(TPM_SU_CLEAR), as an operating system does at
// power-off, so that the next start is not counted as an unorderly one
// (which a TPM may treat as a dictionary-attack failure), then ends swtpm.
func (s *Sim) stop() {
	if s.cmd == nil {
		return
	}
	shutdown(s.socket())
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// shutdown sends TPM2_Shutdown (TPM 2.0 Part 3, 9.4) on a connection of its
// own. It is best effort: the TPM restarts either way.
func shutdown(socket string) error {
	c, err := net.DialTimeout("unix", socket, stopTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(stopTimeout))
	const (
		stNoSessions = 0x8001
		ccShutdown   = 0x145
		suClear      = 0x0000
	)
	cmd := binary.BigEndian.AppendUint16(nil, stNoSessions)
	cmd = binary.BigEndian.AppendUint32(cmd, 12)
	cmd = binary.BigEndian.AppendUint32(cmd, ccShutdown)
	cmd = binary.BigEndian.AppendUint16(cmd, suClear)
	if _, err := c.Write(cmd); err != nil {
		return err
	}
	rsp := make([]byte, 10)
	if _, err := io.ReadFull(c, rsp); err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != 0 {
		return fmt.Errorf("TPM2_Shutdown: response code %#x", rc)
	}
	return nil
}
