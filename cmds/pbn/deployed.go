package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// deployed is the deployed stage: a user's key file opens with the TPM and
// the user's password together, or with a password alone.
//
// TODO: this is the provisioning branch's stand-in, so that a device whose
// secure moment is done opens for its user; the deployed stage's own
// (online checks against AD and the key server, the offline limit,
// recovery, further users) replaces this file.
func (a *agent) deployed(ctx context.Context) (*keyfile.KeyFile, error) {
	var files []*keyfile.KeyFile
	for _, f := range a.files {
		if k := f.Header().Kind; k == keyfile.KindUser || k == keyfile.KindAdministrator {
			files = append(files, f)
		}
	}
	return disk.Unlock(ctx, []disk.Unlocker{
		&tpmPasswordUnlocker{a: a},
		&disk.PasswordUnlocker{Console: a.con, Tries: a.cmdline.PBN.Tries, Typed: a.timing.Exclude},
	}, files)
}

// tpmPasswordUnlocker opens the key file whose protector takes the TPM and
// the password together, as the secure moment makes them.
type tpmPasswordUnlocker struct{ a *agent }

func (*tpmPasswordUnlocker) Name() string { return "tpm and password" }

func (u *tpmPasswordUnlocker) Unlock(ctx context.Context, files []*keyfile.KeyFile) (*keyfile.KeyFile, error) {
	var candidates []*keyfile.KeyFile
	for _, f := range files {
		if hasTPMPassword(f) {
			candidates = append(candidates, f)
		}
	}
	if len(candidates) == 0 {
		return nil, disk.ErrNotApplicable
	}
	t, err := u.a.openTPM(ctx)
	if err != nil {
		return nil, err
	}
	prompt := "Enter password: "
	if len(candidates) == 1 {
		prompt = fmt.Sprintf("Enter password for %s: ", describe(candidates[0]))
	}
	var opened *keyfile.KeyFile
	took, err := u.a.con.Ask(prompt, disk.WrongPassword, u.a.cmdline.PBN.Tries, func(pw secret.Bytes) error {
		for _, f := range candidates {
			err := f.Open(ctx, keyfile.Password(pw), tpm.NewFactor(t, nil, pw))
			if err == nil {
				opened = f
				return nil
			}
			if !errors.Is(err, keyfile.ErrWrongPassword) {
				return err
			}
		}
		return console.ErrWrong
	})
	u.a.timing.Exclude(took)
	return opened, err
}

func hasTPMPassword(f *keyfile.KeyFile) bool {
	for _, p := range f.Protectors() {
		if ts := slices.Sorted(slices.Values(p.Factors)); slices.Equal(ts,
			[]keyfile.FactorType{keyfile.FactorPassword, keyfile.FactorTPM}) {
			return true
		}
	}
	return false
}
