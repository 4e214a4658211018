package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/u-root/mkuimage/cpio"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/imaging"
)

// pxeFixture is what the network boot tests share, made once per test
// binary: the kernel, the PBN image and the tiny OS's file system as the
// imaging payload.
var pxeFixture struct {
	once    sync.Once
	kernel  initramfs.Kernel
	image   string
	payload string
	err     error
}

// payloadMiB is the size of the tiny OS's file system that imaging writes.
const payloadMiB = 12

// pxeBase returns the shared kernel, image and payload.
func pxeBase(t testing.TB) (initramfs.Kernel, string, string) {
	t.Helper()
	needLab(t)
	f := &pxeFixture
	f.once.Do(func() { f.err = makePXEFixture() })
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.kernel, f.image, f.payload
}

func makePXEFixture() error {
	f := &pxeFixture
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	if f.kernel, err = initramfs.FindKernel(""); err != nil {
		return err
	}
	var img bytes.Buffer
	if _, err := initramfs.Build(ctx, initramfs.Config{Dir: ".."}, &img); err != nil {
		return err
	}
	f.image = filepath.Join(fixtures.dir, "pxe-base.img")
	if err := os.WriteFile(f.image, img.Bytes(), 0o644); err != nil {
		return err
	}
	f.payload = filepath.Join(fixtures.dir, "payload.ext4")
	return TinyOSExt4(ctx, f.payload, payloadMiB)
}

// pxeAppend is the PXE entry's kernel command line in the lab: the serial
// console, and panic=-1, as Laptop gives direct boots.
const pxeAppend = "console=ttyS0 panic=-1 quiet pbn.debug"

// writePXE writes the PXE directory for the image at img into dir, with
// extra on the kernel command line.
func writePXE(t testing.TB, dir string, img []byte, extra string) {
	t.Helper()
	k, _, _ := pxeBase(t)
	if err := initramfs.WritePXE(dir, k, img, initramfs.PXE{BaseURL: PXEBaseURL,
		Append: pxeAppend + " " + extra}); err != nil {
		t.Fatalf("WritePXE = %v", err)
	}
}

