package tpm

import (
	"context"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/swtpm"
	"github.com/pbn-project/pbn/pbn/secret"
)

// testTimeout bounds each test's use of the TPM.
const testTimeout = time.Minute

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openSim opens the TPM of sim and closes it when the test ends.
func openSim(t testing.TB, sim *swtpm.Sim) *TPM {
	t.Helper()
	tp, err := Open(sim.Path(), nil)
	if err != nil {
		t.Fatalf("Open(%q) = %v", sim.Path(), err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

func TestSealRoundTrip(t *testing.T) {
	ctx := testContext(t)
	tp := openSim(t, swtpm.Start(t))
	data := secret.Random(32)
	auth := secret.Random(32)

	s, err := tp.Seal(ctx, DefaultPCRs, auth, data)
	if err != nil {
		t.Fatalf("Seal = %v", err)
	}
	got, err := tp.Unseal(ctx, s, auth)
	if err != nil {
		t.Fatalf("Unseal = %v", err)
	}
	if !got.Equal(data) {
		t.Errorf("Unseal returned another secret than was sealed")
	}
	_, err = tp.Unseal(ctx, s, secret.Random(32))
	t.Logf("wrong: %v", err)
	_, err = tp.Unseal(ctx, s, secret.Random(32))
	t.Logf("wrong: %v / %s", err, Prompt(err))
}
