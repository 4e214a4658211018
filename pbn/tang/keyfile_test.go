package tang

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// TestKeyFileProtector: a provisioning key file with a network protector,
// bound to Debian's tangd, opens after a round trip through its encoded
// form, and does not open once tangd's keys are gone.
func TestKeyFileProtector(t *testing.T) {
	dir, pin := tangdKeys(t)
	url := startTangd(t, dir)
	h := *header(url, pin)
	fde := secret.Random(32)
	f, err := keyfile.New(h, &keyfile.Keyring{FDE: fde.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddProtector(testContext(t), "network", Factor{}); err != nil {
		t.Fatalf("AddProtector(network) = %v", err)
	}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	g, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Open(testContext(t), Factor{}); err != nil {
		t.Fatalf("Open(network) = %v", err)
	}
	if !g.Keyring().FDE.Equal(fde) {
		t.Errorf("Open(network) opened a keyring with another FDE key")
	}
	g.Close()

	// Retire the exchange key the protector is bound to: tangd loads its
	// keys at every connection, so the next exchange is refused.
	g, _ = keyfile.Parse(b)
	p, err := parseParams(g.Protectors()[0].Params[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, p.key.ID+".jwk")); err != nil {
		t.Fatal(err)
	}
	if err := g.Open(testContext(t), Factor{}); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Open(network) after the exchange key was removed = %v, want ErrUnknownKey", err)
	}
}
