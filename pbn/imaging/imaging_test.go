package imaging

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/secret"
)

const testSize = 64 << 20

// image returns a sparse file of size bytes: a blank disk.
func image(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(testenv.Command(t, name), args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func TestPlan(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run(strconv.Itoa(sector), func(t *testing.T) {
			l, err := Plan(testSize, sector, 16)
			if err != nil {
				t.Fatalf("Plan = %v", err)
			}
			mib := uint64(1<<20) / uint64(sector)
			if l.ESP.FirstLBA != mib || l.ESP.LastLBA != 17*mib-1 || l.Root.FirstLBA != 17*mib {
				t.Errorf("ESP %d-%d, root from %d; want 1 MiB to 17 MiB, root after", l.ESP.FirstLBA, l.ESP.LastLBA, l.Root.FirstLBA)
			}
			// The last MiB holds the backup table, so the root ends a MiB
			// short of the disk's end.
			if got, want := l.RootBytes(), int64(testSize-18<<20); got != want {
				t.Errorf("RootBytes = %d, want %d", got, want)
			}
			if again, _ := Plan(testSize, sector, 16); again.DiskGUID == l.DiskGUID || again.Root.GUID == l.Root.GUID {
				t.Errorf("two plans share GUIDs: %s, %s", l.DiskGUID, l.Root.GUID)
			}
		})
	}
	for _, tt := range []struct {
		size          int64
		sector, espMB int
	}{{testSize, 1024, 16}, {testSize, 512, 0}, {20 << 20, 512, 16}} {
		if _, err := Plan(tt.size, tt.sector, tt.espMB); err == nil {
			t.Errorf("Plan(%d, %d, %d) = nil error, want one", tt.size, tt.sector, tt.espMB)
		}
	}
}

// TestInspect inspects disks that the real tools wrote: blank, PBN's own
// table, another table (sgdisk), file systems and a LUKS2 header written
// over the whole disk, an MBR, and random data.
func TestInspect(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		make  func(t *testing.T, p string)
		state State
		what  string
	}{
		{"blank", func(*testing.T, string) {}, Blank, ""},
		{"ours", func(t *testing.T, p string) {
			l, err := Plan(testSize, 512, 16)
			if err != nil {
				t.Fatal(err)
			}
			writeLayout(t, p, l)
		}, Ours, ""},
		{"another gpt", func(t *testing.T, p string) {
			run(t, "sgdisk", "--new=1:2048:+8M", "--typecode=1:EF00", "--new=2:0:+8M", "--new=3:0:0", p)
		}, Foreign, "a GPT partition table with 3 partitions"},
		{"ours renamed", func(t *testing.T, p string) {
			l, _ := Plan(testSize, 512, 16)
			writeLayout(t, p, l)
			run(t, "sgdisk", "--change-name=2:home", p)
		}, Foreign, "a GPT partition table with 2 partitions"},
		{"ext4", func(t *testing.T, p string) { run(t, "mkfs.ext4", "-q", "-F", p) }, Foreign, "an ext4 file system"},
		{"fat", func(t *testing.T, p string) { run(t, "mkfs.vfat", p) }, Foreign, "a FAT file system"},
		{"luks", func(t *testing.T, p string) {
			if err := disk.FormatLUKS(ctx, testenv.Command(t, "cryptsetup"), p, NewUUID(), secret.Random(64)); err != nil {
				t.Fatal(err)
			}
		}, Foreign, "a LUKS encrypted volume"},
		{"mbr", func(t *testing.T, p string) {
			run(t, "sgdisk", "--new=1:2048:+8M", p)
			run(t, "sgdisk", "--gpttombr=1", p)
		}, Foreign, "an MBR partition table"},
		{"random", func(t *testing.T, p string) {
			b := make([]byte, 4096)
			rand.Read(b)
			writeAt(t, p, b, 64<<10)
		}, Foreign, "data in its first MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := image(t, testSize)
			tt.make(t, p)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := Inspect(f)
			if err != nil || got.State != tt.state || got.What != tt.what {
				t.Errorf("Inspect = %+v, %v; want state %d, %q", got, err, tt.state, tt.what)
			}
		})
	}
}

func writeLayout(t *testing.T, p string, l Layout) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := l.Write(f); err != nil {
		t.Fatalf("Write = %v", err)
	}
}

