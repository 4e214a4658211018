package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/u-root/mkuimage/cpio"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// PXEAppend is the PXE entry's kernel command line in the lab: the serial
// console, and panic=-1, as Laptop gives direct boots.
const PXEAppend = "console=ttyS0 panic=-1 quiet"

// Defaults of ImagingOptions.
const (
	// DefaultImagingAdmin names the enrol-only administrator whose file
	// the imaging image carries.
	DefaultImagingAdmin = "imaging"
	// DefaultImagingESPMiB is the ESP that the lab's imaging makes.
	DefaultImagingESPMiB = 32
)

// BlankDiskMiB is the size of the disk BlankDisk makes: the lab's ESP, the
// LUKS2 header and a payload of tens of MiB.
const BlankDiskMiB = 80

// The files that StartImaging's imaging server serves, by name.
const (
	ImagingPayload = "tinyos.ext4"
	ImagingKernel  = "vmlinuz"
	ImagingImage   = "pbn.img"
)

// ImagingSlowPrefix serves the imaging server's files at ImagingSlowRate,
// so that a test can cut an imaging off while the payload is written:
// ImagingURL(ImagingSlowPrefix + ImagingPayload).
const (
	ImagingSlowPrefix = "slow/"
	ImagingSlowRate   = 2 << 20 // bytes a second
)

// ImagingOptions say what StartImaging serves.
type ImagingOptions struct {
	// Kernel is the kernel of the PXE entry and of the ESP.
	Kernel initramfs.Kernel
	// Image is the enterprise's PBN image (Enterprise.Image wrote it):
	// imaging installs it on the ESP, and the PXE entry's image is it with
	// the imaging configuration and credential on top.
	Image string
	// Payload is the OS payload's file, a raw file system image
	// (TinyOSExt4 makes one).
	Payload string
	// Dir receives the imaging image, the PXE directory and the served
	// files. Required.
	Dir string
	// Admin names the enrol-only administrator that the imaging image
	// carries; default DefaultImagingAdmin. It must be new to the key
	// server.
	Admin string
	// Group is the device group that imaging enrolls devices in; empty
	// means config.DefaultImagingGroup.
	Group string
}

// ImagingLab is an enterprise's lab set up to image blank laptops from the
// network, as issue 8 has it: an HTTPS imaging server serving the payload,
// the kernel and the enterprise's image; the PXE service (DHCP, TFTP and
// HTTP) handing out the imaging image, whose configuration, beside the
// enterprise's, names what to fetch and carries an enrol-only
// administrator's file (store.RoleEnroll) to enroll with.
type ImagingLab struct {
	Ent *Enterprise
	// Kernel is the kernel that the PXE entry boots and imaging installs.
	Kernel initramfs.Kernel
	// PXEDir is the PXE directory that StartPXE serves; WritePXE writes it
	// again.
	PXEDir string
	// Image is the imaging image, as a file, and Installed the image that
	// imaging installs on the ESP (ImagingOptions.Image): the provisioning
	// stage's, without the imaging credential.
	Image, Installed string

	image []byte
}

// StartImaging serves imaging on the enterprise's lab: the imaging server
// on ImagingAddr and the PXE service on PXEBaseURL, with an enrol-only
// administrator made for the imaging image. The lab stops both at Close.
func (e *Enterprise) StartImaging(ctx context.Context, opts ImagingOptions) (*ImagingLab, error) {
	if opts.Dir == "" || opts.Image == "" || opts.Payload == "" || opts.Kernel.Image == "" {
		return nil, errors.New("lab: imaging: needs a directory, a kernel, an image and a payload")
	}
	m := &ImagingLab{Ent: e, Kernel: opts.Kernel, PXEDir: filepath.Join(opts.Dir, "pxe"),
		Image: filepath.Join(opts.Dir, "imaging.img"), Installed: opts.Image}
	ca, err := m.serveFiles(opts)
	if err != nil {
		return nil, fmt.Errorf("lab: imaging: %w", err)
	}
	admin, err := e.adminFile(ctx, filepath.Join(opts.Dir, config.ImagingAdminFile),
		cmp.Or(opts.Admin, DefaultImagingAdmin), store.RoleEnroll)
	if err != nil {
		return nil, fmt.Errorf("lab: imaging: %w", err)
	}
	if err := m.writeImage(ca, admin, opts.Group); err != nil {
		return nil, fmt.Errorf("lab: imaging: %w", err)
	}
	if err := m.WritePXE(""); err != nil {
		return nil, err
	}
	if _, err := e.Lab.StartPXE(ctx, m.PXEDir); err != nil {
		return nil, err
	}
	return m, nil
}

