package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/pbn/secret"
)

// recorder keeps a copy of every command and response that passes it, as
// someone probing the bus between the CPU and a discrete TPM sees them.
type recorder struct {
	tr      transport.TPM
	traffic [][]byte
}

func (r *recorder) Send(cmd []byte) ([]byte, error) {
	r.traffic = append(r.traffic, bytes.Clone(cmd))
	rsp, err := r.tr.Send(cmd)
	r.traffic = append(r.traffic, bytes.Clone(rsp))
	return rsp, err
}

// seen reports whether any 8-byte piece of v crossed the recorder.
func (r *recorder) seen(v []byte) bool {
	const piece = 8
	for i := 0; i+piece <= len(v); i++ {
		for _, m := range r.traffic {
			if bytes.Contains(m, v[i:i+piece]) {
				return true
			}
		}
	}
	return false
}

// The sealed secret, the password and the authValues derived from it never
// cross the TPM bus in the clear, in sealing nor in unsealing. This does not
// prove that the salted sessions resist an active attacker on the bus (one
// who changes traffic), nor that the secrets do not leak through timing or
// through copies in this process's memory.
func TestTrafficCarriesNoSecret(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	rec := &recorder{tr: tp.tr}
	tp = New(rec, nil)
	password := secret.Bytes("correct horse battery staple")
	f := NewFactor(tp, DefaultPCRs, password)

	params, enrolled, err := f.Enroll(testContext(t), nil)
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	recovered, err := f.Recover(testContext(t), nil, params)
	if err != nil || !recovered.Equal(enrolled) {
		t.Fatalf("Recover = %v, want the enrolled secret", err)
	}
	p, err := parseParams(params)
	if err != nil {
		t.Fatalf("parseParams = %v", err)
	}
	auth, err := f.authValue(p.salt[:])
	if err != nil {
		t.Fatalf("authValue = %v", err)
	}

	for _, tc := range []struct {
		name string
		v    []byte
	}{
		{"the sealed secret", enrolled},
		{"the password", password},
		{"the authValue", auth},
		{"the object's authValue", objectAuth(auth)},
	} {
		if rec.seen(tc.v) {
			t.Errorf("%s crossed the bus", tc.name)
		}
	}

	// The control: the recorder does see what crosses in the clear, in
	// both directions.
	if !rec.seen(p.sealed.Private) {
		t.Errorf("the recorder missed the private area that TPM2_Load carries")
	}
	rnd, err := tpm2.GetRandom{BytesRequested: 16}.Execute(rec)
	if err != nil {
		t.Fatalf("GetRandom = %v", err)
	}
	if !rec.seen(rnd.RandomBytes.Buffer) {
		t.Errorf("the recorder missed the bytes of a TPM2_GetRandom response")
	}
}

// fault changes the response to one command. It stands for answers that a
// real TPM (or swtpm) cannot be made to give on purpose: a bus that cuts a
// response short, a TPM that fails or refuses at any step.
type fault struct {
	name  string
	apply func(rsp []byte) ([]byte, error)
}

var faults = []fault{
	{"empty", func([]byte) ([]byte, error) { return nil, nil }},
	{"short header", func(r []byte) ([]byte, error) { return r[:6], nil }},
	{"header only", func(r []byte) ([]byte, error) { return r[:10], nil }},
	{"cut in half", func(r []byte) ([]byte, error) { return r[:len(r)/2], nil }},
	{"one byte short", func(r []byte) ([]byte, error) { return r[:len(r)-1], nil }},
	{"TPM_RC_FAILURE", func(r []byte) ([]byte, error) { return withRC(r, 0x101), nil }},
	{"TPM_RC_LOCKOUT", func(r []byte) ([]byte, error) { return withRC(r, 0x921), nil }},
	{"unknown code", func(r []byte) ([]byte, error) { return withRC(r, 0xfff), nil }},
	{"transport error", func([]byte) ([]byte, error) { return nil, errors.New("bus error") }},
}

// withRC returns a bare response carrying the response code rc.
func withRC(r []byte, rc uint32) []byte {
	out := binary.BigEndian.AppendUint16(nil, 0x8001)
	out = binary.BigEndian.AppendUint32(out, 10)
	return binary.BigEndian.AppendUint32(out, rc)
}

// faulty applies f to the response to its command number at (from 0).
type faulty struct {
	tr transport.TPM
	at int
	n  int
	f  fault
}

func (ft *faulty) Send(cmd []byte) ([]byte, error) {
	rsp, err := ft.tr.Send(cmd)
	if err != nil || retry(rsp) {
		return rsp, err
	}
	ft.n++
	if ft.n-1 != ft.at {
		return rsp, err
	}
	return ft.f.apply(rsp)
}

// Every fault at every command of an unseal gives an error or, when it hits
// the final flush, the right secret; never a panic, never another secret.
func TestBadAnswers(t *testing.T) {
	tp := openSim(t, swtpm.Start(t))
	setLockout(t, tp, 1000, 1) // the injected refusals must not lock the TPM
	s, auth, data := seal(t, tp, DefaultPCRs)

	c := &counter{tr: tp.tr}
	if _, err := New(c, nil).Unseal(testContext(t), s, auth); err != nil {
		t.Fatalf("Unseal = %v", err)
	}
	for at := range c.n {
		for _, f := range faults {
			t.Run(fmt.Sprintf("%d/%s", at, f.name), func(t *testing.T) {
				defer flushAll(t, tp.tr)
				ft := &faulty{tr: tp.tr, at: at, f: f}
				got, err := unsealNoPanic(t, New(ft, nil), s, auth)
				switch {
				case err == nil && !got.Equal(data):
					t.Fatalf("Unseal = another secret than was sealed")
				case err == nil && at < c.n-1:
					t.Fatalf("Unseal = nil error, want an error")
				case err != nil && !strings.HasPrefix(err.Error(), "tpm: unseal: "):
					t.Errorf("Unseal = %q, want an error that starts with \"tpm: unseal: \"", err)
				}
			})
		}
	}
}

func unsealNoPanic(t *testing.T, tp *TPM, s *Sealed, auth secret.Bytes) (got secret.Bytes, err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("Unseal panicked: %v", p)
		}
	}()
	return tp.Unseal(testContext(t), s, auth)
}

// flushAll flushes the sessions and transient objects that a fault left in
// the TPM, so that the next case starts with room for its own.
func flushAll(t *testing.T, tr transport.TPM) {
	t.Helper()
	for _, first := range []tpm2.TPMHandle{0x02000000, 0x03000000, 0x80000000} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first),
			PropertyCount: 64}.Execute(tr)
		if err != nil {
			t.Fatalf("GetCapability(handles) = %v", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatalf("GetCapability(handles) = %v", err)
		}
		for _, h := range hs.Handle {
			if h>>24 == first>>24 {
				flush(tr, h)
			}
		}
	}
}
