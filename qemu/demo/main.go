// Command demo tells PBN's story as it stands, printing each step as it
// happens: run it with make demo from the repository's root.
//
// First the key file, through pbnctl: what an administrator makes, what it
// holds, how it opens and how it refuses. Then the QEMU lab's story (see
// labStory): a blank laptop imaged from PXE, its unattended boot, the
// secure moment, the deployed stage, a second user and the recovery key,
// each with its timing.
// The lab needs root, as make test does.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

func main() {
	ctx := context.Background()
	err := keyFileStory(ctx, os.Stdout)
	if err == nil {
		err = labStory(ctx, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// step is one command of the story.
type step struct {
	say   string   // what the step shows, for the reader
	stdin string   // typed into the command
	args  []string // pbnctl's arguments
	code  int      // the exit code the step expects
}

func keyFileStory(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "pbn-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pbnctl := filepath.Join(dir, "pbnctl")
	fmt.Fprintln(w, "Building pbnctl...")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", pbnctl, "./cmds/pbnctl").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	kf := filepath.Join(dir, "alice.pbk")
	bad := filepath.Join(dir, "damaged.pbk")

	var recoveryKey string
	steps := []step{
		{say: "An administrator makes a key file for alice: fresh random keys, her password, and a recovery key for the help desk.",
			stdin: "correct horse battery staple\n",
			args: []string{"keyfile", "create", "--password-stdin", "--recovery", "--upn", "alice@corp.example.test",
				"--sid", "S-1-5-21-1004336348-1177238915-682003330-1105",
				"--group", "S-1-5-21-1004336348-1177238915-682003330-1201=Finance", "--offline-limit", "336h", kf}},
		{say: "What the key file shows: its header and protectors, never a secret.",
			args: []string{"keyfile", "inspect", kf}},
		{say: "Her password opens it.", stdin: "correct horse battery staple\n",
			args: []string{"keyfile", "open", "--password-stdin", kf}},
		{say: "A wrong password does not (exit code 4).", stdin: "correct horse battery stable\n",
			args: []string{"keyfile", "open", "--password-stdin", kf}, code: 4},
		{say: "The recovery key, as the help desk reads it out, opens it too.",
			args: []string{"keyfile", "open", "--recovery-key-stdin", kf}},
		{say: "A mistyped recovery key is caught group by group, before any key is tried.",
			args: []string{"keyfile", "open", "--recovery-key-stdin", kf}, code: 4},
		{say: "She adds a second password; the replacement is crash-safe and bumps the generation.",
			stdin: "correct horse battery staple\na second passphrase\n",
			args:  []string{"keyfile", "add-protector", "--password-stdin", "--new", "password", kf}},
		{say: "A damaged copy is refused in one plain line (exit code 3).",
			args: []string{"keyfile", "inspect", bad}, code: 3},
	}
	for i, s := range steps {
		switch i {
		case 4:
			s.stdin = recoveryKey + "\n"
		case 5:
			s.stdin = mistype(recoveryKey) + "\n"
		case 7:
			if err := damage(kf, bad); err != nil {
				return err
			}
		}
		fmt.Fprintf(w, "\n%d. %s\n", i+1, s.say)
		out, code, took := pbnctlRun(ctx, pbnctl, s)
		fmt.Fprintf(w, "$ pbnctl %s\n%s", strings.Join(s.args, " "), indent(out))
		fmt.Fprintf(w, "   (exit code %d, %d ms)\n", code, took.Milliseconds())
		if code != s.code {
			return fmt.Errorf("step %d: exit code %d, want %d", i+1, code, s.code)
		}
		if m := regexp.MustCompile(`recovery key: ([0-9-]{55})`).FindStringSubmatch(out); m != nil {
			recoveryKey = m[1]
		}
	}
	return nil
}

func pbnctlRun(ctx context.Context, pbnctl string, s step) (string, int, time.Duration) {
	cmd := exec.CommandContext(ctx, pbnctl, s.args...)
	cmd.Stdin = strings.NewReader(s.stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	code := 0
	if e, ok := err.(*exec.ExitError); ok {
		code = e.ExitCode()
	} else if err != nil {
		return err.Error() + "\n", -1, 0
	}
	return out.String(), code, time.Since(start)
}

// mistype changes the third digit of a recovery key.
func mistype(k string) string {
	b := []byte(k)
	b[2] = '0' + (b[2]-'0'+1)%10
	return string(b)
}

// damage writes a copy of src with one bit flipped.
func damage(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	b[len(b)/2] ^= 0x10
	return os.WriteFile(dst, b, 0o600)
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString("   " + l)
		}
	}
	if !strings.HasSuffix(b.String(), "\n") && b.Len() > 0 {
		b.WriteString("\n")
	}
	return b.String()
}
