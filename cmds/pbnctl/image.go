package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pbn-project/pbn/initramfs"
	"github.com/pbn-project/pbn/pbn/config"
)

// Exit codes of pbnctl image.
const (
	exitNoKernel = 3 // the kernel asked for, or any, is not installed
)

const imageHelp = `usage: pbnctl image build [flags]

Builds the pre-boot image: the agent as /init, kernel modules, cryptsetup
and the configuration files, as a compressed initramfs, and prints a size
report per part.

With -pxe DIR it also writes what a PXE or HTTP boot needs into DIR: the
kernel (vmlinuz), the image (pbn.img) and an iPXE script (boot.ipxe) whose
kernel command line selects the imaging mode (pbn.mode=image). -pxe-url
names where DIR is served over HTTP; without it the script fetches the two
from wherever it was fetched itself (TFTP, say).

exit codes:
  0  success
  1  any other failure
  2  bad flags or arguments
  3  the kernel is not installed
`

var runImage = subcommands("image", imageHelp, []command{
	{"build", "", imageBuild},
})

func imageBuild(ctx context.Context, io stdio, args []string) error {
	fl := flag.NewFlagSet("pbnctl image build", flag.ContinueOnError)
	fl.SetOutput(io.err)
	out := fl.String("o", "out/pbn.img", "write the image to `file`")
	kernel := fl.String("kernel", "", "the kernel `release` whose modules to include (default: the newest installed)")
	compression := fl.String("compress", string(initramfs.Zstd), "compression: zstd, xz, gzip or none")
	agent := fl.String("agent", initramfs.AgentPackage, "the Go `package` that becomes /init")
	modules := fl.String("modules", "", "comma-separated kernel `modules` (default: the built-in list for laptops)")
	confFile := fl.String("config", "", "the agent's configuration `file`, as etc/pbn/pbn.conf")
	ca := fl.String("ca", "", "the pinned CA certificates, PEM `file`, as etc/pbn/ca.pem")
	changePassword := fl.String("ad-change-password", "", "the `file` holding the password of the configuration's ad.change_account")
	var cmds, files multiFlag
	fl.Var(&cmds, "cmd", "a further Go command `package` for the busybox (u-root's, say); repeatable")
	fl.Var(&files, "file", "a host file to add, `src:dst` with dst relative to /; repeatable")
	report := fl.String("report", "", "also write the size report to `file`")
	pxeDir := fl.String("pxe", "", "also write the kernel, the image and an iPXE script into `dir`")
	pxeURL := fl.String("pxe-url", "", "the http(s) `URL` that serves the -pxe directory")
	pxeAppend := fl.String("pxe-append", "console=tty0 console=ttyS0",
		"the rest of the PXE entry's kernel command line, after pbn.mode=image")
	if err := fl.Parse(args); err != nil {
		return withCode(exitUsage, err)
	}
	if fl.NArg() > 0 {
		return usageError("image build: unexpected argument %q", fl.Arg(0))
	}
	if *pxeDir == "" && *pxeURL != "" {
		return usageError("image build: -pxe-url without -pxe")
	}

	cfg := initramfs.Config{Kernel: *kernel, Agent: *agent, Commands: cmds,
		Compression: initramfs.Compression(*compression), Log: io.log}
	if *modules != "" {
		cfg.Modules = strings.Split(*modules, ",")
	}
	if *confFile != "" {
		if err := checkConfig(*confFile); err != nil {
			return withCode(exitUsage, fmt.Errorf("image build: %w", err))
		}
		cfg.Files = append(cfg.Files, initramfs.File{Src: *confFile, Dst: initramfs.ConfigDir + "/" + config.ConfigFile})
	}
	if *ca != "" {
		cfg.Files = append(cfg.Files, initramfs.File{Src: *ca, Dst: initramfs.ConfigDir + "/" + config.CAFile})
	}
	if *changePassword != "" {
		cfg.Files = append(cfg.Files, initramfs.File{Src: *changePassword,
			Dst: initramfs.ConfigDir + "/" + config.ChangePasswordFile})
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok || src == "" || dst == "" {
			return usageError("image build: -file %q: want src:dst", f)
		}
		cfg.Files = append(cfg.Files, initramfs.File{Src: src, Dst: dst})
	}

	var img bytes.Buffer
	rep, err := initramfs.Build(ctx, cfg, &img)
	if errors.Is(err, initramfs.ErrNoKernel) {
		return withCode(exitNoKernel, err)
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, img.Bytes(), 0o644); err != nil {
		return err
	}
	var table bytes.Buffer
	rep.WriteTo(&table)
	fmt.Fprintf(io.out, "%s: %d bytes\n%s", *out, img.Len(), table.String())
	if *pxeDir != "" {
		pxe := initramfs.PXE{BaseURL: *pxeURL, Append: *pxeAppend}
		if err := initramfs.WritePXE(*pxeDir, rep.Kernel, img.Bytes(), pxe); err != nil {
			return err
		}
		fmt.Fprintf(io.out, "%s: %s, %s and %s for a network boot\n", *pxeDir,
			initramfs.PXEKernel, initramfs.PXEImage, initramfs.PXEScript)
	}
	if *report != "" {
		return os.WriteFile(*report, table.Bytes(), 0o644)
	}
	return nil
}

// checkConfig parses the agent's configuration as the agent will, so that
// a mistake shows at build time, not at a laptop's boot, and refuses one
// that names a domain without pinning the key server: the agent would then
// send users' passwords to whatever server a key file on the (unencrypted)
// ESP names.
func checkConfig(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c, err := config.Parse(b)
	if err != nil {
		return err
	}
	if c.HasAD() && c.KeyServer == nil {
		return fmt.Errorf("%s names a domain but pins no key server; add its keyserver entry (url, public_key)", path)
	}
	return nil
}
