package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/qemu"
)

// The lab story's people: accounts on the lab's domain controller, with
// the one password the domain's complexity rules accept for both.
const (
	alice    = "alice"
	bob      = "bob"
	password = "Corr3ct-horse"
	group    = "demo-laptops"
)

// labTimeout bounds the whole lab story: the imaging and six boots under
// TCG, with the image and the domain made first.
const labTimeout = 25 * time.Minute

// payloadMiB is the size of the OS payload that imaging writes: the tiny
// OS's file system.
const payloadMiB = 12

// labStory tells PBN's story in the QEMU lab: a blank laptop boots from
// the network and images itself, reboots into the provisioning stage and
// boots unattended on the enterprise network, becomes alice's at her
// first sign-in, opens for her with the TPM and her password, takes bob
// as a second user, and opens with a recovery key read out by the help
// desk. Each boot ends in the tiny OS, which shows the agent's timing
// file.
func labStory(ctx context.Context, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, labTimeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "pbn-lab-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	e, img, err := startLab(ctx, w, dir)
	if err != nil {
		return err
	}
	defer e.Lab.Close()

	con := &consoleLines{w: w, prefix: "   laptop-1 | "}
	pxeStart := time.Now()
	im, tpmDir, disk, err := imageLaptop(ctx, w, img, dir, con)
	if err != nil {
		return err
	}
	m, err := img.ImagedLaptop(ctx, "laptop-1", disk, tpmDir, im.LUKSUUID, qemu.LaptopOptions{Console: con})
	if err != nil {
		return err
	}
	boots := []struct {
		say  string
		talk func(*qemu.Console) error
	}{
		{"Lab 2. It restarts into the provisioning stage and boots unattended: on the enterprise network the key server helps the provisioning key file open.",
			func(c *qemu.Console) error {
				if err := expect(ctx, c, `pbn: PBN agent starting`); err != nil {
					return err
				}
				fmt.Fprintf(w, "   PXE start to the provisioning stage's first boot: %s\n", since(pxeStart))
				return expect(ctx, c, `Booting unattended in \d+ s`)
			}},
		{"Lab 3. alice's secure moment: she presses Enter during the countdown and signs in with her AD account.",
			func(c *qemu.Console) error {
				if err := expect(ctx, c, `Press Enter to sign in\.`); err != nil {
					return err
				}
				c.Type("\n")
				return signIn(ctx, c, `Account: `, alice)
			}},
		{"Lab 4. alice's next boot: the TPM and her password, checked online against AD and the key server.",
			func(c *qemu.Console) error { return signIn(ctx, c, signInPrompt, alice) }},
		{"Lab 5. bob signs in on alice's laptop: the key server allows a second user and he gets his own key file.",
			func(c *qemu.Console) error { return signIn(ctx, c, signInPrompt, bob) }},
		{"Lab 6. alice forgot her password: the help desk reads her recovery key from the key server.",
			func(c *qemu.Console) error { return recoveryKey(ctx, c, e.Admin, im.Device, alice) }},
		{"Lab 7. alice's next boot with her password tells the key server that her recovery key was used.",
			func(c *qemu.Console) error { return signIn(ctx, c, signInPrompt, alice) }},
	}
	for i, b := range boots {
		fmt.Fprintf(w, "\n%s\n", b.say)
		if i > 0 {
			if err := m.PowerOn(ctx); err != nil {
				return err
			}
		}
		if err := b.talk(m.Console); err != nil {
			return err
		}
		t, err := m.Console.Timing(ctx)
		if err != nil {
			return err
		}
		if err := m.Wait(ctx); err != nil {
			return err
		}
		fmt.Fprintf(w, "   agent start to switch_root: %.0f ms, typing excluded (the unlock step: %.0f ms)\n",
			t.SwitchRoot(), t.Phases["unlock"][1]-t.Phases["unlock"][0]-t.Excluded)
	}
	return audit(ctx, w, e.Admin, im.Device)
}

// startLab builds the image, starts the enterprise with alice and bob on
// its domain controller and the group's policy, and serves imaging from
// the network.
func startLab(ctx context.Context, w io.Writer, dir string) (*qemu.Enterprise, *qemu.ImagingLab, error) {
	start := time.Now()
	fmt.Fprintln(w, "\nThe lab: building the PBN image and the OS payload, the tiny OS's file system...")
	base, err := qemu.MakeBase(ctx, qemu.BaseOptions{Repo: ".", Dir: dir, ImageOnly: true})
	if err != nil {
		return nil, nil, err
	}
	payload := filepath.Join(dir, "payload.ext4")
	if err := qemu.TinyOSExt4(ctx, payload, payloadMiB); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(w, "   image: %.2f MiB compressed; payload: %d MiB (%s)\n",
		float64(base.Report.Compressed)/(1<<20), payloadMiB, since(start))

	start = time.Now()
	fmt.Fprintln(w, "Starting the enterprise in a network namespace: a Samba AD domain controller, pbnd, "+
		"and PXE (dnsmasq's DHCP and TFTP, HTTP) with an HTTPS imaging server...")
	e, image, err := qemu.StartWorld(ctx, ".", dir, base, qemu.Options{})
	if err != nil {
		return nil, nil, err
	}
	if err := people(ctx, e); err != nil {
		e.Lab.Close()
		return nil, nil, err
	}
	img, err := e.StartImaging(ctx, qemu.ImagingOptions{Kernel: base.Kernel, Image: image, Payload: payload,
		Dir: dir, Group: group})
	if err != nil {
		e.Lab.Close()
		return nil, nil, err
	}
	fmt.Fprintf(w, "   domain %s with %s and %s; policy of %s: %d users a device; the imaging image "+
		"enrolls as %q, an administrator who may only enroll (%s)\n",
		e.DC.DNSDomain, alice, bob, group, usersPerDevice, qemu.DefaultImagingAdmin, since(start))
	return e, img, nil
}

