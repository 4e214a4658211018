package securemoment_test

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// The pre-boot agent puts the secure moment together from the device's
// parts: the ESP mounted at espDir, the LUKS2 volume at luksDev, the TPM,
// the directory client and the provisioning key file's header, which names
// the key server.
func ExampleDevice_Run() {
	ctx := context.Background()
	var (
		espDir, luksDev string
		t               *tpm.TPM
		dir             *ad.Client
		server          keyfile.Server // the provisioning key file's Header().Server
		account         string
		password        secret.Bytes
	)
	cryptsetup, err := disk.Cryptsetup()
	if err != nil {
		return
	}
	key, err := t.DeviceKey(ctx)
	if err != nil {
		return
	}
	client, err := keyserver.NewClient(server.URL, server.PublicKey, key)
	if err != nil {
		return
	}
	d := &securemoment.Device{
		ESP:       keyfile.OSFS{},
		KeyDir:    filepath.Join(espDir, disk.KeyDir),
		Volume:    disk.Keyslots{Cryptsetup: cryptsetup, Dev: luksDev},
		TPM:       t,
		Directory: dir,
		Server:    client,
		Network:   tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: key}},
	}
	res, err := d.Run(ctx, account, password)
	password.Wipe()
	if err != nil {
		fmt.Println(securemoment.Sentence(err))
		return
	}
	defer res.KeyFile.Close()
	// res.KeyFile.Keyring() holds the keys to hand to the OS.
}
