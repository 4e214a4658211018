package main

import (
	"testing"

	"github.com/pbn-project/pbn/keyfile"
)

func TestMadeFor(t *testing.T) {
	tests := []struct {
		kind keyfile.Kind
		want string
	}{
		{keyfile.KindUser, "this computer is now alice@corp.example's"},
		{keyfile.KindAdministrator,
			"alice@corp.example installed this computer; the first user to sign in becomes its owner"},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			f, err := keyfile.New(keyfile.Header{ID: keyfile.NewID(), Kind: tt.kind, DeviceID: keyfile.NewID(),
				UPN: "alice@corp.example"}, &keyfile.Keyring{FDE: []byte("fde")})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := madeFor(f); got != tt.want {
				t.Errorf("madeFor(%s key file) = %q, want %q", tt.kind, got, tt.want)
			}
		})
	}
}
