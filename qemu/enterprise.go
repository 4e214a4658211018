package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/u-root/mkuimage/cpio"

	"github.com/pbn-project/pbn/internal/netns"
	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/enroll"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// The enterprise's addresses and ports on the lab LAN.
var (
	// DCAddr is the Active Directory domain controller's address, a
	// second address of the bridge.
	DCAddr = netip.MustParseAddr("10.99.0.2")
	// KeyServerAddr is where pbnd's TLS API listens.
	KeyServerAddr = netip.AddrPortFrom(Gateway, 8443)
	// TangAddr is where pbnd speaks Tang's protocol over plain HTTP.
	TangAddr = netip.AddrPortFrom(Gateway, 80)
)

// Defaults of the enterprise.
const (
	// DefaultKeyServerWait bounds the wait for a started pbnd to answer.
	DefaultKeyServerWait = 30 * time.Second
	// DefaultCountdown is the autoboot countdown of the lab's image.
	DefaultCountdown = 3 * time.Second
	// ProvisioningFile is the provisioning key file's name on the ESP,
	// under disk.KeyDir.
	ProvisioningFile = "provisioning" + keyfile.Ext
)

// Enterprise is the enterprise's services on a lab's LAN: a Samba AD
// domain controller on DCAddr and the key server pbnd on KeyServerAddr,
// checking claims against that DC. The lab stops them at Close.
type Enterprise struct {
	Lab *Lab
	// DC is the domain controller; its CA issued its certificate, whose
	// names are DC.Host and DCAddr.
	DC *samba.DC
	// KeyServer is pbnd's TLS API's URL, the one key files are bound to.
	KeyServer string
	// Admin is pbnd's first administrator's client, usable from this
	// process: its connections are made inside the lab's namespace.
	Admin *keyserver.Client

	serverKey []byte // pbnd's, as key files and the image pin it

	mu     sync.Mutex
	groups map[string]bool // made on the DC
}

// EnterpriseOptions configure StartEnterprise.
type EnterpriseOptions struct {
	// PBND is the pbnd binary (BuildPBND makes one). Required.
	PBND string
}

