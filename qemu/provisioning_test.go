package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

// The lines of the provisioning stage that the scenarios wait for.
const (
	countdownRE = `Booting unattended in (\d+) s\. Press Enter to sign in\.`
	autobootRE  = `pbn: unlock: unattended boot\n`
	accountRE   = `Account: `
	tinyOSRE    = TinyOSBanner + ` on \S+, root (\S+)\n`
)

// provisioned provisions a laptop named name in the shared enterprise,
// which the caller has started (sharedEnterprise: its time is not the
// boot's), and starts it with the enterprise's image: its console goes to
// the test with the agent's debug log.
func provisioned(t *testing.T, ctx context.Context, name string, opts LaptopOptions) (*Device, *Laptop) {
	t.Helper()
	e, image := sharedEnterprise(t)
	dev, err := e.Provision(ctx, name, ProvisionOptions{Template: pbnFixture.spec})
	if err != nil {
		t.Fatalf("Provision = %v", err)
	}
	return dev, startProvisioned(t, ctx, e.Lab, image, dev, opts)
}

// startProvisioned starts the laptop of dev on lab.
func startProvisioned(t *testing.T, ctx context.Context, lab *Lab, image string, dev *Device, opts LaptopOptions) *Laptop {
	t.Helper()
	k, _, _, _ := pbnDisk(t)
	opts.Kernel, opts.Initrd, opts.Disks, opts.TPMState = k.Image, image, []string{dev.Disk}, dev.TPMDir
	if opts.Console == nil {
		opts.Console = &testWriter{t: t, name: dev.Name}
	}
	opts.Append = strings.TrimSpace("quiet pbn.debug rd.luks.uuid=" + dev.LUKSUUID + " " + opts.Append)
	m, err := lab.Laptop(ctx, dev.Name, opts)
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	return m
}

// events returns the key server's audit events of a kind for a device.
func events(t *testing.T, ctx context.Context, e *Enterprise, dev *Device, kind string) []store.Event {
	t.Helper()
	var got []store.Event
	err := e.Admin.Audit(ctx, keyserver.AuditQuery{}, func(ev store.Event) error {
		if ev.Kind == kind && ev.Device == dev.ID.String() {
			got = append(got, ev)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	return got
}

// TestAutoboot boots a provisioned laptop and presses nothing: the sign-in
// prompt counts down from the image's countdown, the provisioning key file
// opens with the key server's help, and the tiny OS boots from the opened
// volume. The key server recorded the unlock with the device and the
// address it leased.
func TestAutoboot(t *testing.T) {
	e, _ := sharedEnterprise(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	dev, m := provisioned(t, ctx, "auto1", LaptopOptions{})

	got := expect(t, ctx, m, networkRE, countdownRE, autobootRE, tinyOSRE)
	if want := fmt.Sprint(DefaultCountdown.Seconds()); got[1][1] != want {
		t.Errorf("the countdown started at %s s, want %s", got[1][1], want)
	}
	if root := got[3][1]; !strings.HasPrefix(root, "/dev/mapper/") && !strings.HasPrefix(root, "/dev/dm-") {
		t.Errorf("tiny OS root = %s, want the opened LUKS volume", root)
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	lease, _ := e.Lab.Lease(m.MAC)
	unlocks := events(t, ctx, e, dev, "unlock")
	if len(unlocks) != 1 || !strings.HasPrefix(unlocks[0].Remote, lease.String()+":") ||
		unlocks[0].Detail["binding"] != dev.Binding.String() {
		t.Errorf("unlock events %+v, want one from %s for binding %s", unlocks, lease, dev.Binding)
	}
}

// TestNoAutoboot boots provisioned laptops that the key server does not
// help: marked lost, or off the enterprise network (a LAN with a DHCP
// server and nothing else, as a café's). Neither boots unattended: the
// prompt says why and asks for an account. It does not prove that no
// other input boots the laptop; the sign-in scenarios cover that prompt.
func TestNoAutoboot(t *testing.T) {
	tests := []struct {
		name  string
		fault func(t *testing.T, ctx context.Context, e *Enterprise, dev *Device) *Lab
		want  string
	}{
		{"lost", func(t *testing.T, ctx context.Context, e *Enterprise, dev *Device) *Lab {
			if err := e.Admin.SetDeviceState(ctx, dev.ID, store.DeviceLost, "stolen at the airport"); err != nil {
				t.Fatalf("SetDeviceState = %v", err)
			}
			return e.Lab
		}, "This device has been blocked by your IT department."},
		{"off the network", func(t *testing.T, ctx context.Context, e *Enterprise, dev *Device) *Lab {
			lab := newLab(t)
			if _, err := lab.StartDHCP(ctx); err != nil {
				t.Fatalf("StartDHCP = %v", err)
			}
			return lab
		}, "This computer cannot reach the company's key server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, image := sharedEnterprise(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
			defer cancel()
			dev, err := e.Provision(ctx, "noauto-"+strings.ReplaceAll(tt.name, " ", "-"),
				ProvisionOptions{Template: pbnFixture.spec})
			if err != nil {
				t.Fatalf("Provision = %v", err)
			}
			lab := tt.fault(t, ctx, e, dev)
			m := startProvisioned(t, ctx, lab, image, dev, LaptopOptions{})

			expect(t, ctx, m, networkRE, regexp.QuoteMeta(tt.want), accountRE)
			if out := m.Console.Output(); strings.Contains(out, "Booting unattended") {
				t.Error("the laptop counted down to an unattended boot")
			}
			if err := m.PowerCut(); err != nil {
				t.Fatal(err)
			}
			if n := len(events(t, ctx, e, dev, "unlock")); n != 0 {
				t.Errorf("the key server recorded %d unlocks, want none", n)
			}
		})
	}
}

// keyFileKinds returns the kinds of the key files on a laptop disk's ESP.
func keyFileKinds(t *testing.T, ctx context.Context, img string) map[string]keyfile.Kind {
	t.Helper()
	out, err := exec.CommandContext(ctx, "mdir", "-b", "-i", fmt.Sprintf("%s@@%d", img, ESPOffset),
		"::EFI/PBN/keys").Output()
	if err != nil {
		t.Fatalf("mdir: %v", err)
	}
	kinds := map[string]keyfile.Kind{}
	for _, p := range strings.Fields(string(out)) {
		name := p[strings.LastIndex(p, "/")+1:]
		b, err := readESPFile(ctx, img, "EFI/PBN/keys/"+name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := keyfile.Parse(b)
		if err != nil {
			t.Errorf("%s on the ESP: %v", name, err)
			continue
		}
		kinds[name] = f.Header().Kind
	}
	return kinds
}
