package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// The stages' helpers for what the enterprise gave the device: the TPM
// and its device key, the image's configuration with the domain, and the
// key server that a key file names.

// tpmDevices are the TPM's device nodes, the kernel's resource manager
// first.
var tpmDevices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// tpmPoll is how often the TPM's device node is looked for while its
// driver (tpm_tis, tpm_crb) loads in the coldplug.
const tpmPoll = 20 * time.Millisecond

// errNoTPM says the TPM's device node did not appear in time.
var errNoTPM = errors.New("no TPM device (/dev/tpmrm0 or /dev/tpm0)")

// openTPM opens the TPM once, waiting up to pbn.devtimeout= for its
// driver to bind. closeTPM closes it.
func (a *agent) openTPM(ctx context.Context) (*tpm.TPM, error) {
	if a.tpm == nil {
		t, err := a.connectTPM(ctx)
		if err != nil {
			return nil, err
		}
		a.tpm = t
	}
	return a.tpm, nil
}

// connectTPM opens the first TPM device node that appears, and keeps its
// transport in tpmTr for what reads the TPM directly (its clock).
func (a *agent) connectTPM(ctx context.Context) (*tpm.TPM, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cmdline.PBN.DeviceTimeout)
	defer cancel()
	for {
		for _, dev := range tpmDevices {
			if _, err := os.Stat(dev); err != nil {
				continue
			}
			tr, err := linuxtpm.Open(dev)
			if err != nil {
				return nil, fmt.Errorf("tpm: %w", err)
			}
			a.tpmTr = tr
			return tpm.New(tr, &tpm.Options{Logger: a.log}), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", errNoTPM, ctx.Err())
		case <-time.After(tpmPoll):
		}
	}
}

// closeTPM closes the TPM, which flushes the device key.
func (a *agent) closeTPM() {
	if a.tpm != nil {
		a.tpm.Close()
		a.tpmTr.Close()
		a.tpm, a.tpmTr, a.deviceKey = nil, nil, nil
	}
}

// devKey returns the TPM's device key, by which the key server knows this
// device, until closeTPM.
func (a *agent) devKey(ctx context.Context) (crypto.Signer, error) {
	if a.deviceKey != nil {
		return a.deviceKey, nil
	}
	t, err := a.openTPM(ctx)
	if err != nil {
		return nil, err
	}
	k, err := t.DeviceKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	a.deviceKey = k
	return k, nil
}

// networkFactor returns the provisioning key file's network factor in PBN
// mode: the key server that the key file names and pins, the device
// authenticated by its TPM-held key. Nothing the network says (DHCP, DNS)
// chooses the server.
func (a *agent) networkFactor(ctx context.Context) (keyfile.Factor, error) {
	k, err := a.devKey(ctx)
	if err != nil {
		return nil, err
	}
	return tang.Factor{Curve: keyserver.PBNCurve, Transport: &keyserver.Transport{Key: k}}, nil
}

// keyServer returns a client of the key server that a key file names,
// authenticated by the device key.
func (a *agent) keyServer(ctx context.Context, srv keyfile.Server) (*keyserver.Client, error) {
	k, err := a.devKey(ctx)
	if err != nil {
		return nil, err
	}
	return keyserver.NewClient(srv.URL, srv.PublicKey, k)
}

// loadConfig reads the image's configuration (/etc/pbn) once.
func (a *agent) loadConfig() (*config.Config, error) {
	if a.config != nil {
		return a.config, nil
	}
	c, err := config.Load(config.Dir)
	if err != nil {
		return nil, err
	}
	a.config = c
	return c, nil
}

// trusted returns the key files bound to the key server that the image's
// configuration pins (all of them when it pins none) and closes the
// others: the ESP is not encrypted, and a key file planted there must not
// make the agent send a user's password to a server of someone else's.
func (a *agent) trusted(files []*keyfile.KeyFile) ([]*keyfile.KeyFile, error) {
	c, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	var kept []*keyfile.KeyFile
	for _, f := range files {
		if h := f.Header(); !c.Trusts(h.Server) {
			a.log.Warn("key file skipped: bound to a key server the image does not pin",
				"id", h.ID.String(), "server", h.Server.URL)
			a.say("keyfiles: %s skipped: it names a key server this computer does not know", h.ID)
			f.Close()
			continue
		}
		kept = append(kept, f)
	}
	return kept, nil
}

// errNoDomain says the image's configuration names no domain.
var errNoDomain = errors.New("the image's configuration names no domain")

// directory returns the Active Directory client of the image's
// configuration, with the agent's clock (now).
func (a *agent) directory() (*ad.Client, error) {
	c, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	if !c.HasAD() {
		return nil, errNoDomain
	}
	cfg, err := c.ADConfig(a.now)
	if err != nil {
		return nil, err
	}
	cfg.Logger = a.log
	return ad.New(cfg)
}

// noDirectory refuses every sign-in: the image knows no domain.
type noDirectory struct{ err error }

func (d noDirectory) Login(context.Context, string, secret.Bytes) (*ad.Identity, error) {
	return nil, d.err
}

// now is the agent's clock for certificate validity: the real-time clock,
// but never earlier than the newest key file's creation. The clock is not
// trusted in pre-boot: a laptop whose battery died starts in the past,
// where a certificate that expired before this device was set up would
// look valid. The key files' headers are not authenticated before they
// open, but a changed one can only move the clock forward, which makes
// certificates look expired, never the other way.
// TODO: the image's build time and the last time a key server said are
// better floors; the image does not carry its build time yet.
func (a *agent) now() time.Time {
	now := time.Now()
	for _, f := range a.files {
		if c := f.Header().Created; c.After(now) {
			now = c
		}
	}
	return now
}
