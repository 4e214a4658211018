package enroll

import (
	"context"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/securemoment"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// EnrollOwned enrolls the device whose TPM is t with the key server
// through admin, owned from the start by account, whom an administrator
// assigned to it before its imaging (keyserver.Client.EnrollOwned: the
// server looks the account up in the directory and records them as the
// device's primary owner). It returns the owner's key file, open, and
// makes no provisioning key file: the device skips the provisioning
// stage.
//
// The key file is keyfile.KindUser, the owner's, with a new random FDE
// secret, their group keys and the enterprise key, and one protector
// alone: a recovery key (securemoment.LabelRecovery) that the server keeps
// in escrow under the owner. Imaging cannot have the owner's password, so
// the key file has no TPM and password protector yet, and nothing opens
// it without the server: at the owner's first sign-in, which must be
// online, the server checks their password with the directory and hands
// the escrowed recovery key to the device, which seals the key file to
// the TPM and that password (pbn/signin). Until then the key file on the
// ESP is worth what the recovery key is, which only the server and the
// administrators it lets read escrows hold.
//
// The caller stores the key file (keyfile.Replace) under the owner's
// objectSid (Header().SID + keyfile.Ext, as the secure moment names
// it) and adds a LUKS2 keyslot for its FDE secret, then closes it. Its
// errors are EnrollOwned's (keyserver.ErrUnknownAccount, ErrNotAllowed,
// ErrUnavailable) and Enroll's.
func EnrollOwned(ctx context.Context, t *tpm.TPM, admin *keyserver.Client, dev Device,
	account string) (*keyfile.KeyFile, error) {
	d, _, err := describe(ctx, t, &dev)
	if err != nil {
		return nil, err
	}
	kf, rk := keyfile.NewID(), keyfile.NewRecoveryKey()
	defer rk.Wipe()
	digits := rk.Digits()
	defer digits.Wipe()
	p, err := admin.EnrollOwned(ctx, d, keyserver.Owner{Account: account, KeyFile: kf, RecoveryKey: digits})
	if err != nil {
		return nil, fmt.Errorf("enroll: device %s owned by %s: %w", dev.ID, account, err)
	}
	o := p.Owner
	defer o.Wipe()
	logger(dev).Info("device enrolled", "device", dev.ID.String(), "hostname", dev.Hostname,
		"group", dev.Group, "owner", o.UPN, "key_file", kf.String(), "server", p.Server.URL)

	ring := &keyfile.Keyring{FDE: secret.Random(securemoment.FDESize), Enterprise: o.Enterprise.Clone()}
	for _, g := range o.Groups {
		ring.Groups = append(ring.Groups, keyfile.GroupKey{SID: g.SID, Name: g.Name, Key: g.Key.Clone()})
	}
	f, err := keyfile.New(keyfile.Header{ID: kf, Kind: keyfile.KindUser, DeviceID: dev.ID, UPN: o.UPN,
		SID: o.SID, Server: p.Server, OfflineLimit: o.Policy.OfflineLimit}, ring)
	if err != nil {
		ring.Wipe()
		return nil, fmt.Errorf("enroll: %s's key file: %w", o.UPN, err)
	}
	if _, err := f.AddProtector(ctx, securemoment.LabelRecovery, keyfile.Recovery(rk)); err != nil {
		f.Close()
		return nil, fmt.Errorf("enroll: %s's key file: recovery protector: %w", o.UPN, err)
	}
	return f, nil
}