// BuildPBND builds pbnd from the module in dir into the file out.
func BuildPBND(ctx context.Context, dir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmds/pbnd")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: go build pbnd: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// StartEnterprise provisions and starts the domain controller (which takes
// 10 s to a minute: share one Enterprise between tests) and starts pbnd,
// with its data in the lab's directory, and returns once both answer. The
// DC's DNS server, which serves the domain's records (the SRV records of
// its DCs among them, MS-ADTS 6.3.2.3), becomes the name server that the
// lab's DHCP server hands out (Lab.SetDNS).
func (l *Lab) StartEnterprise(ctx context.Context, opts EnterpriseOptions) (*Enterprise, error) {
	if opts.PBND == "" {
		return nil, errors.New("lab: enterprise: no pbnd binary")
	}
	if err := ip(ctx, "-n", l.Name, "addr", "add", fmt.Sprintf("%s/%d", DCAddr, Subnet.Bits()), "dev", "br0"); err != nil {
		return nil, err
	}
	dc, err := samba.Start(ctx, samba.Options{Netns: l.Name, Addr: DCAddr})
	if err != nil {
		return nil, fmt.Errorf("lab: enterprise: %w", err)
	}
	l.onClose(dc.Close)
	l.log.Info("domain controller up", "addr", DCAddr, "realm", dc.Realm,
		"provisioned", dc.Provisioned, "started", dc.Started)
	if err := l.SetDNS(ctx, DCAddr); err != nil {
		return nil, fmt.Errorf("lab: enterprise: %w", err)
	}

	e := &Enterprise{Lab: l, DC: dc, KeyServer: "https://" + KeyServerAddr.String(), groups: map[string]bool{}}
	if err := e.startPBND(ctx, opts.PBND); err != nil {
		return nil, err
	}
	return e, nil
}

// startPBND starts pbnd in the lab and waits until its administrator's
// file exists and the server answers through it.
func (e *Enterprise) startPBND(ctx context.Context, bin string) error {
	dir := filepath.Join(e.Lab.Dir, "pbnd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lab: pbnd: %w", err)
	}
	ca := filepath.Join(dir, "dc-ca.pem")
	if err := os.WriteFile(ca, e.DC.CA.PEM, 0o644); err != nil {
		return fmt.Errorf("lab: pbnd: %w", err)
	}
	// The DC's Administrator looks up the owners assigned before imaging;
	// a real enterprise gives pbnd an account that may only read users.
	lookup := filepath.Join(dir, "lookup-password")
	if err := os.WriteFile(lookup, []byte(e.DC.AdminPassword), 0o600); err != nil {
		return fmt.Errorf("lab: pbnd: %w", err)
	}
	log, err := os.Create(filepath.Join(dir, "pbnd.log"))
	if err != nil {
		return fmt.Errorf("lab: pbnd: %w", err)
	}
	e.Lab.onClose(log.Close)
	cmd := exec.Command(bin, "--data", dir, "--listen", KeyServerAddr.String(),
		"--tang-listen", TangAddr.String(), "--url", e.KeyServer,
		"--ad-domain", e.DC.DNSDomain, "--ad-dc", e.DC.LDAPS(), "--ad-ca", ca,
		"--ad-lookup-account", "Administrator@"+e.DC.DNSDomain, "--ad-lookup-password-file", lookup)
	cmd.Stdout, cmd.Stderr = log, log
	p, err := e.Lab.Start("pbnd", cmd)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, DefaultKeyServerWait)
	defer cancel()
	var last error
	for {
		if p.Exited() {
			b, _ := os.ReadFile(log.Name())
			return fmt.Errorf("lab: pbnd exited: %v: %s", p.err, strings.TrimSpace(string(b)))
		}
		if last = e.adminReady(ctx, filepath.Join(dir, "admin.json")); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: pbnd did not answer: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// adminReady makes the administrator's client from pbnd's file and asks
// the server whether it is healthy.
func (e *Enterprise) adminReady(ctx context.Context, file string) error {
	a, err := keyserver.ReadAdminFile(file)
	if err != nil {
		return err
	}
	c, err := keyserver.NewClientVia(a.URL, a.ServerKey, a.Key, netns.Dialer(e.Lab.Name))
	if err != nil {
		return err
	}
	if err := c.Healthy(ctx); err != nil {
		c.CloseIdleConnections()
		return err
	}
	e.Admin, e.serverKey = c, a.ServerKey
	return nil
}

// AddUser creates an active account name with password on the DC, a
// member of groups (each made on first use), and returns its UPN. The
// password must meet the domain's complexity rules (upper and lower case
// and a digit, at least 7 long).
func (e *Enterprise) AddUser(ctx context.Context, name, password string, groups ...string) (string, error) {
	dn, err := e.DC.AddUser(ctx, samba.User{Name: name, Password: password})
	if err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, g := range groups {
		if e.groups[g] {
			err = e.DC.AddMember(g, dn)
		} else if _, err = e.DC.AddGroup(g, dn); err == nil {
			e.groups[g] = true
		}
		if err != nil {
			return "", fmt.Errorf("lab: %w", err)
		}
	}
	return name + "@" + e.DC.DNSDomain, nil
}

// Config returns the agent's configuration for this enterprise: its
// domain, the DC by address (its certificate carries DCAddr) and an
// autoboot countdown of DefaultCountdown. Without its DCs (AD.DCs nil) the
// agent finds the DC by the SRV records of the DNS server that the lab's
// DHCP server hands out, by its name DC.Host, which its certificate
// carries too.
func (e *Enterprise) Config() *config.Config {
	return &config.Config{Version: config.Version,
		AD:        config.AD{Domain: e.DC.DNSDomain, DCs: []string{e.DC.LDAPS()}},
		KeyServer: &config.KeyServer{URL: e.KeyServer, PublicKey: e.serverKey},
		Autoboot:  config.Autoboot{Countdown: config.Duration(DefaultCountdown)}}
}

// Image writes to out the PBN image base with this enterprise's
// configuration on top: Config as /etc/pbn/pbn.conf and the DC's CA as
// /etc/pbn/ca.pem, in an archive appended to base, so that one build of
// the image serves every enterprise.
func (e *Enterprise) Image(base, out string) error { return e.ImageWith(base, out, e.Config()) }

// ImageWith writes to out the PBN image base with the configuration c on
// top, and the DC's CA, as Image does.
func (e *Enterprise) ImageWith(base, out string, c *config.Config) error {
	conf, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("lab: image: %w", err)
	}
	dir := strings.TrimPrefix(config.Dir, "/")
	recs := []cpio.Record{cpio.Directory("etc", 0o755), cpio.Directory(dir, 0o755),
		cpio.StaticFile(path.Join(dir, config.ConfigFile), string(conf), 0o644),
		cpio.StaticFile(path.Join(dir, config.CAFile), string(e.DC.CA.PEM), 0o644)}
	if err := appendArchive(out, base, recs); err != nil {
		return fmt.Errorf("lab: image: %w", err)
	}
	return nil
}

