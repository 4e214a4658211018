package main

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/handoff"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/provisioning"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// sentencer is an error that has its own line for the console.
type sentencer interface{ Sentence() string }

// sentences are the console's lines for the errors the boot flow branches
// on, in the order they are checked.
var sentences = []struct {
	err  error
	line string
}{
	{console.ErrTooManyTries, "Too many wrong passwords. Restart the computer to try again."},
	{console.ErrClosed, "The console closed, so no password can be typed."},
	{provisioning.ErrNoSignIn, "No one could sign in. Restart the computer to try again."},
	{errNoTPM, "This computer's security chip (TPM) cannot be found. Ask your administrator for help."},
	{keyfile.ErrTampered, "The key file on this computer was changed and cannot be trusted. Ask your administrator for help."},
	{keyfile.ErrDamaged, "The key file on this computer is damaged. Ask your administrator for help."},
	{keyfile.ErrFormat, "The key file on this computer is damaged. Ask your administrator for help."},
	{disk.ErrNoKeyFiles, "This computer has no key file to open its disk. Ask your administrator for help."},
	{disk.ErrNoUnlocker, "No key file on this computer can be opened with a password. Ask your administrator for help."},
	{disk.ErrWrongKey, "The key file does not open this computer's disk. Ask your administrator for help."},
	{errNoVolume, "The boot entry does not name the encrypted disk. Ask your administrator to fix it."},
	{errNoImaging, "This boot entry images computers, but the image has no imaging configuration. Ask your administrator to fix it."},
	{imaging.ErrTooLarge, "The operating system to install is larger than this computer's disk. Ask your administrator for help."},
	{handoff.ErrNotInitramfs, "The computer could not start its operating system. Ask your administrator for help."},
}

// sentence returns the plain line a person reads for an error of the
// boot flow. Details go to the log only.
func sentence(err error) string {
	for _, s := range sentences {
		if errors.Is(err, s.err) {
			return s.line
		}
	}
	var s sentencer
	if errors.As(err, &s) {
		return s.Sentence()
	}
	if line := tpm.Prompt(err); line != "" {
		return line
	}
	return "The computer could not start. Ask your administrator for help."
}

// fail says what went wrong and then halts, reboots or powers off, as
// pbn.onfail= says. It never returns, and never gives a shell.
func (a *agent) fail(err error) {
	a.log.Error("boot failed", "err", err)
	a.say("%s", sentence(err))
	if a.cmdline.PBN.Debug {
		a.say("error: %v", err)
	}
	policy, wait := a.cmdline.PBN.OnFail, a.cmdline.PBN.FailWait
	switch policy {
	case cmdline.FailReboot:
		a.say("The computer restarts in %v.", wait)
	case cmdline.FailPowerOff:
		a.say("The computer switches off in %v.", wait)
	default:
		a.say("Boot stopped. You can switch the computer off.")
	}
	a.con.Drain()
	if policy == cmdline.FailHalt {
		for {
			time.Sleep(time.Hour) // PID 1 must not exit: the kernel would panic
		}
	}
	time.Sleep(wait)
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if policy == cmdline.FailReboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	for {
		a.log.Error("reboot", "err", unix.Reboot(cmd))
		time.Sleep(time.Second)
	}
}