// serveFiles starts the imaging server on links to the files it serves,
// and returns its CA's certificate.
func (m *ImagingLab) serveFiles(opts ImagingOptions) ([]byte, error) {
	files := filepath.Join(opts.Dir, "imaging-files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		return nil, err
	}
	for name, src := range map[string]string{ImagingPayload: opts.Payload, ImagingKernel: opts.Kernel.Image,
		ImagingImage: opts.Image} {
		if err := os.Symlink(src, filepath.Join(files, name)); err != nil {
			return nil, err
		}
	}
	return m.Ent.Lab.ServeImaging(imagingHandler(files))
}

// adminFile adds an administrator called name with role to the key
// server, writes its administrator's file at p, and returns the file's
// content.
func (e *Enterprise) adminFile(ctx context.Context, p, name string, role store.AdminRole) ([]byte, error) {
	k, err := keyserver.NewKey()
	if err != nil {
		return nil, err
	}
	spki, err := keyserver.PublicKey(k)
	if err != nil {
		return nil, err
	}
	if err := e.Admin.AddAdmin(ctx, name, role, spki); err != nil {
		return nil, err
	}
	a := &keyserver.AdminFile{Name: name, URL: e.KeyServer, ServerKey: e.serverKey, Key: k}
	if err := keyserver.WriteAdminFile(p, a); err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// writeImage writes the imaging image: the enterprise's image with the
// imaging configuration, the imaging server's CA and the administrator
// file admin on top, enrolling devices in group.
func (m *ImagingLab) writeImage(ca, admin []byte, group string) error {
	cfg := m.Ent.Config()
	cfg.Imaging = &config.Imaging{Payload: ImagingURL(ImagingPayload), Kernel: ImagingURL(ImagingKernel),
		Image: ImagingURL(ImagingImage), ESPMiB: DefaultImagingESPMiB, Group: group}
	conf, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	dir := strings.TrimPrefix(config.Dir, "/")
	if err := appendArchive(m.Image, m.Installed, []cpio.Record{
		cpio.Directory("etc", 0o755), cpio.Directory(dir, 0o755),
		cpio.StaticFile(path.Join(dir, config.ConfigFile), string(conf), 0o644),
		cpio.StaticFile(path.Join(dir, config.ImagingCAFile), string(ca), 0o644),
		cpio.StaticFile(path.Join(dir, config.ImagingAdminFile), string(admin), 0o600)}); err != nil {
		return err
	}
	m.image, err = os.ReadFile(m.Image)
	return err
}

// WritePXE writes the PXE directory again, with extra after PXEAppend on
// the PXE entry's kernel command line; the next network boot takes it.
func (m *ImagingLab) WritePXE(extra string) error {
	err := initramfs.WritePXE(m.PXEDir, m.Kernel, m.image, initramfs.PXE{BaseURL: PXEBaseURL,
		Append: strings.TrimSpace(PXEAppend + " " + extra)})
	if err != nil {
		return fmt.Errorf("lab: imaging: %w", err)
	}
	return nil
}

// imagingHandler serves the files in dir, and under ImagingSlowPrefix the
// same files at ImagingSlowRate.
func imagingHandler(dir string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServer(http.Dir(dir)))
	mux.HandleFunc("/"+ImagingSlowPrefix, func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(dir, path.Base(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		const chunk = 64 << 10
		for len(b) > 0 && r.Context().Err() == nil {
			n := min(chunk, len(b))
			w.Write(b[:n])
			w.(http.Flusher).Flush()
			b = b[n:]
			time.Sleep(time.Second * chunk / ImagingSlowRate)
		}
	})
	return mux
}

// BlankDisk makes a new sparse disk file of BlankDiskMiB at p: zeros, as
// from the factory.
func BlankDisk(p string) error {
	if err := truncate(p, BlankDiskMiB<<20); err != nil {
		return fmt.Errorf("lab: blank disk: %w", err)
	}
	return nil
}

// PXELaptop starts a laptop that boots from the network with the disk at
// disk, its console copied to opts.Console: a blank laptop, which the PXE
// entry images. QEMU ends when imaging restarts the laptop (-no-reboot);
// the swtpm, whose state the provisioning stage's boots need
// (Laptop.TPMDir), outlives it until PowerCut.
func (m *ImagingLab) PXELaptop(ctx context.Context, name, disk string, opts LaptopOptions) (*Laptop, error) {
	opts.Kernel, opts.Disks = "", []string{disk}
	return m.Ent.Lab.Laptop(ctx, name, opts)
}

// ImagedLaptop starts the laptop that imaging restarted into the
// provisioning stage: the kernel and the image that imaging installed
// (ImagingLab.Kernel, Installed), booted directly since the lab's
// firmware has no UEFI, with the imaged disk, the TPM state that enrolled
// (tpmDir) and rd.luks.uuid=luksUUID before opts.Append.
func (m *ImagingLab) ImagedLaptop(ctx context.Context, name, disk, tpmDir, luksUUID string, opts LaptopOptions) (*Laptop, error) {
	opts.Kernel, opts.Initrd, opts.Disks, opts.TPMState = m.Kernel.Image, m.Installed, []string{disk}, tpmDir
	opts.Append = strings.TrimSpace("quiet rd.luks.uuid=" + luksUUID + " " + opts.Append)
	return m.Ent.Lab.Laptop(ctx, name, opts)
}

// The imaging's console lines: the root's LUKS2 UUID; the payload's size
// in bytes and the time it took; the device's and the provisioning key
// file's IDs.
const (
	ImagingLUKSRE     = `imaging: ESP formatted, root formatted as LUKS2 ([0-9a-f-]{36})`
	ImagingPayloadRE  = `imaging: payload written: (\d+) bytes in (\S+)\n`
	ImagingEnrolledRE = `imaging: enrolled as device ([0-9a-f]{32}); provisioning key file ([0-9a-f]{32}) written`
	ImagingDoneRE     = `imaging: done in (\S+);`
)

// Imaged is what an imaging said on the console.
type Imaged struct {
	// LUKSUUID is the root volume's, for rd.luks.uuid=.
	LUKSUUID string
	// Device is the device's ID on the key server and Binding the
	// provisioning key file's.
	Device, Binding keyfile.ID
	// Payload is the payload's size, and PayloadTook the time from its
	// first byte fetched to its last written, as the agent measured it.
	Payload     int64
	PayloadTook time.Duration
	// Took is the agent's time from its start to the restart.
	Took time.Duration
}

// PayloadRate returns the payload's transfer rate into the encrypted
// volume in MiB a second.
func (i *Imaged) PayloadRate() float64 {
	return float64(i.Payload) / (1 << 20) / i.PayloadTook.Seconds()
}

// WaitImaged waits for an imaging on c to finish and returns what it said.
func WaitImaged(ctx context.Context, c *Console) (*Imaged, error) {
	var got [4][]string
	for i, re := range []string{ImagingLUKSRE, ImagingPayloadRE, ImagingEnrolledRE, ImagingDoneRE} {
		var err error
		if got[i], err = c.Expect(ctx, regexp.MustCompile(re)); err != nil {
			return nil, err
		}
	}
	im := &Imaged{LUKSUUID: got[0][1]}
	var errs [6]error
	im.Payload, errs[0] = strconv.ParseInt(got[1][1], 10, 64)
	im.PayloadTook, errs[1] = time.ParseDuration(got[1][2])
	im.Device, errs[2] = keyfile.ParseID(got[2][1])
	im.Binding, errs[3] = keyfile.ParseID(got[2][2])
	im.Took, errs[4] = time.ParseDuration(got[3][1])
	if im.PayloadTook <= 0 {
		errs[5] = errors.New("no time")
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("lab: imaging's console lines: %w", err)
	}
	return im, nil
}
