package qemu

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/secret"
)

// Base is what every story in the lab starts from: the installed kernel,
// the PBN image built from the repository, and a template laptop disk
// whose LUKS2 volume holds the tiny OS, which Enterprise.Provision copies
// and re-keys for each device.
type Base struct {
	Kernel initramfs.Kernel
	// Image is the PBN initramfs, without an enterprise's configuration
	// (Enterprise.Image adds it).
	Image  string
	Report *initramfs.Report
	// Template made the disk at Template.Path; its LUKSKey stays set for
	// the life of the Base. It is zero with BaseOptions.ImageOnly.
	Template DiskSpec
}

// BaseOptions say where a Base is built and what its template's ESP holds.
type BaseOptions struct {
	// Repo is the repository's root, which the image is built from.
	Repo string
	// Dir receives the image, the template disk and the tiny OS.
	Dir string
	// ESPFiles go on the template disk's ESP, and LUKSKey is the key of
	// its volume (nil: a random one), which the Base then owns.
	ESPFiles map[string][]byte
	LUKSKey  secret.Bytes
	// Console receives the console of the guest that fills the template's
	// volume; nil discards it.
	Console io.Writer
	// ImageOnly builds the image alone, with no template disk (and no
	// guest boot to fill it): for laptops that PXE imaging sets up.
	ImageOnly bool
}

// templateLUKSMiB is the size of the template disk's LUKS2 partition.
const templateLUKSMiB = 12

// MakeBase builds a Base: the image (tens of seconds), the template disk
// and the guest boot that writes the tiny OS into its volume (unless
// opts.ImageOnly).
func MakeBase(ctx context.Context, opts BaseOptions) (*Base, error) {
	b := &Base{}
	var err error
	if b.Kernel, err = initramfs.FindKernel(""); err != nil {
		return nil, err
	}
	var img bytes.Buffer
	if b.Report, err = initramfs.Build(ctx, initramfs.Config{Dir: opts.Repo}, &img); err != nil {
		return nil, err
	}
	b.Image = filepath.Join(opts.Dir, "pbn.img")
	if err := os.WriteFile(b.Image, img.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if opts.ImageOnly {
		return b, nil
	}
	fde := opts.LUKSKey
	if fde == nil {
		fde = secret.Random(32)
	}
	b.Template = DiskSpec{Path: filepath.Join(opts.Dir, "laptop.img"), ESPMiB: 4, ESPFiles: opts.ESPFiles,
		LUKSMiB: templateLUKSMiB, LUKSUUID: imaging.NewUUID(), LUKSKey: fde}
	if err := MakeDisk(ctx, b.Template); err != nil {
		return nil, err
	}
	root := filepath.Join(opts.Dir, "tinyos.ext4")
	if err := TinyOSExt4(ctx, root, LUKSDataMiB(templateLUKSMiB)); err != nil {
		return nil, err
	}
	lab, err := New(ctx, Options{Console: opts.Console})
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	if err := lab.FillLUKS(ctx, b.Kernel.Image, b.Image, b.Template.Path, root, fde); err != nil {
		return nil, err
	}
	return b, nil
}

// StartWorld starts a lab with a DHCP server and the enterprise on it,
// building pbnd from repo into dir, and writes the enterprise's image,
// base's with the enterprise's configuration, into dir. The caller closes
// the enterprise's Lab.
func StartWorld(ctx context.Context, repo, dir string, base *Base, opts Options) (*Enterprise, string, error) {
	pbnd := filepath.Join(dir, "pbnd")
	if err := BuildPBND(ctx, repo, pbnd); err != nil {
		return nil, "", err
	}
	lab, err := New(ctx, opts)
	if err != nil {
		return nil, "", err
	}
	e, err := startWorld(ctx, lab, pbnd)
	if err != nil {
		lab.Close()
		return nil, "", err
	}
	image := filepath.Join(dir, "pbn-enterprise.img")
	if err := e.Image(base.Image, image); err != nil {
		lab.Close()
		return nil, "", err
	}
	return e, image, nil
}

func startWorld(ctx context.Context, lab *Lab, pbnd string) (*Enterprise, error) {
	if _, err := lab.StartDHCP(ctx); err != nil {
		return nil, err
	}
	return lab.StartEnterprise(ctx, EnterpriseOptions{PBND: pbnd})
}
