package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/store"
)

// pxeFixture is the imaging payload the network boot tests share: the
// tiny OS's file system, made once per test binary.
var pxeFixture struct {
	once    sync.Once
	payload string
	err     error
}

// payloadMiB is the size of the tiny OS's file system that imaging writes.
const payloadMiB = 12

// pxeBase returns the kernel and the PBN image of the boot tests, and the
// payload.
func pxeBase(t testing.TB) (initramfs.Kernel, string, string) {
	t.Helper()
	k, image, _, _ := pbnDisk(t)
	f := &pxeFixture
	f.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		f.payload = filepath.Join(fixtures.dir, "payload.ext4")
		f.err = TinyOSExt4(ctx, f.payload, payloadMiB)
	})
	if f.err != nil {
		t.Fatal(f.err)
	}
	return k, image, f.payload
}

// writePXE writes the PXE directory for the image at img into dir, with
// extra on the kernel command line; a test's laptops log with pbn.debug,
// a benchmark's do not, since every line costs time on the serial port.
func writePXE(t testing.TB, dir string, img []byte, extra string) {
	t.Helper()
	k, _, _ := pxeBase(t)
	if _, ok := t.(*testing.T); ok {
		extra = "pbn.debug " + extra
	}
	if err := initramfs.WritePXE(dir, k, img, initramfs.PXE{BaseURL: PXEBaseURL,
		Append: PXEAppend + " " + extra}); err != nil {
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

// imagingLab is the shared enterprise's ImagingLab, with the names the
// tests use: ent, pxe (the PXE directory), path (the imaging image, as a
// file) and image (its content).
type imagingLab struct {
	*ImagingLab
	ent   *Enterprise
	pxe   string
	image []byte
	path  string
}

var imagingFixture struct {
	once sync.Once
	lab  *imagingLab
	err  error
}

// sharedImagingLab returns the shared enterprise's imaging lab, starting
// it on the first call.
func sharedImagingLab(t testing.TB) *imagingLab {
	t.Helper()
	k, _, payload := pxeBase(t)
	ent, image := sharedEnterprise(t)
	f := &imagingFixture
	f.once.Do(func() { f.lab, f.err = startImaging(k, ent, image, payload) })
	if f.err != nil {
		t.Fatalf("imaging lab: %v", f.err)
	}
	return f.lab
}

func startImaging(k initramfs.Kernel, ent *Enterprise, base, payload string) (*imagingLab, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := ent.StartImaging(ctx, ImagingOptions{Kernel: k, Image: base, Payload: payload, Dir: fixtures.dir})
	if err != nil {
		return nil, err
	}
	return &imagingLab{ImagingLab: m, ent: ent, pxe: m.PXEDir, image: m.image, path: m.Image}, nil
}

// slowPrefix serves the payload slowly (ImagingSlowPrefix).
const slowPrefix = ImagingSlowPrefix

// writeScript writes the PXE directory again with extra on the kernel
// command line; the next network boot takes it. A test's laptops log with
// pbn.debug, a benchmark's do not.
func (e *imagingLab) writeScript(t testing.TB, extra string) {
	t.Helper()
	if _, ok := t.(*testing.T); ok {
		extra = "pbn.debug " + extra
	}
	if err := e.WritePXE(extra); err != nil {
		t.Fatal(err)
	}
}

// blankDisk returns a new blank disk (BlankDisk) in t's directory.
func blankDisk(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := BlankDisk(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// pxeLaptop starts a laptop that boots from the network with disk; a
// test's shows its console in the test's log.
func (e *imagingLab) pxeLaptop(t testing.TB, ctx context.Context, name, disk string) *Laptop {
	t.Helper()
	m, err := e.PXELaptop(ctx, name, disk, LaptopOptions{Console: console(t, name)})
	if err != nil {
		t.Fatalf("PXELaptop = %v", err)
	}
	return m
}

// console returns the console writer of a laptop of t's: the test's log
// for a test, nothing for a benchmark.
func console(t testing.TB, name string) io.Writer {
	if tt, ok := t.(*testing.T); ok {
		return &testWriter{t: tt, name: name}
	}
	return nil
}

// The imaging's lines with the root's LUKS2 UUID, the payload's size, and
// the device's and the provisioning key file's IDs.
const (
	luksRE     = ImagingLUKSRE
	enrolledRE = ImagingEnrolledRE
	payloadRE  = ImagingPayloadRE
)

// TestPXEImaging images a blank laptop from the network. The imaging is
// cut off while the payload is written (the power cut) and started again
// from PXE, and finishes: the disk has PBN's table, the boot files on the
// ESP, and a provisioning key file; the key server lists the device,
// enrolled with its TPM; and the laptop reboots into the provisioning
// stage, boots unattended and runs the tiny OS from the payload. At its
// next boot its user's secure moment makes it hers.
func TestPXEImaging(t *testing.T) {
	e := sharedImagingLab(t) // before the deadline: the first call makes the fixtures
	ctx, cancel := context.WithTimeout(context.Background(), 4*bootTimeout+secureMomentTimeout)
	defer cancel()
	disk := blankDisk(t)

	e.writeScript(t, "pbn.payload="+ImagingURL(slowPrefix+"tinyos.ext4"))
	m := e.pxeLaptop(t, ctx, "blank", disk)
	expect(t, ctx, m, `imaging: /dev/vda, blank`, luksRE, `imaging: payload \d`)
	if err := m.PowerCut(); err != nil {
		t.Fatal(err)
	}

	e.writeScript(t, "")
	if err := m.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	got := expect(t, ctx, m, `imaging: /dev/vda, an imaging that was cut off: starting again`, luksRE,
		payloadRE, `imaging: boot files installed`, enrolledRE, `imaging: done in`)
	if got[2][1] != strconv.Itoa(payloadMiB<<20) {
		t.Errorf("payload written: %s bytes, want %d", got[2][1], payloadMiB<<20)
	}
	uuid, device := got[1][1], got[4][1]
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want QEMU to end at the restart (-no-reboot)", err)
	}
	m.PowerCut() // the swtpm, which outlives QEMU
	checkImaged(t, ctx, disk)

	id, err := keyfile.ParseID(device)
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.ent.Admin.Device(ctx, id)
	if err != nil {
		t.Fatalf("Device(%s) = %v", id, err)
	}
	if info.Group != config.DefaultImagingGroup || info.State != store.DeviceActive {
		t.Errorf("Device = %+v, want active in %s", info, config.DefaultImagingGroup)
	}
	// The image's credential is the enrol-only administrator's, whom the
	// audit trail names.
	if evs := events(t, ctx, e.ent, &Device{ID: id}, "enroll"); len(evs) != 1 || evs[0].Actor != DefaultImagingAdmin {
		t.Errorf("enroll events %+v, want one by %s", evs, DefaultImagingAdmin)
	}

	// The provisioning stage's first boot, from the disk, with the TPM
	// that enrolled: it boots unattended into the payload, the tiny OS,
	// which shows that imaging wrote it whole into the volume.
	p, err := e.ImagedLaptop(ctx, "imaged", disk, m.TPMDir, uuid, LaptopOptions{
		Console: &testWriter{t: t, name: "imaged"}, Append: "pbn.debug"})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	expect(t, ctx, p, `pbn: keyfiles: 1 on /dev/vda1`, countdownRE, autobootRE, tinyOSRE)
	if err := p.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	p.PowerCut()

	// Its user's first sign-in: the secure moment makes the imaged laptop
	// hers, as on a laptop provisioned from the host.
	upn, err := e.ent.AddUser(ctx, "ivy", labPassword, "pbn-staff")
	if err != nil {
		t.Fatal(err)
	}
	p, err = e.ImagedLaptop(ctx, "imaged-2", disk, m.TPMDir, uuid, LaptopOptions{
		Console: &testWriter{t: t, name: "imaged, signed in"}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	signIn(t, ctx, p, "ivy", labPassword)
	expect(t, ctx, p, `pbn: secure moment: this computer is now `+regexp.QuoteMeta(upn)+`'s\n`, tinyOSRE)
	if err := p.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	p.PowerCut()
	binding, err := keyfile.ParseID(got[4][2])
	if err != nil {
		t.Fatal(err)
	}
	files, slots, tags := imagedState(t, ctx, disk)
	st := volumeState{slots: slots, tags: tags, files: map[keyfile.Kind][]keyfile.ID{}}
	for _, f := range files {
		st.files[f.Header().Kind] = append(st.files[f.Header().Kind], f.Header().ID)
	}
	checkOwnedState(t, ctx, e.ent, &Device{ID: id, Binding: binding, Disk: disk}, upn, st)
}

// checkImaged checks an imaged disk from the host: PBN's partition table,
// and on the ESP the kernel and the enterprise's image, which carries no
// imaging credential.
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
	esp := p + "@@" + strconv.FormatUint(parts[0].FirstLBA*512, 10)
	k, _, _ := pxeBase(t)
	for name, src := range map[string]string{"EFI/PBN/vmlinuz": k.Image,
		"EFI/PBN/pbn.img": sharedImagingLab(t).Installed} {
		got := filepath.Join(t.TempDir(), path.Base(name))
		if err := run(ctx, "mcopy", "-i", esp, "::"+name, got); err != nil {
			t.Fatal(err)
		}
		g, _ := os.ReadFile(got)
		want, _ := os.ReadFile(src)
		if !bytes.Equal(g, want) {
			t.Errorf("%s on the ESP: %d bytes, want %s's %d", name, len(g), src, len(want))
		}
	}
}

// TestPXEImagingRefuses PXE-boots a laptop whose disk holds a file system,
// with a configuration that does not allow overwriting: the agent says so
// and the disk stays as it was.
func TestPXEImagingRefuses(t *testing.T) {
	e := sharedImagingLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	e.writeScript(t, "")
	p := blankDisk(t)
	if err := run(ctx, "mkfs.ext4", "-q", "-F", p); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := e.pxeLaptop(t, ctx, "used", p)
	defer m.PowerCut()
	expect(t, ctx, m, regexp.QuoteMeta(`This computer's disk holds an ext4 file system. It was left as it is`))
	if err := m.PowerCut(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Error("the refused disk changed")
	}
}

// BenchmarkPXEImaging images a blank laptop from the network and boots it
// into the provisioning stage, and reports the time from the PXE start
// (the laptop's power-on) to the provisioning stage's first boot (its
// agent's first line) and the payload's transfer rate into the encrypted
// volume as the agent measured it. One imaging is one iteration; under
// TCG, on a shared 2-core machine, both are several times slower than on
// hardware.
func BenchmarkPXEImaging(b *testing.B) {
	e := sharedImagingLab(b)
	e.writeScript(b, "")
	var total, rate float64
	n := 0
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
		disk := blankDisk(b)
		start := time.Now()
		m := e.pxeLaptop(b, ctx, fmt.Sprintf("bench%d", n), disk)
		im, err := WaitImaged(ctx, m.Console)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Wait(ctx); err != nil {
			b.Fatal(err)
		}
		m.PowerCut()
		p, err := e.ImagedLaptop(ctx, fmt.Sprintf("bench%d-boot", n), disk, m.TPMDir, im.LUKSUUID, LaptopOptions{})
		if err != nil {
			b.Fatal(err)
		}
		expect(b, ctx, p, `pbn: PBN agent starting`)
		total += float64(time.Since(start).Milliseconds())
		p.PowerCut()
		cancel()
		rate += im.PayloadRate()
		n++
	}
	b.ReportMetric(total/float64(n), "pxe-to-provisioning-ms")
	b.ReportMetric(rate/float64(n), "payload-MiB/s")
}
