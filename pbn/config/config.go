// Package config reads the pre-boot agent's configuration: what the image
// knows about the enterprise before it has read any key file.
//
// The image holds it in /etc/pbn (initramfs.ConfigDir): pbn.conf, a JSON
// object (see Config), and ca.pem, the CA certificates that issued the
// domain controllers' certificates; with an imaging section, imaging-ca.pem
// too (see Imaging); with a change account, ad-change-password too.
//
// Each key file names its key server and pins its key, but the ESP that
// holds the key files is not encrypted: a key file planted there could
// name a server of someone else's, to which the secure moment and the
// sign-in would send the user's password. The keyserver entry pins the
// enterprise's server in the image, which Secure Boot can vouch for, and
// the agent then uses only key files bound to it (Trusts).
//
// An example:
//
//	{
//	  "version": 1,
//	  "ad": {"domain": "corp.example.test", "dcs": ["ldaps://dc1.corp.example.test"]},
//	  "keyserver": {"url": "https://pbnd.corp.example.test:8443", "public_key": "MFkwEwYHKoZI..."},
//	  "autoboot": {"countdown": "5s"}
//	}
package config

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Dir is where the image keeps the configuration.
const Dir = "/etc/pbn"

// File names inside Dir.
const (
	ConfigFile = "pbn.conf"
	CAFile     = "ca.pem"
	// ChangePasswordFile holds AD.ChangeAccount's password, one line.
	ChangePasswordFile = "ad-change-password"
)

// maxAccount bounds AD.ChangeAccount.
const maxAccount = 256

// Version is the configuration format this package reads.
const Version = 1

// MaxSize bounds pbn.conf and ca.pem: both are a few kilobytes.
const MaxSize = 64 << 10

// DefaultCountdown is how long the sign-in prompt waits before an
// unattended boot when the configuration gives no countdown.
const DefaultCountdown = 5 * time.Second

// MaxCountdown bounds the countdown: a laptop that waits longer than this
// for nobody is broken, not patient.
const MaxCountdown = 10 * time.Minute

// Config is the agent's configuration.
type Config struct {
	// Version is Version.
	Version int `json:"version"`
	// AD is the domain that users sign in to; a zero AD means the image
	// knows no domain, and only key files that need none open.
	AD AD `json:"ad"`
	// KeyServer, when present, is the only key server that the agent's
	// key files may be bound to.
	KeyServer *KeyServer `json:"keyserver,omitempty"`
	// Autoboot says how the provisioning stage boots unattended.
	Autoboot Autoboot `json:"autoboot"`
	// Imaging, when present, configures the imaging mode.
	Imaging *Imaging `json:"imaging,omitempty"`
}

// AD names the Active Directory domain and its domain controllers.
type AD struct {
	// Domain is the domain's DNS name.
	Domain string `json:"domain,omitempty"`
	// DCs are the domain controllers' URLs (ldaps:// or ldap:// with
	// StartTLS), tried in order; empty means DNS SRV lookup.
	DCs []string `json:"dcs,omitempty"`
	// LDAPS reaches DCs found in DNS by LDAPS.
	LDAPS bool `json:"ldaps,omitempty"`
	// ChangeAccount is the account that the prompt binds as to change a
	// user's expired password (ad.Config.ChangeAccount), as name@domain
	// or DOMAIN\name; its password is the file ChangePasswordFile. Any
	// ordinary account of the domain will do, and should: AD lets every
	// authenticated account send a change that carries the old password,
	// and the image holding its password gives a copy of the image no
	// more than that account's rights. Empty: the prompt tells people
	// whose password has expired to change it elsewhere.
	ChangeAccount string `json:"change_account,omitempty"`

	// ca is the content of ca.pem; changePassword of ChangePasswordFile.
	ca             []byte
	changePassword secret.Bytes
}

// KeyServer pins the enterprise key server as keyfile.Server does.
type KeyServer struct {
	// URL is the server's base address, as key files name it.
	URL string `json:"url"`
	// PublicKey is the DER SubjectPublicKeyInfo of the server's key,
	// base64 in JSON (pbnctl tang show prints it as PEM).
	PublicKey []byte `json:"public_key"`
}

// Trusts says whether a key file bound to s may be used: always when the
// configuration pins no key server, otherwise only when s is the pinned one
// (a key file bound to no server, such as a password-only one, sends
// nothing anywhere and is trusted too).
func (c *Config) Trusts(s keyfile.Server) bool {
	if c.KeyServer == nil || s.URL == "" {
		return true
	}
	return s.URL == c.KeyServer.URL && bytes.Equal(s.PublicKey, c.KeyServer.PublicKey)
}

