package initramfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/ldd"

	"github.com/pbn-project/pbn/internal/testenv"
)

// fixture is the image every test here shares: building one takes tens
// of seconds on two cores.
var fixture struct {
	once   sync.Once
	cfg    Config
	image  []byte
	report *Report
	err    error
}

// testConfig is the configuration of the shared image: the agent and a
// configuration file.
func testConfig(t testing.TB) Config {
	t.Helper()
	testenv.Command(t, "go")
	testenv.Command(t, "cryptsetup")
	if _, err := FindKernel(""); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	conf := filepath.Join(os.TempDir(), "pbn-initramfs-test.conf")
	if err := os.WriteFile(conf, []byte("server = pbnd.lab\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{Dir: "..", Files: []File{{Src: conf, Dst: "etc/pbn/pbn.conf"}}}
}

func testImage(t testing.TB) ([]byte, *Report, Config) {
	t.Helper()
	cfg := testConfig(t)
	fixture.once.Do(func() {
		fixture.cfg = cfg
		var b bytes.Buffer
		fixture.report, fixture.err = Build(context.Background(), cfg, &b)
		fixture.image = b.Bytes()
	})
	if fixture.err != nil {
		t.Fatalf("Build = %v", fixture.err)
	}
	return fixture.image, fixture.report, fixture.cfg
}

// entries returns the image's archive entries by name.
func entries(t *testing.T, img []byte) (map[string]cpio.Record, map[string][]byte) {
	t.Helper()
	archive, err := Zstd.decompress(img)
	if err != nil {
		t.Fatal(err)
	}
	recs, data, err := readArchive(archive)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	content := map[string][]byte{}
	for i, r := range recs {
		byName[r.Name] = r
		content[r.Name] = data[i]
	}
	return byName, content
}

func TestBuildReproducible(t *testing.T) {
	img, _, cfg := testImage(t)
	var again bytes.Buffer
	if _, err := Build(context.Background(), cfg, &again); err != nil {
		t.Fatalf("Build (again) = %v", err)
	}
	if !bytes.Equal(img, again.Bytes()) {
		t.Errorf("two builds of the same inputs differ: %d and %d bytes", len(img), again.Len())
	}
}

func TestBuildWithinBudget(t *testing.T) {
	img, rep, _ := testImage(t)
	const budget = 12 << 20 // DESIGN.md: at most 12 MiB compressed
	if len(img) > budget {
		t.Errorf("image is %d bytes compressed, budget %d", len(img), budget)
	}
	if rep.Compressed != int64(len(img)) {
		t.Errorf("report says %d bytes compressed, image is %d", rep.Compressed, len(img))
	}
	var sum int64
	for _, p := range rep.Parts {
		sum += p.Size
	}
	if sum == 0 || sum > rep.Size {
		t.Errorf("parts add up to %d bytes, archive is %d", sum, rep.Size)
	}
	var table strings.Builder
	rep.WriteTo(&table)
	t.Logf("size report:\n%s", table.String())
}

func TestBuildContents(t *testing.T) {
	img, rep, _ := testImage(t)
	recs, content := entries(t, img)
	mods := "lib/modules/" + rep.Kernel.Version + "/"

	libs, err := ldd.FList(DefaultCryptsetup)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"init", "bbin/bb", "bbin/pbn", "dev/console", CryptsetupPath, MkfsVFATPath,
		"etc/pbn/pbn.conf", mods + "modules.dep", mods + "modules.alias", mods + "modules.builtin"}
	for _, lib := range libs {
		want = append(want, strings.TrimPrefix(lib, "/"))
	}
	for _, name := range want {
		if _, ok := recs[name]; !ok {
			t.Errorf("image lacks %s", name)
		}
	}
	// The tag BuildTag leaves the key server's database drivers out.
	for _, pkg := range []string{"modernc.org/sqlite", "github.com/jackc/pgx"} {
		if bytes.Contains(content["bbin/bb"], []byte(pkg)) {
			t.Errorf("bbin/bb links %s", pkg)
		}
	}
	if got := string(content["init"]); got != "bbin/pbn" {
		t.Errorf("/init links to %q, want bbin/pbn", got)
	}
	if got := string(content["etc/pbn/pbn.conf"]); got != "server = pbnd.lab\n" {
		t.Errorf("etc/pbn/pbn.conf = %q, want the host file", got)
	}

	dep := string(content[mods+"modules.dep"])
	for _, m := range []string{"virtio_net.ko:", "e1000e.ko:", "nvme.ko:", "ext4.ko:", "xts.ko:", "vfat.ko:"} {
		if !strings.Contains(dep, m) {
			t.Errorf("modules.dep has no %s", m)
		}
	}
	for line := range strings.Lines(dep) {
		mod, deps, _ := strings.Cut(strings.TrimSpace(line), ":")
		for _, p := range append([]string{mod}, strings.Fields(deps)...) {
			if _, ok := recs[mods+p]; !ok {
				t.Errorf("modules.dep names %s, which the image lacks", p)
			}
		}
	}
	if !strings.Contains(string(content[mods+"modules.alias"]), " virtio_net\n") {
		t.Errorf("modules.alias has no alias for virtio_net")
	}

	for name, r := range recs {
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want all 0", name, r.MTime, r.UID, r.GID)
		}
	}
	for name, b := range content {
		if bytes.Contains(b, []byte("/work/")) || bytes.Contains(b, []byte(os.TempDir()+"/pbn-image")) {
			t.Errorf("%s holds a build path", name)
		}
	}
}

