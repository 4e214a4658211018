package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

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

// labTimeout bounds the whole lab story: six boots under TCG, with the
// image, the disk and the domain made first.
const labTimeout = 20 * time.Minute

// labStory tells PBN's story in the QEMU lab: a laptop provisioned for
// nobody boots unattended on the enterprise network, becomes alice's at
// her first sign-in, opens for her with the TPM and her password, takes
// bob as a second user, and opens with a recovery key read out by the
// help desk. Each boot ends in the tiny OS, which shows the agent's
// timing file.
func labStory(ctx context.Context, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, labTimeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "pbn-lab-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	start := time.Now()
	fmt.Fprintln(w, "\nThe lab: building the PBN image and a laptop disk with a tiny OS in LUKS2 (about a minute)...")
	base, err := qemu.MakeBase(ctx, qemu.BaseOptions{Repo: ".", Dir: dir})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   image: %.2f MiB compressed (%s)\n", float64(base.Report.Compressed)/(1<<20), since(start))

	start = time.Now()
	fmt.Fprintln(w, "Starting the enterprise in a network namespace: DHCP, a Samba AD domain controller, pbnd...")
	e, image, err := qemu.StartWorld(ctx, ".", dir, base, qemu.Options{})
	if err != nil {
		return err
	}
	defer e.Lab.Close()
	for _, u := range []string{alice, bob} {
		if _, err := e.AddUser(ctx, u, password); err != nil {
			return err
		}
	}
	p := store.DefaultPolicy(group)
	p.UsersPerDevice = 2
	if err := e.Admin.SetPolicy(ctx, p); err != nil {
		return err
	}
	fmt.Fprintf(w, "   domain %s with %s and %s; policy of %s: %d users a device (%s)\n",
		e.DC.DNSDomain, alice, bob, group, p.UsersPerDevice, since(start))

	start = time.Now()
	dev, err := e.Provision(ctx, "laptop-1", qemu.ProvisionOptions{Template: base.Template, Group: group})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   laptop-1 enrolled with its TPM's keys; on its ESP, a provisioning key file only (%s)\n", since(start))

	con := &consoleLines{w: w, prefix: "   laptop-1 | "}
	m, err := e.Lab.Laptop(ctx, dev.Name, qemu.LaptopOptions{Kernel: base.Kernel.Image, Initrd: image,
		Disks: []string{dev.Disk}, TPMState: dev.TPMDir, Console: con,
		Append: "quiet rd.luks.uuid=" + dev.LUKSUUID})
	if err != nil {
		return err
	}
	boots := []struct {
		say  string
		talk func(*qemu.Console) error
	}{
		{"Lab 1. The unattended boot: on the enterprise network the key server helps the provisioning key file open.",
			func(c *qemu.Console) error { return expect(ctx, c, `Booting unattended in \d+ s`) }},
		{"Lab 2. alice's secure moment: she presses Enter during the countdown and signs in with her AD account.",
			func(c *qemu.Console) error {
				if err := expect(ctx, c, `Press Enter to sign in\.`); err != nil {
					return err
				}
				c.Type("\n")
				return signIn(ctx, c, `Account: `, alice)
			}},
		{"Lab 3. alice's next boot: the TPM and her password, checked online against AD and the key server.",
			func(c *qemu.Console) error { return signIn(ctx, c, signInPrompt, alice) }},
		{"Lab 4. bob signs in on alice's laptop: the key server allows a second user and he gets his own key file.",
			func(c *qemu.Console) error { return signIn(ctx, c, signInPrompt, bob) }},
		{"Lab 5. alice forgot her password: the help desk reads her recovery key from the key server.",
			func(c *qemu.Console) error { return recoveryKey(ctx, c, e.Admin, dev, alice) }},
		{"Lab 6. alice's next boot with her password tells the key server that her recovery key was used.",
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
	return audit(ctx, w, e.Admin, dev)
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

// recoveryKey reads the recovery key of account's key file on dev from the
// key server, as a help desk does (the reason is recorded), and types it
// at the prompt.
func recoveryKey(ctx context.Context, c *qemu.Console, admin *keyserver.Client, dev *qemu.Device, account string) error {
	escrows, err := admin.Recovery(ctx, dev.ID, "demo: "+account+" forgot her password")
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
func audit(ctx context.Context, w io.Writer, admin *keyserver.Client, dev *qemu.Device) error {
	fmt.Fprintln(w, "\nThe key server's audit trail of laptop-1:")
	return admin.Audit(ctx, keyserver.AuditQuery{}, func(ev store.Event) error {
		if ev.Device == dev.ID.String() {
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
