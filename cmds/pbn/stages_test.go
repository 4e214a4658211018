package main

import (
	"errors"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
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