// TestKernelUnpacks checks that the kernel's own decoder reads the image:
// the kernel of the host cannot be asked, so the test runs the reference
// zstd decoder over it, which enforces the same frame rules.
func TestKernelUnpacks(t *testing.T) {
	img, _, _ := testImage(t)
	zstd := testenv.Command(t, "zstd")
	cmd := exec.Command(zstd, "-d", "-c")
	cmd.Stdin = bytes.NewReader(img)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("zstd -d = %v", err)
	}
	archive, err := Zstd.decompress(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), archive) {
		t.Errorf("zstd -d gives %d bytes, want the %d of the archive", out.Len(), len(archive))
	}
}

func TestCompressionsRoundTrip(t *testing.T) {
	in := bytes.Repeat([]byte("pbn initramfs "), 1000)
	for _, c := range Compressions {
		t.Run(string(c), func(t *testing.T) {
			z, err := c.compress(in)
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.decompress(z)
			if err != nil || !bytes.Equal(out, in) {
				t.Errorf("decompress(compress(x)) = %d bytes, %v; want %d bytes", len(out), err, len(in))
			}
		})
	}
}

// BenchmarkCompression compresses the shared image's archive with each
// compression and reports its size and the time to unpack it in Go (the
// kernel's decoders are of the same families, so the order holds).
func BenchmarkCompression(b *testing.B) {
	img, _, _ := testImage(b)
	archive, err := Zstd.decompress(img)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []Compression{Zstd, XZ, Gzip} {
		b.Run(string(c), func(b *testing.B) {
			z, err := c.compress(archive)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.decompress(z); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(z))/(1<<20), "MiB")
		})
	}
}

// BenchmarkImageSize reports the image's compressed size beside Debian's
// own initramfs for the same kernel (/boot/initrd.img-KVER, made by
// initramfs-tools), and the size of each part.
func BenchmarkImageSize(b *testing.B) {
	img, rep, _ := testImage(b)
	debian, err := os.Stat(rep.Kernel.Initrd)
	if rep.Kernel.Initrd == "" || err != nil {
		b.Skipf("no Debian initramfs for %s to compare with", rep.Kernel.Version)
	}
	for b.Loop() {
		// The figures come from the shared build; there is nothing to
		// repeat.
	}
	b.ReportMetric(float64(len(img))/(1<<20), "MiB")
	b.ReportMetric(float64(debian.Size())/(1<<20), "baseline-MiB")
	for _, p := range rep.Parts {
		if p.Compressed > 0 && p.Part != PartOther {
			b.ReportMetric(float64(p.Compressed)/(1<<20), string(p.Part)+"-MiB")
		}
	}
}
