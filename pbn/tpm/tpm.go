// Package tpm seals a key file's secret to this device's TPM 2.0, its boot
// chain and its user, and gives the device a signing key that never leaves
// the TPM.
//
// # Sealing
//
// [TPM.Seal] creates a sealed data object (TPM 2.0 Part 3, 12.1
// TPM2_Create) under the storage root key (SRK), an ECC NIST P-256 primary
// key of the owner hierarchy made from the TCG's standard template (TCG TPM
// v2.0 Provisioning Guidance, the ECC SRK template; [tpm2.ECCSRKTemplate]).
// The object's only authorization is a policy of TPM2_PolicyPCR (Part 3,
// 23.7) over the SHA-256 bank followed by TPM2_PolicyAuthValue (Part 3,
// 23.17), so the TPM releases the secret only while the selected PCRs hold
// the values they held at sealing and only to a caller that proves knowledge
// of the authValue, which [Factor] derives from the user's password. The
// object is subject to dictionary-attack protection.
//
// The SRK's name is recorded in [Sealed] and checked before each unseal: a
// TPM that presents another SRK was cleared, or is not the TPM the secret was
// sealed to, and [TPM.Unseal] returns [ErrSRKMismatch].
//
// Every session that carries a secret is salted with the SRK and encrypts
// its first parameter with AES-128-CFB (Part 1, 19.6 and 21.1): the
// sensitive data going into TPM2_Create (the authValue and the secret) and
// the secret coming out of TPM2_Unseal never cross the bus in the clear, and
// at unsealing the authValue enters only as part of an HMAC key.
//
// # The key file factor, re-sealing and the device key
//
// [Factor] is the key file's TPM factor ([keyfile.FactorTPM]); a key file's
// protector pairs it with the Argon2id password factor. [Reseal] replaces a
// key file's TPM protectors after a legitimate change of the boot chain.
// [TPM.DeviceKey] is a signing key that the TPM makes again at every boot and
// never exports, by which the key server knows the device.
//
// # Errors
//
// [TPM.Unseal] (and [Factor.Recover]) map the TPM's response codes to
// [*WrongPasswordError], [*LockoutError], [ErrPCRMismatch] and
// [ErrSRKMismatch]; [TPM.Seal] refuses to seal without a PCR binding with
// [ErrNoPCRBinding]. [Prompt] gives the sentence for the person at the
// pre-boot prompt.
package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// The TPM device files, in the order Open tries them: the kernel's resource
// manager first, so that other users of the TPM do not see our objects and
// sessions and we do not see theirs.
var devices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// DefaultCommandTimeout bounds one TPM command on a socket. The slowest
// command PBN sends is CreatePrimary of an ECC key, which takes well under a
// second on a discrete TPM; the bound is generous so that a loaded machine
// does not fail a boot.
const DefaultCommandTimeout = 30 * time.Second

// maxResponse bounds a response read from a socket: the TPM's own
// TPM_PT_MAX_RESPONSE_SIZE is 4096 bytes on every TPM we know of.
const maxResponse = 1 << 16

// Options tune a TPM. The zero value is ready to use.
type Options struct {
	// Logger receives debug records of the TPM's use; nil discards them.
	Logger *slog.Logger
	// CommandTimeout bounds each command sent over a socket;
	// zero means DefaultCommandTimeout. Device files have the kernel
	// driver's own timeouts.
	CommandTimeout time.Duration
}

// A TPM is an open connection to a TPM 2.0. Its methods are not safe for
// concurrent use.
type TPM struct {
	tr       transport.TPM
	closer   io.Closer
	deadline func(time.Time) error // nil for device files
	timeout  time.Duration
	log      *slog.Logger

	// The SRKs found so far: the persistent one at srkHandle and the one
	// made with CreatePrimary (flushed by Close).
	persistent, primary *srk
	// device is the device key, once made (a saved context, not loaded).
	device *deviceKey
}

// Open opens the TPM at path: "" for the system's TPM (/dev/tpmrm0, else
// /dev/tpm0), a device file, "unix:PATH" for a socket of swtpm (swtpm socket
// --server type=unixio,path=PATH), or "tcp:HOST:PORT" for swtpm's TCP server.
// A socket carries raw TPM commands; the TPM must be started already
// (swtpm's --flags startup-clear). ctx bounds the connection to a socket.
func Open(ctx context.Context, path string, o *Options) (*TPM, error) {
	if o == nil {
		o = &Options{}
	}
	switch {
	case path == "":
		var errs []error
		for _, dev := range devices {
			t, err := Open(ctx, dev, o)
			if err == nil {
				return t, nil
			}
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("tpm: no TPM found: %w", errors.Join(errs...))
	case strings.HasPrefix(path, "unix:"), strings.HasPrefix(path, "tcp:"):
		network, addr, _ := strings.Cut(path, ":")
		d := net.Dialer{Timeout: o.timeout()}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		t := New(&stream{c}, o)
		t.closer = c
		t.deadline = c.SetDeadline
		return t, nil
	}
	tr, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tpm: open %s: %w", path, err)
	}
	t := New(tr, o)
	t.closer = tr
	return t, nil
}

