package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
)

func TestChooseStage(t *testing.T) {
	tests := []struct {
		name  string
		kinds []keyfile.Kind
		want  string
	}{
		{"provisioning", []keyfile.Kind{keyfile.KindProvisioning}, "provisioning"},
		{"cut short", []keyfile.Kind{keyfile.KindUser, keyfile.KindProvisioning}, "provisioning"},
		{"user", []keyfile.Kind{keyfile.KindUser}, "deployed"},
		{"administrator and user", []keyfile.Kind{keyfile.KindAdministrator, keyfile.KindUser}, "deployed"},
		{"none", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []*keyfile.KeyFile
			for _, k := range tt.kinds {
				f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: k, DeviceID: keyfile.NewID()},
					&keyfile.Keyring{FDE: []byte("fde")})
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				files = append(files, f)
			}
			i, err := chooseStage(files)
			if tt.want == "" {
				if !errors.Is(err, disk.ErrNoKeyFiles) {
					t.Errorf("chooseStage = %d, %v, want disk.ErrNoKeyFiles", i, err)
				}
				return
			}
			if err != nil || stages[i].name != tt.want {
				t.Errorf("chooseStage = %d, %v, want the %s stage", i, err, tt.want)
			}
		})
	}
}

// TestTrusted keeps the key files bound to the pinned key server, and
// those bound to none, and closes a planted one that names another.
func TestTrusted(t *testing.T) {
	pinned := keyfile.Server{URL: "https://pbnd.lab:8443", PublicKey: spki(t)}
	planted := keyfile.Server{URL: "https://pbnd.evil:8443", PublicKey: spki(t)}
	var files []*keyfile.KeyFile
	for _, s := range []keyfile.Server{pinned, {}, planted} {
		f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: keyfile.KindProvisioning,
			DeviceID: keyfile.NewID(), Server: s}, &keyfile.Keyring{FDE: []byte("fde")})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	a := newAgent(time.Now())
	a.con = console.New(strings.NewReader(""), io.Discard)
	a.config = &config.Config{Version: config.Version,
		KeyServer: &config.KeyServer{URL: pinned.URL, PublicKey: pinned.PublicKey}}
	kept, err := a.trusted(files)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != 2 || kept[0] != files[0] || kept[1] != files[1] {
		t.Errorf("trusted kept %d key files, want the pinned server's and the one without a server", len(kept))
	}
	if files[2].IsOpen() || !files[0].IsOpen() {
		t.Error("the planted key file was not closed, or a kept one was")
	}
}

// spki returns the DER SubjectPublicKeyInfo of a new key.
func spki(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
