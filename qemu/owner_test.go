package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/config"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// The owner an administrator assigns before the imaging.
const (
	ownerUser     = "olivia"
	ownerPassword = "Own3r-horse-7"
)

// ownerRE is the imaging's line for an owner's key file written.
const ownerRE = `imaging: enrolled as device ([0-9a-f]{32}); key file of (\S+) ([0-9a-f]{32}) written`

// ownerImage writes the imaging image of e with the imaging
// configuration naming upn as the owner, and returns its bytes: the
// shared imaging image with its configuration replaced by a later
// archive, as the kernel unpacks them in order.
func ownerImage(t *testing.T, e *imagingLab, upn string) []byte {
	t.Helper()
	cfg := e.ent.Config()
	cfg.Imaging = &config.Imaging{Payload: ImagingURL("tinyos.ext4"), Kernel: ImagingURL("vmlinuz"),
		Image: ImagingURL("pbn.img"), ESPMiB: 32, Owner: upn}
	conf, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Naming the owner takes an administrator of the admin role: the
	// enrolment's answer holds the owner's keys, which the enrol-only
	// credential of the shared imaging image may not get.
	tmp := t.TempDir()
	admin, err := e.ent.adminFile(t.Context(), filepath.Join(tmp, config.ImagingAdminFile), "owner-imaging",
		store.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(tmp, "owner.img")
	dir := strings.TrimPrefix(config.Dir, "/")
	if err := appendArchive(p, e.path, []cpio.Record{
		cpio.StaticFile(path.Join(dir, config.ConfigFile), string(conf), 0o644),
		cpio.StaticFile(path.Join(dir, config.ImagingAdminFile), string(admin), 0o600)}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOwnerImaged images a blank laptop whose owner an administrator
// assigned in advance (the imaging configuration's owner): the key server
// looks the owner up and records her, and the imaging writes her key file,
// with no provisioning key file. At the next boot the deployed stage lists
// her; her first sign-in, online, seals the key file to the TPM and her
// password through the escrowed recovery key, and the tiny OS boots.
// Afterwards the ESP holds her key file alone, sealed, the volume one
// keyslot tagged with it, and the audit trail the first sign-in's reason.
//
// What it does not prove: that her first sign-in offline is refused
// (pbn/signin's TestOwnerKnownInAdvance, on the host), or that the imaging
// image's configuration cannot be replaced on the network (the PXE boot
// is not authenticated; Secure Boot would have to cover the image).
func TestOwnerImaged(t *testing.T) {
	e := sharedImagingLab(t)
	k, _, _ := pxeBase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	upn, err := e.ent.AddUser(ctx, ownerUser, ownerPassword)
	if err != nil {
		t.Fatal(err)
	}
	writePXE(t, e.pxe, ownerImage(t, e, upn), "")
	t.Cleanup(func() { writePXE(t, e.pxe, e.image, "") })

	disk := blankDisk(t)
	m := e.pxeLaptop(t, ctx, "owned", disk)
	got := expect(t, ctx, m, `imaging: /dev/vda, blank`, luksRE, ownerRE, `imaging: done in`)
	uuid, device := got[1][1], got[2][1]
	if got[2][2] != upn {
		t.Errorf("imaging wrote the key file of %s, want %s's", got[2][2], upn)
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want QEMU to end at the restart (-no-reboot)", err)
	}
	m.PowerCut() // the swtpm, which outlives QEMU
	id, err := keyfile.ParseID(device)
	if err != nil {
		t.Fatal(err)
	}
	dev := &Device{ID: id}
	info, err := e.ent.Admin.Device(ctx, id)
	if err != nil || len(info.Owners) != 1 || info.Owners[0].UPN != upn || !info.Owners[0].Primary {
		t.Fatalf("Device(%s) = %+v, %v; want %s as its primary owner", id, info, err, upn)
	}

	p, err := e.ent.Lab.Laptop(ctx, "owned-boot", LaptopOptions{Kernel: k.Image, Initrd: e.path,
		Disks: []string{disk}, TPMState: m.TPMDir, Console: &testWriter{t: t, name: "owned boot"},
		Append: "quiet pbn.debug rd.luks.uuid=" + uuid})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	expect(t, ctx, p, `pbn: keyfiles: 1 on /dev/vda1`, usersRE, `  1\. `+regexp.QuoteMeta(upn)+`\n`, signInRE)
	p.Console.Type("1\n")
	expect(t, ctx, p, `Password for `+regexp.QuoteMeta(upn)+`: `)
	p.Console.Type(ownerPassword + "\n")
	expect(t, ctx, p, `pbn: signed in as `+regexp.QuoteMeta(upn)+` \(confirmed online\)`, tinyOSRE)
	if err := p.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	p.PowerCut()

	files, slots, tags := imagedState(t, ctx, disk)
	if len(files) != 1 || files[0].Header().UPN != upn || files[0].Header().Kind != keyfile.KindUser {
		t.Fatalf("key files on the ESP %v, want %s's alone", files, upn)
	}
	f := files[0]
	if !slices.ContainsFunc(f.Protectors(), func(p keyfile.ProtectorInfo) bool {
		return slices.Contains(p.Factors, keyfile.FactorTPM) && slices.Contains(p.Factors, keyfile.FactorPassword)
	}) || f.Header().Generation < 2 {
		t.Errorf("her key file: protectors %+v, generation %d; want a TPM and password protector, sealed "+
			"after the imaging", f.Protectors(), f.Header().Generation)
	}
	if slots != 1 || len(tags) != 1 || !slices.Contains(slices.Collect(maps.Values(tags)), f.Header().ID) {
		t.Errorf("LUKS2 volume: %d keyslots, tags %v; want one, tagged %s", slots, tags, f.Header().ID)
	}
	reasons := []string{}
	for _, ev := range events(t, ctx, e.ent, dev, "signin") {
		reasons = append(reasons, ev.Detail["reason"])
	}
	if !slices.Contains(reasons, keyserver.ResealFirstSignIn) {
		t.Errorf("sign-in reasons in the audit trail %q, want %s", reasons, keyserver.ResealFirstSignIn)
	}
}

// imagedState reads an imaged disk from the host: the key files on its
// ESP (the GPT's first partition), parsed, and the keyslots and tags of
// the LUKS2 volume on its second.
func imagedState(t *testing.T, ctx context.Context, img string) ([]*keyfile.KeyFile, int, map[int]keyfile.ID) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := disk.ReadGPT(f)
	f.Close()
	if err != nil || len(parts) != 2 {
		t.Fatalf("ReadGPT = %v, %v; want two partitions", parts, err)
	}
	esp := fmt.Sprintf("%s@@%d", img, parts[0].FirstLBA*512)
	out, err := exec.CommandContext(ctx, "mdir", "-b", "-i", esp, "::"+disk.KeyDir).Output()
	if err != nil {
		t.Fatalf("mdir: %v", err)
	}
	var files []*keyfile.KeyFile
	for _, p := range strings.Fields(string(out)) {
		if !strings.HasSuffix(p, keyfile.Ext) {
			continue // the sign-in state, beside the key files
		}
		dst := filepath.Join(t.TempDir(), "kf")
		if err := run(ctx, "mcopy", "-n", "-i", esp, "::"+disk.KeyDir+"/"+path.Base(p), dst); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		kf, err := keyfile.Parse(b)
		if err != nil {
			t.Fatalf("%s on the ESP: %v", p, err)
		}
		files = append(files, kf)
	}

	root := filepath.Join(t.TempDir(), "root.img")
	if err := copyOut(root, img, int64(parts[1].FirstLBA*512),
		int64((parts[1].LastLBA-parts[1].FirstLBA+1)*512)); err != nil {
		t.Fatal(err)
	}
	cryptsetup, err := lookSbin("cryptsetup")
	if err != nil {
		t.Fatal(err)
	}
	v := disk.Keyslots{Cryptsetup: cryptsetup, Dev: root}
	tags, err := v.Tags(ctx)
	if err != nil {
		t.Fatalf("Tags = %v", err)
	}
	meta, err := exec.CommandContext(ctx, cryptsetup, "luksDump", "--dump-json-metadata", root).Output()
	if err != nil {
		t.Fatalf("luksDump: %v", err)
	}
	var m struct {
		Keyslots map[string]json.RawMessage `json:"keyslots"`
	}
	if err := json.Unmarshal(meta, &m); err != nil {
		t.Fatal(err)
	}
	return files, len(m.Keyslots), tags
}
