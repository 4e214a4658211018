package handoff

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/internal/testenv"
)

func TestFindInit(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755)
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.WriteFile(filepath.Join(root, "lib/systemd/systemd"), []byte("#!"), 0o755)
	os.WriteFile(filepath.Join(root, "sbin/notexec"), []byte("#!"), 0o644)
	// Debian's /sbin/init is a relative link to systemd.
	os.Symlink("../lib/systemd/systemd", filepath.Join(root, "sbin/init"))
	os.Symlink("/nowhere", filepath.Join(root, "sbin/dangling"))

	tests := []struct {
		given, want string
		wantErr     bool
	}{
		{"", "/sbin/init", false},
		{"/lib/systemd/systemd", "/lib/systemd/systemd", false},
		{"/sbin/notexec", "", true},
		{"/sbin/dangling", "", true},
	}
	for _, tt := range tests {
		got, err := FindInit(root, tt.given)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("FindInit(%q) = %q, %v; want %q, error %v", tt.given, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := FindInit(t.TempDir(), ""); err == nil {
		t.Errorf("FindInit(empty root) = nil error, want one")
	}
}

// TestEmpty empties a tmpfs as SwitchRoot empties the initramfs, with a
// second file system mounted inside it that must be left alone.
func TestEmpty(t *testing.T) {
	testenv.Root(t)
	dir := t.TempDir()
	ramfs := filepath.Join(dir, "initramfs")
	os.Mkdir(ramfs, 0o755)
	mustMount(t, ramfs)
	for _, p := range []string{"bin/pbn", "lib/modules/x/y.ko", "etc/resolv.conf"} {
		os.MkdirAll(filepath.Join(ramfs, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(ramfs, p), []byte("x"), 0o644)
	}
	os.Symlink("/bin/pbn", filepath.Join(ramfs, "init"))
	newRoot := filepath.Join(ramfs, "newroot")
	os.Mkdir(newRoot, 0o755)
	mustMount(t, newRoot)
	os.WriteFile(filepath.Join(newRoot, "keep"), []byte("x"), 0o644)

	var a, b unix.Stat_t
	unix.Stat(ramfs, &a)
	unix.Stat(newRoot, &b)
	Empty(ramfs, a.Dev, b.Dev)

	left, _ := os.ReadDir(ramfs)
	if len(left) != 1 || left[0].Name() != "newroot" {
		t.Errorf("after Empty the initramfs holds %v, want only newroot", left)
	}
	if _, err := os.Stat(filepath.Join(newRoot, "keep")); err != nil {
		t.Errorf("Empty reached into the new root: %v", err)
	}
}

func mustMount(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

func TestSwitchRootRefusesNonInitramfs(t *testing.T) {
	var st unix.Statfs_t
	if unix.Statfs("/", &st) != nil || st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC {
		t.Skip("the test's own root is an initramfs")
	}
	// What this does not prove: that the switch itself works; the QEMU
	// boot tests do that as PID 1.
	if err := SwitchRoot(t.TempDir(), "/sbin/init", nil); err != ErrNotInitramfs {
		t.Errorf("SwitchRoot() on a disk root = %v, want ErrNotInitramfs", err)
	}
}
