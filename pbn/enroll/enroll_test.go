package enroll

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/kstest"
	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// testTimeout bounds each test's work with the real components.
const testTimeout = 2 * time.Minute

// server starts a key server on loopback, with no directory, and returns
// its administrator's client.
func server(t *testing.T) *keyserver.Client { return kstest.Start(t, nil).Admin }

// openTPM starts a swtpm and opens it until the test ends.
func openTPM(t *testing.T) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(context.Background(), swtpm.Start(t).Path(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// TestEnroll enrolls a device and checks what the server recorded and
// what the provisioning key file holds: it opens with the network factor
// and the device's TPM key to the same FDE secret, and no longer once the
// device is marked lost. It does not prove that the TPM's key cannot be
// used by other software on the same machine: anyone with the TPM can make
// it.
func TestEnroll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	admin := server(t)
	tp := openTPM(t)

	f, err := Enroll(ctx, tp, admin, Device{Hostname: "laptop-1", Group: "laptops"})
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	defer f.Close()
	h := f.Header()
	if h.Kind != keyfile.KindProvisioning || h.UPN != "" || h.Server.URL == "" || len(h.Server.PublicKey) == 0 {
		t.Errorf("header = %+v, want a provisioning key file bound to the server", h)
	}
	fde := f.Keyring().FDE
	if len(fde) != securemoment.FDESize || bytes.Equal(fde, make([]byte, len(fde))) {
		t.Errorf("FDE secret of %d bytes, want %d random ones", len(fde), securemoment.FDESize)
	}
	ps := f.Protectors()
	if len(ps) != 1 || ps[0].Label != LabelNetwork || !slices.Equal(ps[0].Factors, []keyfile.FactorType{keyfile.FactorNetwork}) {
		t.Errorf("protectors = %+v, want one network protector", ps)
	}

	info, err := admin.Device(ctx, h.DeviceID)
	if err != nil {
		t.Fatalf("Device(%s) = %v", h.DeviceID, err)
	}
	if info.Hostname != "laptop-1" || info.Group != "laptops" || info.State != store.DeviceActive {
		t.Errorf("Device = %+v, want laptop-1 in laptops, active", info)
	}

	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tp.DeviceKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	network := tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: key}}
	if opened := reopen(t, ctx, b, network); !bytes.Equal(opened, fde) {
		t.Error("Open(network) gave another FDE secret than the enrolled one")
	}

	if err := admin.SetDeviceState(ctx, h.DeviceID, store.DeviceLost, "test"); err != nil {
		t.Fatal(err)
	}
	g, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Open(ctx, network); !errors.Is(err, keyserver.ErrDeviceLost) {
		t.Errorf("Open(network) of a lost device = %v, want %v", err, keyserver.ErrDeviceLost)
	}
}

// reopen parses the key file b, opens it with factors and returns its FDE
// secret.
func reopen(t *testing.T, ctx context.Context, b []byte, factors ...keyfile.Factor) secret.Bytes {
	t.Helper()
	g, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	if err := g.Open(ctx, factors...); err != nil {
		t.Fatalf("Open = %v", err)
	}
	return g.Keyring().FDE
}

// TestEnrollOtherTPM checks that another device's TPM cannot open the
// provisioning key file: the server knows the device by its TPM's key.
func TestEnrollOtherTPM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	admin := server(t)
	f, err := Enroll(ctx, openTPM(t), admin, Device{Hostname: "laptop-2", Group: "laptops"})
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	defer f.Close()
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	other, err := openTPM(t).DeviceKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	network := tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: other}}
	if err := g.Open(ctx, network); !errors.Is(err, keyserver.ErrUnknownKey) {
		t.Errorf("Open(network) with another TPM's key = %v, want %v", err, keyserver.ErrUnknownKey)
	}
}

// TestEnrollRefused checks the errors of a device without a hostname and
// of a client that is no administrator's.
func TestEnrollRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	admin := server(t)
	tp := openTPM(t)
	if _, err := Enroll(ctx, tp, admin, Device{Group: "laptops"}); err == nil {
		t.Error("Enroll without a hostname = nil, want an error")
	}
	f, err := Enroll(ctx, tp, admin, Device{Hostname: "laptop-3", Group: "laptops"})
	if err != nil {
		t.Fatal(err)
	}
	srv := f.Header().Server
	f.Close()
	stranger, err := keyserver.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := keyserver.NewClient(srv.URL, srv.PublicKey, stranger)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := Enroll(ctx, tp, c, Device{Hostname: "laptop-4", Group: "laptops"}); !errors.Is(err, keyserver.ErrUnknownKey) {
		t.Errorf("Enroll by a stranger = %v, want %v", err, keyserver.ErrUnknownKey)
	}
}

// TestEnrollDevice enrolls a device without a provisioning key file: the
// server lists it, its device key is the TPM's, and the server knows the
// device by that key (a claim is refused only for want of a directory,
// not as a stranger's). It does not prove that the revoked binding opens
// nothing: pbn/keyserver's tests prove that of revoked bindings.
func TestEnrollDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	admin := server(t)
	tp := openTPM(t)

	e, err := EnrollDevice(ctx, tp, admin, Device{Hostname: "in-use-1", Group: "laptops"})
	if err != nil {
		t.Fatalf("EnrollDevice = %v", err)
	}
	info, err := admin.Device(ctx, e.DeviceID)
	if err != nil {
		t.Fatalf("Device(%s) = %v", e.DeviceID, err)
	}
	if info.Hostname != "in-use-1" || info.Group != "laptops" || info.State != store.DeviceActive {
		t.Errorf("Device = %+v, want in-use-1 in laptops, active", info)
	}
	key, err := tp.DeviceKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := keyserver.PublicKey(e.Key)
	want, _ := keyserver.PublicKey(key)
	if !bytes.Equal(got, want) {
		t.Error("Enrollment.Key is not the TPM's device key")
	}

	c, err := keyserver.NewClient(e.Server.URL, e.Server.PublicKey, e.Key)
	if err != nil {
		t.Fatalf("NewClient(Enrollment.Server) = %v", err)
	}
	defer c.CloseIdleConnections()
	_, err = c.Claim(ctx, keyserver.ClaimRequest{Account: "alice", Password: secret.Bytes("pw"),
		KeyFile: keyfile.NewID(), RecoveryKey: secret.Bytes("1")})
	if !errors.Is(err, keyserver.ErrUnavailable) {
		t.Errorf("Claim by the enrolled device on a server without a directory = %v, want %v",
			err, keyserver.ErrUnavailable)
	}

	if _, err := EnrollDevice(ctx, tp, admin, Device{Group: "laptops"}); err == nil {
		t.Error("EnrollDevice without a hostname = nil, want an error")
	}
}
