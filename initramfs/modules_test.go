package initramfs

import (
	"slices"
	"strings"
	"testing"
)

func TestClosure(t *testing.T) {
	idx, err := readModuleIndex("testdata/modules")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		names []string
		want  []string
	}{
		{"hard dependencies", []string{"virtio_net"}, []string{
			"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko", "kernel/net/core/failover.ko"}},
		{"soft dependency through an alias", []string{"ext4"}, []string{
			"kernel/crypto/crc32c_generic.ko", "kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko",
			"kernel/fs/mbcache.ko", "kernel/lib/crc16.ko"}},
		{"dash and underscore are one", []string{"usb-storage"}, []string{"kernel/drivers/usb/storage/usb-storage.ko"}},
		{"built in adds nothing", []string{"dm_mod", "sha256-generic"}, []string{}},
		{"shared dependency once", []string{"virtio_net", "net_failover"}, []string{
			"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko", "kernel/net/core/failover.ko"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := idx.closure(tt.names)
			if err != nil {
				t.Fatalf("closure(%q) = %v", tt.names, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("closure(%q) = %q, want %q", tt.names, got, tt.want)
			}
		})
	}
}

func TestClosureMissing(t *testing.T) {
	idx, err := readModuleIndex("testdata/modules")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := idx.closure([]string{"virtio_net", "no_such_driver"}); err == nil {
		t.Errorf("closure(no_such_driver) = %q, want an error", got)
	}
}

func TestIndexFiles(t *testing.T) {
	files, err := indexFiles("testdata/modules", []string{"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/net/virtio_net.ko", "kernel/net/core/failover.ko"})
	if err != nil {
		t.Fatal(err)
	}
	wantDep := "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
		"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
		"kernel/net/core/failover.ko:\n"
	if got := string(files["modules.dep"]); got != wantDep {
		t.Errorf("modules.dep = %q, want %q", got, wantDep)
	}
	if got, want := string(files["modules.alias"]), "alias virtio:d00000001v* virtio_net\n"; got != want {
		t.Errorf("modules.alias = %q, want %q", got, want)
	}
	if got := string(files["modules.builtin"]); !strings.Contains(got, "dm-mod.ko") {
		t.Errorf("modules.builtin = %q, want the whole file", got)
	}
}

func TestParseModulesDepRejects(t *testing.T) {
	for _, in := range []string{
		"kernel/a.ko kernel/b.ko\n", // no colon
		"/abs/a.ko:\n",              // absolute
		"kernel/../../etc/a.ko:\n",  // escapes the directory
		"kernel/a.ko: ../b.ko\n",    // dependency escapes
		"kernel/a.txt:\n",           // not a module
		": kernel/a.ko\n",           // no module
	} {
		if got, err := parseModulesDep(strings.NewReader(in)); err == nil {
			t.Errorf("parseModulesDep(%q) = %v, want an error", in, got)
		}
	}
}

func FuzzParseModulesDep(f *testing.F) {
	f.Add("kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n")
	f.Add("# comment\n\nkernel/a.ko.xz:\n")
	f.Add("kernel/a.ko:b.ko c.ko\n")
	f.Fuzz(func(t *testing.T, in string) {
		dep, err := parseModulesDep(strings.NewReader(in))
		if err != nil {
			return
		}
		for mod, deps := range dep {
			for _, p := range append([]string{mod}, deps...) {
				if !validModulePath(p) {
					t.Errorf("parseModulesDep(%q) accepted path %q", in, p)
				}
			}
		}
	})
}

func FuzzParseSoftdep(f *testing.F) {
	f.Add("softdep ext4 pre: crypto-crc32c\n")
	f.Add("softdep a pre: b post: c d\nsoftdep\n")
	f.Fuzz(func(t *testing.T, in string) {
		soft, err := parseSoftdep(strings.NewReader(in))
		if err != nil {
			return
		}
		for name, deps := range soft {
			for _, d := range append([]string{name}, deps...) {
				if strings.Contains(d, "-") || d == "pre:" || d == "post:" {
					t.Errorf("parseSoftdep(%q) gave name %q", in, d)
				}
			}
		}
	})
}
