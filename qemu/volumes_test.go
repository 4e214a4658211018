package qemu

import (
	"context"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/secret"
)

// TestDataVolumes boots the shared laptop disk with a second disk beside
// it, whose two LUKS2 volumes the command line names after the root's,
// with a third volume that is on no disk. The volume keyed for alice's FDE
// secret opens as data; the one keyed for another secret and the missing
// one are each said on the console, and the boot goes on: the tiny OS
// boots from the root's volume and sees it and data mapped, and no other.
//
// It does not prove that the data volume's contents decrypt to anything
// (nothing was written into it: cryptsetup checks the key against the
// header's digest, which is what opening means), nor that a volume keyed
// for the provisioning key file still opens after the secure moment (it
// does not, see the TODO in cmds/pbn/volumes.go).
func TestDataVolumes(t *testing.T) {
	k, img, disk, uuid := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	data := filepath.Join(t.TempDir(), "data.img")
	vols := []DataVolume{
		{MiB: 4, UUID: imaging.NewUUID(), Key: pbnFixture.spec.LUKSKey}, // alice's FDE secret
		{MiB: 4, UUID: imaging.NewUUID(), Key: secret.Random(32)},
	}
	if err := MakeDataDisk(ctx, data, vols); err != nil {
		t.Fatalf("MakeDataDisk = %v", err)
	}
	gone := imaging.NewUUID()

	lab := newLab(t)
	if _, err := lab.StartDHCP(ctx); err != nil {
		t.Fatalf("StartDHCP = %v", err)
	}
	// A short device timeout bounds the wait for the missing volume.
	m, err := lab.Laptop(ctx, "laptop", LaptopOptions{Kernel: k.Image, Initrd: img, Disks: []string{disk, data},
		Console: &testWriter{t: t, name: "laptop"},
		Append: "quiet ro pbn.debug pbn.devtimeout=3s rd.luks.uuid=" + uuid + " rd.luks.name=" + vols[0].UUID +
			"=data rd.luks.name=" + vols[1].UUID + "=other rd.luks.name=" + gone + "=gone"})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	expect(t, ctx, m, promptRE)
	if err := m.Console.Type(testPassword + "\n"); err != nil {
		t.Fatal(err)
	}
	got := expect(t, ctx, m,
		`pbn: disk: \S+ opened as /dev/mapper/luks-`+uuid+`\n`,
		`pbn: disk: /dev/vdb1 opened as /dev/mapper/data\n`,
		`The encrypted disk other does not open with your key, so the computer starts without it.`,
		`The encrypted disk gone could not be found, so the computer starts without it.`,
		TinyOSBanner+` on \S+, root (\S+)\n`,
		regexp.QuoteMeta(MapperLine)+`([^\n]*)\n`,
		regexp.QuoteMeta(TimingBegin)+`\n((?s:.*?))`+regexp.QuoteMeta(TimingEnd))
	if root := got[4][1]; root != "/dev/mapper/luks-"+uuid && !strings.HasPrefix(root, "/dev/dm-") {
		t.Errorf("tiny OS root = %s, want the root's volume", root)
	}
	mapped := slices.DeleteFunc(strings.Fields(got[5][1]), func(s string) bool { return s == "control" })
	slices.Sort(mapped)
	if want := []string{"data", "luks-" + uuid}; !slices.Equal(mapped, want) {
		t.Errorf("/dev/mapper in the tiny OS = %q, want %q", mapped, want)
	}
	phase := ParseTiming(got[6][1]).Phases["disk"]
	t.Logf("disk step: %.0f ms, the wait for the missing volume included", phase[1]-phase[0])
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
}