func writeAt(t *testing.T, p string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestRefuse checks the rules of what imaging may overwrite.
func TestRefuse(t *testing.T) {
	ext4 := Finding{State: Foreign, What: "an ext4 file system"}
	tests := []struct {
		name                string
		f                   Finding
		finished, overwrite bool
		refused             bool
	}{
		{"blank", Finding{State: Blank}, false, false, false},
		{"cut off", Finding{State: Ours}, false, false, false},
		{"finished", Finding{State: Ours}, true, false, true},
		{"finished, overwrite", Finding{State: Ours}, true, true, false},
		{"data", ext4, false, false, true},
		{"data, overwrite", ext4, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Refuse(tt.f, tt.finished, tt.overwrite)
			var re *RefusedError
			if got := errors.As(err, &re); got != tt.refused {
				t.Fatalf("Refuse = %v, refused %v; want %v", err, got, tt.refused)
			}
			if re != nil && (!strings.HasSuffix(re.Sentence(), ".") || !strings.Contains(re.Sentence(), "left as it is")) {
				t.Errorf("Sentence = %q, want a sentence that says the disk was left alone", re.Sentence())
			}
		})
	}
	if err := Refuse(ext4, false, false); !strings.Contains(err.Error(), "ext4") {
		t.Errorf("Refuse(ext4) = %v, want the finding named", err)
	}
}

func TestFinished(t *testing.T) {
	esp := t.TempDir()
	if done, err := Finished(esp); err != nil || done {
		t.Errorf("Finished(empty esp) = %v, %v; want false", done, err)
	}
	dir := filepath.Join(esp, disk.KeyDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if done, err := Finished(esp); err != nil || done {
		t.Errorf("Finished(esp without a key file) = %v, %v; want false", done, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "provisioning.pbk"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if done, err := Finished(esp); err != nil || !done {
		t.Errorf("Finished(esp with a key file) = %v, %v; want true", done, err)
	}
}

func TestFetch(t *testing.T) {
	payload := make([]byte, 3<<20+17)
	rand.Read(payload)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/os.img":
			http.ServeContent(w, r, "os.img", time.Time{}, bytes.NewReader(payload))
		case "/short":
			// A server that dies half way: the length announced, half sent.
			w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
			w.Write(payload[:len(payload)/2])
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	var reports []Progress
	p, err := Fetch(ctx, srv.Client(), srv.URL+"/os.img", &out, 0, time.Nanosecond, func(p Progress) {
		reports = append(reports, p)
	})
	if err != nil || !bytes.Equal(out.Bytes(), payload) {
		t.Fatalf("Fetch = %d bytes, %v; want the %d of the payload", out.Len(), err, len(payload))
	}
	if p.Done != int64(len(payload)) || p.Total != p.Done || p.Rate() <= 0 {
		t.Errorf("Fetch progress = %+v, want all %d bytes at a rate", p, len(payload))
	}
	if len(reports) < 2 || reports[len(reports)-1] != p {
		t.Errorf("reports = %v, want several, the last the final progress", reports)
	}
	if s := p.String(); !strings.Contains(s, "3.0 of 3.0 MiB, ") || !strings.HasSuffix(s, " MiB/s") {
		t.Errorf("Progress.String() = %q, want sizes and a rate", s)
	}

	tests := []struct {
		name  string
		path  string
		limit int64
		check func(error) bool
	}{
		{"too large", "/os.img", 1 << 20, func(err error) bool { return errors.Is(err, ErrTooLarge) }},
		{"not found", "/nothing", 0, func(err error) bool { var h *HTTPError; return errors.As(err, &h) }},
		{"cut off", "/short", 0, func(err error) bool { return err != nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Fetch(ctx, srv.Client(), srv.URL+tt.path, &bytes.Buffer{}, tt.limit, 0, nil); !tt.check(err) {
				t.Errorf("Fetch(%s) = %v", tt.path, err)
			}
		})
	}
}

// FuzzInspect feeds Inspect arbitrary disk starts: it never panics and
// names what it refuses.
func FuzzInspect(f *testing.F) {
	f.Add(make([]byte, 4096))
	mbr := make([]byte, 1024)
	mbr[510], mbr[511] = 0x55, 0xaa
	f.Add(mbr)
	gpt := make([]byte, 64<<10)
	copy(gpt[512:], "EFI PART")
	f.Add(gpt)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Inspect(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("Inspect = %v, want no error from a reader", err)
		}
		if (got.State == Foreign) != (got.What != "") {
			t.Errorf("Inspect = %+v: a foreign disk, and only it, says what it holds", got)
		}
	})
}