// Autoboot configures the unattended boot of the provisioning stage.
type Autoboot struct {
	// Countdown is how long the sign-in prompt is shown, counting down,
	// before the unattended boot; zero means DefaultCountdown. A person
	// who presses a key in that time signs in instead.
	Countdown Duration `json:"countdown,omitzero"`
}

// Duration is a time.Duration written as a string such as "5s".
type Duration time.Duration

// MarshalJSON writes d as a string such as "5s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a string such as "5s" or "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`a duration is a string such as "5s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Load reads the configuration in dir (Dir in the image). A missing
// pbn.conf is not an error: the configuration is then the zero one, which
// knows no domain.
func Load(dir string) (*Config, error) {
	b, err := readFile(filepath.Join(dir, ConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return &Config{Version: Version}, nil
	}
	if err != nil {
		return nil, err
	}
	c, err := Parse(b)
	if err != nil {
		return nil, err
	}
	if c.AD.Domain != "" {
		if c.AD.ca, err = readFile(filepath.Join(dir, CAFile)); err != nil {
			return nil, fmt.Errorf("config: the domain controllers' CA: %w", err)
		}
	}
	if c.AD.ChangeAccount != "" {
		pw, err := readFile(filepath.Join(dir, ChangePasswordFile))
		if err != nil {
			return nil, fmt.Errorf("config: the change account's password: %w", err)
		}
		c.AD.changePassword = secret.Bytes(bytes.TrimRight(pw, "\r\n"))
		if len(c.AD.changePassword) == 0 {
			return nil, fmt.Errorf("config: %s is empty", ChangePasswordFile)
		}
	}
	if c.Imaging != nil {
		if c.Imaging.ca, err = readFile(filepath.Join(dir, ImagingCAFile)); err != nil {
			return nil, fmt.Errorf("config: the imaging server's CA: %w", err)
		}
	}
	return c, nil
}

// readFile reads at most MaxSize bytes of a file.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, MaxSize)
	}
	return b, nil
}

// Parse reads pbn.conf strictly: an unknown field, a second JSON value or
// a value out of range is an error that names it.
func Parse(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %s: %w", ConfigFile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("config: %s: more than one JSON value", ConfigFile)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("config: %s: %w", ConfigFile, err)
	}
	return &c, nil
}

func (c *Config) check() error {
	if c.Version != Version {
		return fmt.Errorf("version %d, want %d", c.Version, Version)
	}
	if c.AD.Domain == "" && (len(c.AD.DCs) > 0 || c.AD.LDAPS || c.AD.ChangeAccount != "") {
		return errors.New("ad: domain controllers or a change account without a domain")
	}
	if len(c.AD.ChangeAccount) > maxAccount {
		return fmt.Errorf("ad: change_account longer than %d bytes", maxAccount)
	}
	if k := c.KeyServer; k != nil {
		if u, err := url.Parse(k.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("keyserver: url %q, want https://HOST[:PORT]", k.URL)
		}
		if _, err := x509.ParsePKIXPublicKey(k.PublicKey); err != nil {
			return fmt.Errorf("keyserver: public_key: %w", err)
		}
	}
	if cd := time.Duration(c.Autoboot.Countdown); cd < 0 || cd > MaxCountdown {
		return fmt.Errorf("autoboot: countdown %v, want 0 to %v", cd, MaxCountdown)
	}
	if c.Imaging != nil {
		return c.Imaging.check()
	}
	return nil
}

// Countdown returns the autoboot countdown.
func (c *Config) Countdown() time.Duration {
	if c.Autoboot.Countdown == 0 {
		return DefaultCountdown
	}
	return time.Duration(c.Autoboot.Countdown)
}

// HasAD says whether the configuration names a domain.
func (c *Config) HasAD() bool { return c.AD.Domain != "" }

// ADConfig returns the configuration of package ad for the domain, with
// now as the clock (the agent's, no earlier than the image's build time).
// It fails when the configuration names no domain or ad.New would refuse
// it.
func (c *Config) ADConfig(now func() time.Time) (ad.Config, error) {
	if !c.HasAD() {
		return ad.Config{}, errors.New("config: no Active Directory domain configured")
	}
	return ad.Config{Domain: c.AD.Domain, DCs: c.AD.DCs, LDAPS: c.AD.LDAPS, CA: c.AD.ca, Now: now,
		ChangeAccount: c.AD.ChangeAccount, ChangeAccountPassword: c.AD.changePassword}, nil
}

// ChangesPasswords says whether the prompt can change an expired
// password: the configuration names a change account.
func (c *Config) ChangesPasswords() bool { return c.AD.ChangeAccount != "" }
