package qemu

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pbn-project/pbn/initramfs"
)

// pxeFixture is the PXE directory of the imaging tests: the kernel, the
// PBN image and the iPXE script, built once per test binary.
var pxeFixture struct {
	once sync.Once
	dir  string
	err  error
}

// pxeDir returns the shared PXE directory.
func pxeDir(t testing.TB) string {
	t.Helper()
	needLab(t)
	f := &pxeFixture
	f.once.Do(func() { f.dir, f.err = makePXEFixture() })
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.dir
}

func makePXEFixture() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := initramfs.FindKernel("")
	if err != nil {
		return "", err
	}
	var img bytes.Buffer
	if _, err := initramfs.Build(ctx, initramfs.Config{Dir: ".."}, &img); err != nil {
		return "", err
	}
	dir := filepath.Join(fixtures.dir, "pxe")
	// The laptops' console is the serial port; panic=-1 ends QEMU at a
	// panic, as Laptop does for direct boots.
	pxe := initramfs.PXE{BaseURL: PXEBaseURL, Append: "console=ttyS0 panic=-1 quiet pbn.debug"}
	return dir, initramfs.WritePXE(dir, k, img.Bytes(), pxe)
}

// TestPXEBoot boots a laptop without a kernel or a disk from the lab's
// network: QEMU's iPXE gets its address and the script from dnsmasq
// (DHCP, TFTP), the kernel and the image over HTTP, and the agent starts
// in the imaging mode.
func TestPXEBoot(t *testing.T) {
	dir := pxeDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	lab := newLab(t)
	if _, err := lab.StartPXE(ctx, dir); err != nil {
		t.Fatalf("StartPXE = %v", err)
	}
	m, err := lab.Laptop(ctx, "blank", LaptopOptions{Console: &testWriter{t: t, name: "blank"}})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	expect(t, ctx, m, `pbn: PBN agent starting`)
	if _, ok := lab.Lease(m.MAC); !ok {
		t.Errorf("no DHCP lease for %s after a network boot", m.MAC)
	}
}
