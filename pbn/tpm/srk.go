package tpm

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// srkHandle is where the TCG puts the SRK when it is made persistent (TCG
// TPM v2.0 Provisioning Guidance, reserved handles: 0x81000001). Other
// software (systemd-cryptenroll, tpm2-tools) uses the same handle.
const srkHandle = tpm2.TPMHandle(0x81000001)

// An srk is a loaded storage root key.
type srk struct {
	handle tpm2.TPMHandle
	public tpm2.TPMTPublic
	name   tpm2.TPM2BName
}

// named returns the SRK as a handle for commands that need its name. As an
// authorized handle (a parent) it gets go-tpm's empty password session: the
// SRK template asks for no authValue, so nothing secret crosses.
func (k *srk) named() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: k.handle, Name: k.name}
}

// salted returns the options that salt a session with the SRK (Part 1,
// "Salted and Bound Session Key Generation") and encrypt the first
// parameter in the direction given (Part 1, 21.1).
func (k *srk) salted(dir ...tpm2.AuthOption) []tpm2.AuthOption {
	return append([]tpm2.AuthOption{tpm2.Salted(k.handle, k.public)}, dir...)
}

// TODO: check the SRK against the TPM's endorsement key certificate at
// enrolment (TPM2_Certify of the SRK by an EK-backed attestation key). The
// name pinned at the first seal protects every later boot, but an
// interposer that emulates a TPM already at enrolment goes unnoticed.

// SRKName returns the name of the TPM's SRK (Part 1, 16: nameAlg and the
// digest of the public area), as it is recorded in a sealed object. It makes
// the SRK from the standard template, so the name is that of the TPM's real
// primary key whatever is stored at the persistent handle.
func (t *TPM) SRKName(ctx context.Context) ([]byte, error) {
	k, err := t.primarySRK(t.with(ctx))
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	return bytes.Clone(k.name.Buffer), nil
}

// SRKPersistent reports whether the SRK is stored at its persistent handle,
// which spares every unseal the making of it.
func (t *TPM) SRKPersistent(ctx context.Context) (bool, error) {
	tr := t.with(ctx)
	k, err := t.primarySRK(tr)
	if err != nil {
		return false, fmt.Errorf("tpm: %w", err)
	}
	p, err := t.persistentSRK(tr)
	if err != nil {
		return false, fmt.Errorf("tpm: %w", err)
	}
	return p != nil && bytes.Equal(p.name.Buffer, k.name.Buffer), nil
}

// primarySRK makes the SRK from its template (Part 3, 24.1
// TPM2_CreatePrimary) once per TPM value. The owner hierarchy's
// authorization must be empty, as it is on every PC that has not had it set
// on purpose.
func (t *TPM) primarySRK(tr transport.TPM) (*srk, error) {
	if t.primary != nil {
		return t.primary, nil
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("make the SRK: %w", err)
	}
	k, err := checkedSRK(rsp.ObjectHandle, rsp.OutPublic, rsp.Name)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("make the SRK: %w", err), flush(tr, rsp.ObjectHandle))
	}
	t.primary = k
	t.log.Debug("made the SRK", "name", fmt.Sprintf("%x", k.name.Buffer))
	return k, nil
}

// persistentSRK reads the public area of the persistent SRK (Part 3, 12.4
// TPM2_ReadPublic), or returns nil when there is none.
func (t *TPM) persistentSRK(tr transport.TPM) (*srk, error) {
	if t.persistent != nil {
		return t.persistent, nil
	}
	rsp, err := tpm2.ReadPublic{ObjectHandle: srkHandle}.Execute(tr)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the persistent SRK: %w", err)
	}
	k, err := checkedSRK(srkHandle, rsp.OutPublic, rsp.Name)
	if err != nil {
		return nil, fmt.Errorf("read the persistent SRK: %w", err)
	}
	t.persistent = k
	return k, nil
}

// checkedSRK decodes a public area the TPM returned and checks that the name
// it gave is the name of that area, so that the name compared with a sealed
// object's record is the one the salt is encrypted to.
func checkedSRK(h tpm2.TPMHandle, pub tpm2.TPM2BPublic, name tpm2.TPM2BName) (*srk, error) {
	p, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("decode the public area: %w", err)
	}
	if p.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("the SRK is not an ECC key")
	}
	n, err := tpm2.ObjectName(p)
	if err != nil {
		return nil, fmt.Errorf("compute the name: %w", err)
	}
	if !bytes.Equal(n.Buffer, name.Buffer) {
		return nil, fmt.Errorf("the TPM returned a name that is not its public area's")
	}
	return &srk{handle: h, public: *p, name: *n}, nil
}

// srkNamed returns the SRK whose name is want: the persistent one when it is
// that key (one cheap command), else the one made from the template. It
// returns ErrSRKMismatch when the TPM's SRK is another key.
func (t *TPM) srkNamed(tr transport.TPM, want []byte) (*srk, error) {
	p, err := t.persistentSRK(tr)
	if err != nil {
		return nil, err
	}
	if p != nil && bytes.Equal(p.name.Buffer, want) {
		return p, nil
	}
	k, err := t.primarySRK(tr)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(k.name.Buffer, want) {
		return nil, ErrSRKMismatch
	}
	return k, nil
}

// persistSRK makes the SRK persistent at the standard handle (Part 3, 28.5
// TPM2_EvictControl) when that handle is free, so that later unseals read
// it instead of making it again. It leaves a key already at the handle
// alone. It is best effort: without it an unseal costs one expensive
// command more.
func (t *TPM) persistSRK(tr transport.TPM, k *srk) {
	p, err := t.persistentSRK(tr)
	if err != nil || p != nil {
		if p != nil && !bytes.Equal(p.name.Buffer, k.name.Buffer) {
			t.log.Warn("another key than the SRK is at the SRK's persistent handle",
				"handle", fmt.Sprintf("%#x", uint32(srkHandle)))
		}
		return
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     k.named(),
		PersistentHandle: srkHandle,
	}.Execute(tr)
	if err != nil {
		t.log.Warn("could not make the SRK persistent", "err", err)
		return
	}
	t.persistent = &srk{handle: srkHandle, public: k.public, name: k.name}
	t.log.Debug("made the SRK persistent", "handle", fmt.Sprintf("%#x", uint32(srkHandle)))
}
