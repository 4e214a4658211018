// Package enroll sets a device up for the provisioning stage of PBN's
// two-stage model, as imaging does before anyone knows who will use the
// device: it enrolls the device with the key server and makes its
// provisioning key file.
//
// The device is known to the server by its TPM: the endorsement key and the
// storage root key are recorded (store.Device.EK and SRK), and the TPM's
// device key (tpm.TPM.DeviceKey), whose private part never leaves the TPM,
// is what the device proves itself with in PBN mode. The provisioning key
// file holds a fresh FDE secret behind one protector, the network factor
// in PBN mode (tang.Factor over keyserver.Transport): it opens only with the
// key server's help, for this device, while the server lets it.
//
// Nothing is sealed to the TPM's PCRs here: the provisioning key file
// depends on the TPM only through the device key, so enrolment may run in
// another boot state (an imaging system, or the lab's host) than the boots
// that use it.
//
// A device that is in use already gets no provisioning key file: its user
// is known, and EnrollDevice enrolls the device alone, for a key file made
// for that user directly (pbnctl install). Nor does a device whose owner an
// administrator assigned before its imaging: EnrollOwned makes the owner's
// key file directly, for their first sign-in to seal.
package enroll

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// LabelNetwork is the label of the provisioning key file's protector.
const LabelNetwork = "network"

// Device describes the device to enroll.
type Device struct {
	// ID identifies the device; zero means a new random one.
	ID keyfile.ID
	// Hostname and Group are recorded on the server; Group is the device
	// group whose policy applies. Both are required.
	Hostname, Group string
	// Dial makes the device's connections to the key server when it makes
	// the network protector; nil means a net.Dialer. The lab's host-side
	// provisioning reaches a server inside the lab's namespace so.
	Dial keyserver.DialFunc
	// Log receives what Enroll does; nil discards it.
	Log *slog.Logger
}

// Enroll enrolls the device whose TPM is t with the key server, through
// admin (an administrator's client: POST /v1/enroll), and returns its
// provisioning key file, open: keyfile.KindProvisioning, bound to the
// server that enrolment names, with a new random FDE secret of
// securemoment.FDESize bytes and the network protector LabelNetwork. The
// caller stores it (keyfile.Replace) and adds a LUKS2 keyslot for its FDE
// secret (Keyring().FDE), then closes it, which wipes the secret.
//
// The key file's ID is the binding the server records. Its errors are the
// client's (keyserver's sentinels, such as ErrUnreachable and
// ErrUnknownKey) and the TPM's, wrapped with what failed.
func Enroll(ctx context.Context, t *tpm.TPM, admin *keyserver.Client, dev Device) (*keyfile.KeyFile, error) {
	e, binding, err := enroll(ctx, t, admin, &dev)
	if err != nil {
		return nil, err
	}
	f, err := keyfile.New(keyfile.Header{ID: binding, Kind: keyfile.KindProvisioning, DeviceID: e.DeviceID,
		Server: e.Server}, &keyfile.Keyring{FDE: secret.Random(securemoment.FDESize)})
	if err != nil {
		return nil, fmt.Errorf("enroll: provisioning key file: %w", err)
	}
	network := tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: e.Key, Dial: dev.Dial}}
	if _, err := f.AddProtector(ctx, LabelNetwork, network); err != nil {
		f.Close()
		return nil, fmt.Errorf("enroll: provisioning key file: network protector: %w", err)
	}
	return f, nil
}

// Enrollment is a device's enrolment without a provisioning key file.
type Enrollment struct {
	// DeviceID is the device's ID on the server and Server the server,
	// as the user's key file records them (securemoment.Existing).
	DeviceID keyfile.ID
	Server   keyfile.Server
	// Key is the TPM's device key, which the device's client of the key
	// server proves itself with (keyserver.NewClient).
	Key crypto.Signer
}

// EnrollDevice enrolls the device whose TPM is t with the key server
// through admin, as Enroll does, but makes no provisioning key file: for
// a device in use, whose user gets a key file directly
// (securemoment.Existing, pbnctl install). The binding that enrolment
// records is revoked at once, so that the device opens nothing with the
// server's help. Its errors are Enroll's, and RevokeBinding's.
func EnrollDevice(ctx context.Context, t *tpm.TPM, admin *keyserver.Client, dev Device) (*Enrollment, error) {
	e, binding, err := enroll(ctx, t, admin, &dev)
	if err != nil {
		return nil, err
	}
	// TODO: the server insists on a binding at enrolment (enrollV1); an
	// enrolment without one would spare this revocation and its audit
	// record.
	if err := admin.RevokeBinding(ctx, binding); err != nil {
		return nil, fmt.Errorf("enroll: device %s: revoke the unused binding %s: %w", e.DeviceID, binding, err)
	}
	return e, nil
}

// enroll enrolls the device with a new binding, which it returns, and
// fills in dev's defaults.
func enroll(ctx context.Context, t *tpm.TPM, admin *keyserver.Client, dev *Device) (*Enrollment, keyfile.ID, error) {
	d, key, err := describe(ctx, t, dev)
	if err != nil {
		return nil, keyfile.ID{}, err
	}
	binding := keyfile.NewID()
	p, err := admin.Enroll(ctx, d, binding)
	if err != nil {
		return nil, keyfile.ID{}, fmt.Errorf("enroll: device %s: %w", dev.ID, err)
	}
	logger(*dev).Info("device enrolled", "device", dev.ID.String(), "hostname", dev.Hostname,
		"group", dev.Group, "binding", binding.String(), "server", p.Server.URL)
	return &Enrollment{DeviceID: dev.ID, Server: p.Server, Key: key}, binding, nil
}

// describe fills in dev's defaults and returns the device as the server
// records it, with its TPM's device key.
func describe(ctx context.Context, t *tpm.TPM, dev *Device) (store.Device, crypto.Signer, error) {
	if dev.Hostname == "" || dev.Group == "" {
		return store.Device{}, nil, errors.New("enroll: the device needs a hostname and a group")
	}
	if dev.ID.IsZero() {
		dev.ID = keyfile.NewID()
	}
	d, key, err := identity(ctx, t)
	if err != nil {
		return store.Device{}, nil, err
	}
	d.ID, d.Hostname, d.Group = dev.ID, dev.Hostname, dev.Group
	// A TPM's own dictionary-attack settings lock a user out after a few
	// power cuts during sign-ins; a TPM that someone else has taken keeps
	// theirs. Neither stops the enrolment.
	switch err := t.SetDictionaryAttack(ctx, tpm.FleetDictionaryAttack); {
	case errors.Is(err, tpm.ErrLockoutAuthSet):
		logger(*dev).Info("the TPM's dictionary-attack settings are left as they are", "reason", err)
	case err != nil:
		logger(*dev).Warn("the TPM's dictionary-attack settings are left as they are", "err", err)
	}
	return d, key, nil
}

func logger(dev Device) *slog.Logger {
	if dev.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return dev.Log
}

// identity reads what the server knows the device by from its TPM: the
// EK, the SRK and the device key.
func identity(ctx context.Context, t *tpm.TPM) (store.Device, crypto.Signer, error) {
	ek, err := t.EKPublic(ctx)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll: %w", err)
	}
	srk, err := t.SRKPublic(ctx)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll: %w", err)
	}
	key, err := t.DeviceKey(ctx)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll: %w", err)
	}
	spki, err := keyserver.PublicKey(key)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll: device key: %w", err)
	}
	return store.Device{EK: ek, SRK: srk, Key: spki}, key, nil
}