// usersPerDevice is the demo group's policy: alice and bob.
const usersPerDevice = 2

// people adds alice and bob to the domain and sets the group's policy.
func people(ctx context.Context, e *qemu.Enterprise) error {
	for _, u := range []string{alice, bob} {
		if _, err := e.AddUser(ctx, u, password); err != nil {
			return err
		}
	}
	p := store.DefaultPolicy(group)
	p.UsersPerDevice = usersPerDevice
	return e.Admin.SetPolicy(ctx, p)
}

// imageLaptop PXE-boots a blank laptop-1, which images itself, and
// returns what the imaging said, the laptop's TPM state and its disk.
func imageLaptop(ctx context.Context, w io.Writer, img *qemu.ImagingLab, dir string, con io.Writer) (*qemu.Imaged, string, string, error) {
	fmt.Fprintln(w, "\nLab 1. A blank laptop boots from the network: iPXE gets the imaging image from the "+
		"lab's DHCP, TFTP and HTTP, and the agent images the disk, enrolls the laptop with its TPM and "+
		"writes a provisioning key file.")
	disk := filepath.Join(dir, "laptop-1.img")
	if err := qemu.BlankDisk(disk); err != nil {
		return nil, "", "", err
	}
	m, err := img.PXELaptop(ctx, "laptop-1-pxe", disk, qemu.LaptopOptions{Console: con})
	if err != nil {
		return nil, "", "", err
	}
	im, err := qemu.WaitImaged(ctx, m.Console)
	if err != nil {
		return nil, "", "", err
	}
	if err := m.Wait(ctx); err != nil {
		return nil, "", "", err
	}
	if err := m.PowerCut(); err != nil { // the swtpm, which outlives QEMU
		return nil, "", "", err
	}
	fmt.Fprintf(w, "   imaged in %s (the agent's time); the payload, %.1f MiB, went into the encrypted "+
		"volume at %.1f MiB/s; device %s\n", im.Took, float64(im.Payload)/(1<<20), im.PayloadRate(), im.Device)
	return im, m.TPMDir, disk, nil
}

// signInPrompt is the deployed stage's prompt.
const signInPrompt = `Sign in as \(number or account; R for a recovery key\): `

// signIn waits for prompt and signs in as account.
func signIn(ctx context.Context, c *qemu.Console, prompt, account string) error {
	if err := expect(ctx, c, prompt); err != nil {
		return err
	}
	c.Type(account + "\n")
	if err := expect(ctx, c, `Password for `+regexp.QuoteMeta(account)+`: `); err != nil {
		return err
	}
	return c.Type(password + "\n")
}

// recoveryKey reads the recovery key of account's key file on device dev from the
// key server, as a help desk does (the reason is recorded), and types it
// at the prompt.
func recoveryKey(ctx context.Context, c *qemu.Console, admin *keyserver.Client, dev keyfile.ID, account string) error {
	escrows, err := admin.Recovery(ctx, dev, "demo: "+account+" forgot her password")
	if err != nil {
		return err
	}
	var key string
	for _, e := range escrows {
		if strings.HasPrefix(e.UPN, account+"@") {
			key = string(e.Key)
		}
		e.Key.Wipe()
	}
	if key == "" {
		return fmt.Errorf("the key server holds no recovery key of %s", account)
	}
	if err := expect(ctx, c, signInPrompt); err != nil {
		return err
	}
	c.Type("R\n")
	if err := expect(ctx, c, `Recovery key: `); err != nil {
		return err
	}
	return c.Type(key + "\n")
}

// audit prints what the key server recorded of the laptop.
func audit(ctx context.Context, w io.Writer, admin *keyserver.Client, dev keyfile.ID) error {
	fmt.Fprintln(w, "\nThe key server's audit trail of laptop-1:")
	return admin.Audit(ctx, keyserver.AuditQuery{}, func(ev store.Event) error {
		if ev.Device == dev.String() {
			fmt.Fprintf(w, "   %s %-10s %s %s\n", ev.Time.Format(time.TimeOnly), ev.Kind, ev.Actor, ev.Remote)
		}
		return nil
	})
}

func expect(ctx context.Context, c *qemu.Console, re string) error {
	_, err := c.Expect(ctx, regexp.MustCompile(re))
	return err
}

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }

// consoleLines prints the lines of a laptop's console that tell the story:
// the agent's and the tiny OS's, not the kernel's.
type consoleLines struct {
	w      io.Writer
	prefix string
	mu     sync.Mutex
	part   []byte
}

func (c *consoleLines) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.part = append(c.part, b...)
	lines := strings.SplitAfter(string(c.part), "\n")
	c.part = []byte(lines[len(lines)-1])
	for _, l := range lines[:len(lines)-1] {
		l = strings.TrimRight(l, "\r\n")
		if strings.HasPrefix(l, "pbn: ") || strings.HasPrefix(l, "tinyos: ") || isSentence(l) {
			fmt.Fprintf(c.w, "%s%s\n", c.prefix, l)
		}
	}
	return len(b), nil
}

// isSentence says whether a console line is one of the prompt's sentences
// for the person at the keyboard, which start with a capital letter and
// end with a full stop.
func isSentence(l string) bool {
	return l != "" && l[0] >= 'A' && l[0] <= 'Z' && strings.HasSuffix(l, ".")
}