// ProvisionOptions say how Provision sets a laptop up.
type ProvisionOptions struct {
	// Template is the spec of a disk that MakeDisk made and FillLUKS
	// filled: its file (Path), the sizes of its ESP and LUKS partition and
	// the passphrase of its one keyslot (LUKSKey). Required.
	Template DiskSpec
	// Hostname and Group are recorded on the key server; the default
	// hostname is the laptop's name and the default group "laptops".
	Hostname, Group string
}

// Device is a laptop that Provision set up: enrolled, with its disk and
// TPM state in the lab's directory, ready for Lab.Laptop.
type Device struct {
	Name string
	// ID is the device's ID on the key server; Binding is the
	// provisioning key file's ID, its binding there.
	ID, Binding keyfile.ID
	// Disk is the laptop's disk: GPT, an ESP with the provisioning key
	// file at disk.KeyDir/ProvisioningFile, and the LUKS2 volume of
	// LUKSUUID (for rd.luks.uuid=), whose one keyslot is that key file's
	// FDE secret.
	Disk     string
	LUKSUUID string
	// TPMDir is the swtpm state that holds the device key: pass it as
	// LaptopOptions.TPMState.
	TPMDir string
}

// Provision sets up a laptop named name from the host, as imaging does on
// a real device: it makes the laptop's TPM state, starts swtpm on it,
// enrolls the device with pbn/enroll through Admin, and stops swtpm; then
// it copies opts.Template to the laptop's disk, gives its LUKS2 volume a
// new UUID and the provisioning key file's FDE secret as its only keyslot,
// and writes that key file alone on a new ESP.
//
// Nothing is sealed to the TPM's PCRs, which differ between the host's
// swtpm and the booted guest's (the firmware measures into them).
//
// TODO: every copy keeps the template's LUKS2 volume key (changing it
// needs cryptsetup reencrypt, which needs device-mapper, so a guest boot
// per device); a test that compares volume keys across devices must make
// its own disks.
func (e *Enterprise) Provision(ctx context.Context, name string, opts ProvisionOptions) (*Device, error) {
	if opts.Template.Path == "" || len(opts.Template.LUKSKey) == 0 {
		return nil, fmt.Errorf("lab: provision %s: no template disk", name)
	}
	d := &Device{Name: name, Disk: filepath.Join(e.Lab.Dir, name, "disk.img"), LUKSUUID: imaging.NewUUID(),
		TPMDir: filepath.Join(e.Lab.Dir, name, "tpm")}
	if err := os.MkdirAll(d.TPMDir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: provision %s: %w", name, err)
	}
	hostname, group := opts.Hostname, opts.Group
	if hostname == "" {
		hostname = name
	}
	if group == "" {
		group = "laptops"
	}
	f, err := e.enroll(ctx, d, enroll.Device{Hostname: hostname, Group: group})
	if err != nil {
		return nil, fmt.Errorf("lab: provision %s: %w", name, err)
	}
	defer f.Close()
	d.ID, d.Binding = f.Header().DeviceID, f.Header().ID
	if err := makeDeviceDisk(ctx, d, opts.Template, f); err != nil {
		return nil, fmt.Errorf("lab: provision %s: %w", name, err)
	}
	e.Lab.log.Info("provisioned", "laptop", name, "device", d.ID.String(), "binding", d.Binding.String())
	return d, nil
}

