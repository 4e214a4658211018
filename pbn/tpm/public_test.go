package tpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/pbn-project/pbn/internal/swtpm"
)

// TestPublicKeys checks that the EK and the SRK come out as P-256 keys,
// the same ones from a new connection after a restart, different from each
// other and from another TPM's, and that the SRK's is the key SRKName names.
func TestPublicKeys(t *testing.T) {
	sim := swtpm.Start(t)
	tp := openSim(t, sim)
	ctx := testContext(t)
	ek, err := tp.EKPublic(ctx)
	if err != nil {
		t.Fatalf("EKPublic = %v", err)
	}
	srk, err := tp.SRKPublic(ctx)
	if err != nil {
		t.Fatalf("SRKPublic = %v", err)
	}
	for name, der := range map[string][]byte{"EK": ek, "SRK": srk} {
		pub, err := x509.ParsePKIXPublicKey(der)
		if k, ok := pub.(*ecdsa.PublicKey); err != nil || !ok || k.Curve.Params().Name != "P-256" {
			t.Errorf("%s: %T, %v; want a P-256 ECDSA key", name, pub, err)
		}
	}
	if bytes.Equal(ek, srk) {
		t.Error("the EK and the SRK are the same key")
	}
	name, err := tp.SRKName(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := srkNameOf(t, srk); !bytes.Equal(got, name) {
		t.Errorf("the SRK's key names %x, SRKName = %x", got, name)
	}

	tp.Close()
	sim.Restart(t)
	again := openSim(t, sim)
	if ek2, err := again.EKPublic(ctx); err != nil || !bytes.Equal(ek2, ek) {
		t.Errorf("EKPublic after a restart = %x, %v; want %x", ek2, err, ek)
	}
	other, err := openSim(t, swtpm.Start(t)).EKPublic(ctx)
	if err != nil || bytes.Equal(other, ek) {
		t.Errorf("another TPM's EKPublic = %x, %v; want another key", other, err)
	}
}

// srkNameOf computes the name of the ECC SRK whose public key is der.
func srkNameOf(t *testing.T, der []byte) []byte {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	k := pub.(*ecdsa.PublicKey)
	tmpl := tpm2.ECCSRKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
		Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
	})
	n, err := tpm2.ObjectName(&tmpl)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}
