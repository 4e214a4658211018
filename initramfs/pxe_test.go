package initramfs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/pbn/cmdline"
)

// fakeKernel writes a file that stands in for a kernel image: WritePXE
// copies it without looking inside.
func fakeKernel(t *testing.T) Kernel {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(p, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Kernel{Version: "6.1.0-test", Image: p}
}

func TestWritePXE(t *testing.T) {
	k := fakeKernel(t)
	image := []byte("image bytes")
	tests := []struct {
		name       string
		pxe        PXE
		kernelLine string
	}{
		{"next to the script", PXE{Append: "console=ttyS0  pbn.debug"},
			"kernel vmlinuz initrd=pbn.img pbn.mode=image console=ttyS0 pbn.debug\n"},
		{"http base", PXE{BaseURL: "http://10.99.0.1/pbn", Append: "pbn.payload=https://img.lab/os.img"},
			"kernel http://10.99.0.1/pbn/vmlinuz initrd=pbn.img pbn.mode=image pbn.payload=https://img.lab/os.img\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pxe")
			if err := WritePXE(dir, k, image, tt.pxe); err != nil {
				t.Fatalf("WritePXE = %v", err)
			}
			for name, want := range map[string]string{PXEKernel: "kernel bytes", PXEImage: "image bytes"} {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || string(got) != want {
					t.Errorf("%s = %q, %v; want %q", name, got, err, want)
				}
			}
			script, err := os.ReadFile(filepath.Join(dir, PXEScript))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(script, []byte("#!ipxe\n")) || !bytes.HasSuffix(script, []byte("\nboot\n")) {
				t.Errorf("script = %q, want #!ipxe first and boot last", script)
			}
			var kernelLine string
			for line := range strings.Lines(string(script)) {
				if strings.HasPrefix(line, "kernel ") {
					kernelLine = line
				}
			}
			if kernelLine != tt.kernelLine {
				t.Errorf("kernel line = %q, want %q", kernelLine, tt.kernelLine)
			}

			// The agent takes the command line as it is.
			args := strings.SplitN(strings.TrimSpace(kernelLine), " ", 3)[2]
			c, err := cmdline.Parse(args)
			if err != nil || c.PBN.Mode != cmdline.ModeImage {
				t.Errorf("cmdline.Parse(%q) = %+v, %v; want the imaging mode", args, c, err)
			}
			fi, err := os.Stat(filepath.Join(dir, PXEScript))
			if err != nil || fi.ModTime().Unix() != 0 {
				t.Errorf("script dated %v, %v; want the epoch", fi.ModTime(), err)
			}
		})
	}
}

func TestWritePXEReproducible(t *testing.T) {
	k := fakeKernel(t)
	var got [2][]byte
	for i := range got {
		dir := t.TempDir()
		if err := WritePXE(dir, k, []byte("image"), PXE{BaseURL: "https://boot.lab/"}); err != nil {
			t.Fatal(err)
		}
		var err error
		if got[i], err = os.ReadFile(filepath.Join(dir, PXEScript)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Errorf("two scripts of the same inputs differ:\n%s\n%s", got[0], got[1])
	}
}

func TestWritePXERefuses(t *testing.T) {
	k := fakeKernel(t)
	tests := []struct {
		name string
		pxe  PXE
	}{
		{"tftp base", PXE{BaseURL: "tftp://10.99.0.1/"}},
		{"base without host", PXE{BaseURL: "http:///pbn"}},
		{"base with a variable", PXE{BaseURL: "http://${next-server}/"}},
		{"two lines", PXE{Append: "quiet\nshell"}},
		{"variable in the command line", PXE{Append: "pbn.payload=${url}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pxe")
			if err := WritePXE(dir, k, nil, tt.pxe); err == nil {
				t.Errorf("WritePXE(%+v) = nil, want an error", tt.pxe)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("WritePXE(%+v) made %s before it refused", tt.pxe, dir)
			}
		})
	}
}