// enroll runs pbn/enroll against a swtpm on d's TPM state, started on the
// host for it and shut down in order afterwards.
func (e *Enterprise) enroll(ctx context.Context, d *Device, dev enroll.Device) (*keyfile.KeyFile, error) {
	sock := filepath.Join(d.TPMDir, "enroll.sock")
	p, err := e.Lab.startSwtpm(ctx, d.Name+" (enrolment)", d.TPMDir, "--server", sock)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	t, err := tpm.Open(ctx, "unix:"+sock, &tpm.Options{Logger: e.Lab.log})
	if err != nil {
		return nil, err
	}
	dev.Dial = netns.Dialer(e.Lab.Name)
	dev.Log = e.Lab.log
	f, err := enroll.Enroll(ctx, t, e.Admin, dev)
	err = errors.Join(err, t.Close(), shutdownTPM(sock))
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, err
	}
	return f, nil
}

// shutdownTPM sends TPM2_Shutdown(TPM_SU_CLEAR) (TPM 2.0 Part 3, 9.4) to the
// swtpm at sock, as an operating system does before power-off, so that the
// laptop's first boot is not an unorderly one.
func shutdownTPM(sock string) error {
	c, err := net.DialTimeout("unix", sock, DefaultSwtpmWait)
	if err != nil {
		return fmt.Errorf("tpm shutdown: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(DefaultSwtpmWait))
	if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}).Execute(transport.FromReadWriter(c)); err != nil {
		return fmt.Errorf("tpm shutdown: %w", err)
	}
	return nil
}

// makeDeviceDisk makes d's disk from the template: a copy, re-keyed to the
// key file f's FDE secret, with a new UUID and an ESP holding f alone.
func makeDeviceDisk(ctx context.Context, d *Device, tmpl DiskSpec, f *keyfile.KeyFile) error {
	kb, err := f.Marshal()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "pbn-provision-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := copyFile(d.Disk, tmpl.Path); err != nil {
		return err
	}

	luksAt := int64(espStart + tmpl.ESPMiB*mib)
	luks := filepath.Join(tmp, "luks.img")
	if err := copyOut(luks, d.Disk, luksAt, int64(tmpl.LUKSMiB*mib)); err != nil {
		return err
	}
	if err := rekey(ctx, luks, tmp, tmpl, f, d.LUKSUUID); err != nil {
		return err
	}
	if err := copyInto(d.Disk, luks, luksAt); err != nil {
		return err
	}

	esp := filepath.Join(tmp, "esp.img")
	if err := makeESP(ctx, esp, tmpl.ESPMiB, map[string][]byte{path.Join(disk.KeyDir, ProvisioningFile): kb}); err != nil {
		return err
	}
	return copyInto(d.Disk, esp, espStart)
}

// rekey gives the LUKS2 volume in the file luks the FDE secret of f as
// its keyslot instead of the template's (cryptsetup works on the header in
// a file without device-mapper), and the UUID uuid. The keys pass through
// files in the private directory tmp, which the caller removes.
func rekey(ctx context.Context, luks, tmp string, tmpl DiskSpec, f *keyfile.KeyFile, uuid string) error {
	oldKey, newKey := filepath.Join(tmp, "old.key"), filepath.Join(tmp, "new.key")
	if err := os.WriteFile(oldKey, tmpl.LUKSKey, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(newKey, f.Keyring().FDE, 0o600); err != nil {
		return err
	}
	// The template's keyslot is slot 0, its only one; the new one gets
	// slot 1, and the same cheap PBKDF2 as MakeDisk's (see there).
	for _, args := range [][]string{
		{"luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
			"--key-file", oldKey, luks, newKey},
		{"luksKillSlot", "--batch-mode", "--key-file", newKey, luks, "0"},
		{"luksUUID", "--batch-mode", "--uuid", uuid, luks},
	} {
		if err := run(ctx, "cryptsetup", args...); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies the file src to a new file dst.
func copyFile(dst, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// copyOut writes n bytes of the file src from offset off to a new file dst.
func copyOut(dst, src string, off, n int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