// TestPXEBoot boots a laptop without a kernel or a disk from the lab's
// network: QEMU's iPXE gets its address and the script from dnsmasq
// (DHCP, TFTP), the kernel and the image over HTTP, and the agent starts
// in the imaging mode. With no imaging configuration in the image it says
// so and stops.
func TestPXEBoot(t *testing.T) {
	_, base, _ := pxeBase(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	img, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writePXE(t, dir, img, "")
	lab := newLab(t)
	if _, err := lab.StartPXE(ctx, dir); err != nil {
		t.Fatalf("StartPXE = %v", err)
	}
	m, err := lab.Laptop(ctx, "blank", LaptopOptions{Console: &testWriter{t: t, name: "blank"}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	expect(t, ctx, m, `pbn: PBN agent starting`, `pbn: network: `,
		`the image has no imaging configuration`)
	if _, ok := lab.Lease(m.MAC); !ok {
		t.Errorf("no DHCP lease for %s after a network boot", m.MAC)
	}
}

// imagingLab is a lab that images laptops from the network: the imaging
// server with the tiny OS as the payload, and the PXE service with an
// image whose configuration points at it.
type imagingLab struct {
	lab   *Lab
	pxe   string // the PXE directory
	image []byte // the imaging image: the base with the configuration
}

// slowPrefix serves the payload at slowRate, so that a test can cut an
// imaging off while it is written.
const (
	slowPrefix = "slow/"
	slowRate   = 2 << 20 // bytes a second
)

func newImagingLab(t *testing.T, ctx context.Context, overwrite bool) *imagingLab {
	t.Helper()
	k, base, payload := pxeBase(t)
	e := &imagingLab{lab: newLab(t), pxe: t.TempDir()}
	files := t.TempDir()
	for name, src := range map[string]string{"tinyos.ext4": payload, "vmlinuz": k.Image, "pbn.img": base} {
		if err := os.Symlink(src, filepath.Join(files, name)); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := e.lab.ServeImaging(imagingHandler(files))
	if err != nil {
		t.Fatalf("ServeImaging = %v", err)
	}
	conf, err := json.Marshal(&config.Config{Version: config.Version, Imaging: &config.Imaging{
		Payload: ImagingURL("tinyos.ext4"), Kernel: ImagingURL("vmlinuz"), Image: ImagingURL("pbn.img"),
		ESPMiB: 32, Overwrite: overwrite}})
	if err != nil {
		t.Fatal(err)
	}
	dir := strings.TrimPrefix(config.Dir, "/")
	imgFile := filepath.Join(t.TempDir(), "imaging.img")
	if err := appendArchive(imgFile, base, []cpio.Record{
		cpio.Directory("etc", 0o755), cpio.Directory(dir, 0o755),
		cpio.StaticFile(path.Join(dir, config.ConfigFile), string(conf), 0o644),
		cpio.StaticFile(path.Join(dir, config.ImagingCAFile), string(ca), 0o644)}); err != nil {
		t.Fatal(err)
	}
	if e.image, err = os.ReadFile(imgFile); err != nil {
		t.Fatal(err)
	}
	writePXE(t, e.pxe, e.image, "")
	if _, err := e.lab.StartPXE(ctx, e.pxe); err != nil {
		t.Fatalf("StartPXE = %v", err)
	}
	return e
}

// imagingHandler serves the files in dir, and under slowPrefix the same
// files at slowRate.
func imagingHandler(dir string) http.Handler {
	files := http.FileServer(http.Dir(dir))
	mux := http.NewServeMux()
	mux.Handle("/", files)
	mux.HandleFunc("/"+slowPrefix, func(w http.ResponseWriter, r *http.Request) {
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
			time.Sleep(time.Second * chunk / slowRate)
		}
	})
	return mux
}

// blankDisk returns a new sparse disk file of 80 MiB: zeros, as from the
// factory.
func blankDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := truncate(p, 80<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

// pxeLaptop starts a laptop that boots from the network with disk.
func (e *imagingLab) pxeLaptop(t *testing.T, ctx context.Context, name, disk string) *Laptop {
	t.Helper()
	m, err := e.lab.Laptop(ctx, name, LaptopOptions{Disks: []string{disk},
		Console: &testWriter{t: t, name: name}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	return m
}

// luksRE is the imaging's line with the root's LUKS2 UUID.
const luksRE = `imaging: ESP formatted, root formatted as LUKS2 ([0-9a-f-]{36})`

// TestPXEImaging images a blank laptop from the network, cut off while the
// payload is written (QEMU killed) and started again from PXE, which
// finishes: the disk has PBN's table, the boot files on the ESP, and the
// tiny OS in the LUKS2 volume.
func TestPXEImaging(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	e := newImagingLab(t, ctx, false)
	disk := blankDisk(t)

	writePXE(t, e.pxe, e.image, "pbn.payload="+ImagingURL(slowPrefix+"tinyos.ext4"))
	m := e.pxeLaptop(t, ctx, "cut", disk)
	expect(t, ctx, m, `imaging: /dev/vda, blank`, luksRE, `imaging: payload \d`)
	if err := m.PowerCut(); err != nil {
		t.Fatal(err)
	}

	writePXE(t, e.pxe, e.image, "")
	m = e.pxeLaptop(t, ctx, "again", disk)
	got := expect(t, ctx, m, `imaging: /dev/vda, an imaging that was cut off: starting again`, luksRE,
		`imaging: payload written: (\d+) bytes`, `imaging: boot files installed`, `imaging: done in`)
	if got[2][1] != strconv.Itoa(payloadMiB<<20) {
		t.Errorf("payload written: %s bytes, want %d", got[2][1], payloadMiB<<20)
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want QEMU to end at the restart (-no-reboot)", err)
	}
	checkImaged(t, ctx, disk)
}

// checkImaged checks an imaged disk from the host: PBN's partition table,
// and the kernel on the ESP.
func checkImaged(t *testing.T, ctx context.Context, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if found, err := imaging.Inspect(f); err != nil || found.State != imaging.Ours {
		t.Errorf("Inspect(imaged disk) = %+v, %v; want PBN's", found, err)
	}
	parts, err := disk.ReadGPT(f)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	img := p + "@@" + strconv.FormatUint(parts[0].FirstLBA*512, 10)
	if err := run(ctx, "mcopy", "-i", img, "::EFI/PBN/vmlinuz", kernel); err != nil {
		t.Fatal(err)
	}
	k, _, _ := pxeBase(t)
	want, _ := os.ReadFile(k.Image)
	if got, _ := os.ReadFile(kernel); !bytes.Equal(got, want) {
		t.Errorf("EFI/PBN/vmlinuz on the ESP: %d bytes, want the kernel's %d", len(got), len(want))
	}
}

// TestPXEImagingRefuses PXE-boots a laptop whose disk holds a file system,
// with a configuration that does not allow overwriting: the agent says so
// and the disk stays as it was.
func TestPXEImagingRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	e := newImagingLab(t, ctx, false)
	p := blankDisk(t)
	if err := run(ctx, "mkfs.ext4", "-q", "-F", p); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := e.pxeLaptop(t, ctx, "used", p)
	expect(t, ctx, m, regexp.QuoteMeta(`This computer's disk holds an ext4 file system. It was left as it is`))
	if err := m.PowerCut(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Error("the refused disk changed")
	}
}
