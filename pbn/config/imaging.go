package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// ImagingCAFile, in Dir, holds the CA certificates that issued the imaging
// server's certificate: the HTTPS server of the payload and the boot files.
const ImagingCAFile = "imaging-ca.pem"

// ImagingAdminFile, in Dir, is the key server administrator's file
// (keyserver.AdminFile) that the imaging mode enrolls devices with. Make
// it an enrol-only administrator's (store.RoleEnroll: pbnctl admin add
// --role enroll), whom the key server refuses everything but enrolment:
// anyone who fetches the image from the PXE server has a copy.
//
// TODO: a copy still enrolls devices until an administrator removes its
// key (pbnctl admin remove); an expiry on the credential, or a PXE server
// only on the imaging network, would bound what a copy gives away.
const ImagingAdminFile = "imaging-admin.json"

// DefaultImagingGroup is the device group that imaging enrolls devices
// in when the configuration names none.
const DefaultImagingGroup = "laptops"

// Bounds of Imaging.ESPMiB.
const (
	MinESPMiB = 8
	MaxESPMiB = 4096
)

// Imaging configures the imaging mode (pbn.mode=image, package imaging):
// what the agent that a PXE entry starts writes on a laptop's disk. The
// network boot that brings the agent is not authenticated, so everything
// it fetches comes over HTTPS from a server that ImagingCAFile, in the
// image, authenticates.
type Imaging struct {
	// Payload is the https URL of the OS payload: a raw file system image,
	// written as it is into the LUKS2 volume. pbn.payload= on the kernel
	// command line can name another URL, served under the same CA.
	Payload string `json:"payload"`
	// Kernel and Image are the https URLs of the kernel and the PBN image
	// that imaging installs on the ESP.
	Kernel string `json:"kernel"`
	Image  string `json:"image"`
	// ESPMiB is the ESP's size in MiB, MinESPMiB to MaxESPMiB; zero means
	// imaging.DefaultESPMiB.
	ESPMiB int `json:"esp_mib,omitempty"`
	// Disk is the /dev path of the disk to image; empty means the first
	// fixed disk the kernel found.
	Disk string `json:"disk,omitempty"`
	// Group is the device group on the key server whose policy applies to
	// the devices imaged; empty means DefaultImagingGroup.
	Group string `json:"group,omitempty"`
	// Owner is the account an administrator assigned as the owner of the
	// devices this image images, before their imaging: the key server
	// looks it up in the directory, and imaging writes the owner's key
	// file instead of a provisioning key file (enroll.EnrollOwned). Empty
	// means the owner is not known in advance: the provisioning stage's
	// secure moment makes them one. It is the image's, not the kernel
	// command line's, because a network boot is not authenticated: a
	// rogue PXE server could name anyone. It needs an ImagingAdminFile of
	// the admin role, not an enrol-only one: the key server hands the
	// enrolment the owner's group keys and the enterprise key, so such an
	// image is for a one-off imaging on a network of the administrator's,
	// not for a PXE server that anyone can fetch from.
	Owner string `json:"owner,omitempty"`
	// Overwrite allows imaging a disk that holds data: a partition table,
	// a file system or a LUKS header, or a finished PBN installation.
	// Without it such a disk is left alone.
	Overwrite bool `json:"overwrite,omitempty"`

	// ca is the content of ImagingCAFile.
	ca []byte
}

func (m *Imaging) check() error {
	for name, u := range map[string]string{"payload": m.Payload, "kernel": m.Kernel, "image": m.Image} {
		if err := checkHTTPS(u); err != nil {
			return fmt.Errorf("imaging: %s: %w", name, err)
		}
	}
	if m.ESPMiB != 0 && (m.ESPMiB < MinESPMiB || m.ESPMiB > MaxESPMiB) {
		return fmt.Errorf("imaging: esp_mib %d, want %d to %d", m.ESPMiB, MinESPMiB, MaxESPMiB)
	}
	if len(m.Group) > 64 || strings.ContainsFunc(m.Group, unicode.IsControl) {
		return fmt.Errorf("imaging: group %q, want at most 64 characters without control characters", m.Group)
	}
	if len(m.Owner) > 256 || strings.ContainsFunc(m.Owner, unicode.IsControl) {
		return fmt.Errorf("imaging: owner %q, want at most 256 characters without control characters", m.Owner)
	}
	if m.Disk != "" && (!strings.HasPrefix(m.Disk, "/dev/") || strings.Contains(m.Disk, "..")) {
		return fmt.Errorf("imaging: disk %q, want a /dev path", m.Disk)
	}
	return nil
}

// checkHTTPS checks an https URL with a host.
func checkHTTPS(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return fmt.Errorf("%q is not an https URL with a host", s)
	}
	return nil
}

// HasImaging says whether the configuration has an imaging section.
func (c *Config) HasImaging() bool { return c.Imaging != nil }

// ImagingTLS returns the TLS configuration of the imaging server's
// connections: its certificate must chain to ImagingCAFile's CAs, checked
// at now (the agent's clock, no earlier than the image's build time). It
// fails when the configuration has no imaging section or the CA file
// holds no certificate.
func (c *Config) ImagingTLS(now func() time.Time) (*tls.Config, error) {
	if c.Imaging == nil {
		return nil, errors.New("config: no imaging section")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.Imaging.ca) {
		return nil, fmt.Errorf("config: %s holds no PEM certificate", ImagingCAFile)
	}
	return &tls.Config{RootCAs: pool, Time: now, MinVersion: tls.VersionTLS12}, nil
}