// New uses tr as a TPM. Close does not close tr. Commands on tr cannot be
// interrupted: a context ends the use of the TPM between commands.
func New(tr transport.TPM, o *Options) *TPM {
	if o == nil {
		o = &Options{}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &TPM{tr: tr, timeout: o.timeout(), log: log}
}

func (o *Options) timeout() time.Duration {
	if o.CommandTimeout > 0 {
		return o.CommandTimeout
	}
	return DefaultCommandTimeout
}

// Close flushes the transient objects that t loaded and closes the
// connection that Open made.
func (t *TPM) Close() error {
	var errs []error
	tr := t.with(context.Background())
	for _, h := range t.transients() {
		if err := flush(tr, h); err != nil {
			errs = append(errs, err)
		}
	}
	t.primary, t.persistent, t.device = nil, nil, nil
	if t.closer != nil {
		errs = append(errs, t.closer.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tpm: close: %w", err)
	}
	return nil
}

func (t *TPM) transients() []tpm2.TPMHandle {
	var hs []tpm2.TPMHandle
	if t.primary != nil {
		hs = append(hs, t.primary.handle)
	}
	return hs
}

// with returns the transport for one operation under ctx: it refuses to
// send once ctx is done and bounds each command on a socket by ctx's
// deadline or the command timeout, whichever comes first.
func (t *TPM) with(ctx context.Context) transport.TPM {
	return &bound{ctx: ctx, t: t}
}

type bound struct {
	ctx context.Context
	t   *TPM
}

func (b *bound) Send(cmd []byte) ([]byte, error) {
	wait := time.Millisecond
	for try := 0; ; try++ {
		rsp, err := b.send(cmd)
		if err != nil || try == maxRetries || !retry(rsp) {
			return rsp, err
		}
		select {
		case <-b.ctx.Done():
			return nil, b.ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

func (b *bound) send(cmd []byte) ([]byte, error) {
	if err := b.ctx.Err(); err != nil {
		return nil, err
	}
	if b.t.deadline != nil {
		d := time.Now().Add(b.t.timeout)
		if cd, ok := b.ctx.Deadline(); ok && cd.Before(d) {
			d = cd
		}
		if err := b.t.deadline(d); err != nil {
			return nil, err
		}
	}
	rsp, err := b.t.tr.Send(cmd)
	if err != nil {
		return nil, err
	}
	if err := checkSize(rsp); err != nil {
		return nil, err
	}
	return rsp, nil
}

// headerSize is the size of a response's header: tag, size and response
// code (Part 1, "Response Header").
const headerSize = 10

// checkSize checks that a response is as long as its header says, which
// go-tpm does not check to the byte.
func checkSize(rsp []byte) error {
	if len(rsp) < headerSize {
		return fmt.Errorf("a response of %d bytes is shorter than its header", len(rsp))
	}
	if n := binary.BigEndian.Uint32(rsp[2:]); n != uint32(len(rsp)) {
		return fmt.Errorf("a response of %d bytes says it has %d", len(rsp), n)
	}
	return nil
}

// maxRetries bounds the resends of a command the TPM could not start; with
// the doubling wait they span about two seconds.
const maxRetries = 11

// retry reports whether rsp asks to send the command again:
// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING (Part 2, 6.6.3).
func retry(rsp []byte) bool {
	if len(rsp) < headerSize {
		return false
	}
	switch tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:])) {
	case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting:
		return true
	}
	return false
}

// stream sends raw TPM commands over a connection and reads whole
// responses, as swtpm's socket server expects.
type stream struct{ c net.Conn }

func (s *stream) Send(cmd []byte) ([]byte, error) {
	if _, err := s.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("send command: %w", err)
	}
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:])
	if n < uint32(len(hdr)) || n > maxResponse {
		return nil, fmt.Errorf("read response: invalid size %d", n)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.c, rsp[len(hdr):]); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	return rsp, nil
}

// flush unloads a transient object or a session (Part 3, 28.4
// TPM2_FlushContext).
func flush(tr transport.TPM, h tpm2.TPMHandle) error {
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tr); err != nil {
		return fmt.Errorf("flush %#x: %w", uint32(h), err)
	}
	return nil
}
