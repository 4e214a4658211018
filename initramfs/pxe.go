package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pbn-project/pbn/pbn/cmdline"
)

// The files that WritePXE writes into its directory.
const (
	PXEKernel = "vmlinuz"   // the kernel image
	PXEImage  = "pbn.img"   // the initramfs
	PXEScript = "boot.ipxe" // the iPXE script that boots the two
)

// ImagingArgs is what the kernel command line of the PXE entry carries for
// the agent: the imaging mode (pbn.mode=, see package cmdline).
const ImagingArgs = "pbn.mode=" + string(cmdline.ModeImage)

// PXE describes the network boot entry that WritePXE writes.
type PXE struct {
	// BaseURL is where the kernel and the image are served from, an http
	// or https URL of the directory that holds them. Empty means next to
	// the script: iPXE resolves the names against the script's own URL,
	// over TFTP when the script came over TFTP.
	BaseURL string
	// Append is the rest of the kernel command line, after ImagingArgs:
	// console=, pbn.payload=, pbn.debug. It is one line of words that the
	// kernel splits at spaces.
	Append string
}

// WritePXE writes what a PXE or HTTP boot of the image needs into dir: the
// kernel k's image as PXEKernel, image as PXEImage, and PXEScript, an iPXE
// script whose kernel command line selects the imaging mode. The same
// inputs give the same bytes, and every file is dated at the epoch, like
// the image itself.
func WritePXE(dir string, k Kernel, image []byte, p PXE) error {
	script, err := p.script()
	if err != nil {
		return err
	}
	kernel, err := os.ReadFile(k.Image)
	if err != nil {
		return fmt.Errorf("pxe: the kernel: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pxe: %w", err)
	}
	for name, b := range map[string][]byte{PXEKernel: kernel, PXEImage: image, PXEScript: script} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return fmt.Errorf("pxe: %w", err)
		}
		if err := os.Chtimes(path, time.Unix(0, 0), time.Unix(0, 0)); err != nil {
			return fmt.Errorf("pxe: %w", err)
		}
	}
	return nil
}

// script returns the iPXE script (ipxe.org/scripting): the kernel with its
// command line, the initramfs named so that an EFI stub finds it through
// initrd=, and boot.
func (p PXE) script() ([]byte, error) {
	base, err := p.base()
	if err != nil {
		return nil, err
	}
	args := strings.Join(strings.Fields(ImagingArgs+" "+p.Append), " ")
	// iPXE expands ${...} in every line, and a line ends the command.
	if strings.ContainsAny(p.Append, "\n\r\x00") || strings.Contains(args, "${") {
		return nil, errors.New("pxe: the kernel command line must be one line without ${")
	}
	var b bytes.Buffer
	b.WriteString("#!ipxe\n")
	b.WriteString("# PBN imaging entry: the agent images this computer's disk.\n")
	fmt.Fprintf(&b, "kernel %s%s initrd=%s %s\n", base, PXEKernel, PXEImage, args)
	fmt.Fprintf(&b, "initrd --name %s %s%s\n", PXEImage, base, PXEImage)
	b.WriteString("boot\n")
	return b.Bytes(), nil
}

// base returns BaseURL checked and with a trailing slash, or "".
func (p PXE) base() (string, error) {
	if p.BaseURL == "" {
		return "", nil
	}
	u, err := url.Parse(p.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		strings.ContainsAny(p.BaseURL, " \t\n\r$") {
		return "", fmt.Errorf("pxe: base URL %q: want an http or https URL without spaces or $", p.BaseURL)
	}
	return strings.TrimSuffix(p.BaseURL, "/") + "/", nil
}
