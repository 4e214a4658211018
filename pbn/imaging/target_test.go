package imaging

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pbn-project/pbn/pbn/disk"
)

// TestFixedDisks lays out a sysfs block class as the kernel does, devices
// linked from /sys/class/block, and checks which disks imaging may take.
func TestFixedDisks(t *testing.T) {
	root := t.TempDir()
	block, dev := filepath.Join(root, "class/block"), filepath.Join(root, "dev")
	for _, dir := range []string{block, dev} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	devices := []struct {
		path            string // under devices/
		size, removable string
		partition       bool
	}{
		{"vdb", "2048", "0", false},
		{"vda", "131072", "0", false},
		{"vda/vda1", "2048", "", true},
		{"sda", "4096", "1", false}, // a USB stick
		{"loop0", "1024", "0", false},
		{"sr0", "2048", "1", false},
		{"nvme0n1", "0", "0", false}, // no medium: size 0
	}
	for _, d := range devices {
		dir := filepath.Join(root, "devices", d.path)
		files := map[string]string{"size": d.size}
		if d.removable != "" {
			files["removable"] = d.removable
		}
		if d.partition {
			files["partition"] = "1"
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(dir, filepath.Join(block, filepath.Base(d.path))); err != nil {
			t.Fatal(err)
		}
	}

	got, err := FixedDisks(disk.Sysfs{Block: block, Dev: dev})
	want := []string{filepath.Join(dev, "vda"), filepath.Join(dev, "vdb")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("FixedDisks = %q, %v; want %q", got, err, want)
	}
}
