package qemu

import (
	"context"
	"regexp"
	"strings"
	"testing"
)

// lateNetTimeout is the network step's timeout while the DHCP server
// starts late: long enough for the test to start dnsmasq once the prompt
// shows on a loaded machine, short enough to bound the boot.
const lateNetTimeout = "30s"

// aboveRE is the network's line said above the password prompt: the
// prompt's line cleared (the console drops the carriage return, leaving
// ECMA-48's EL), the line, and the prompt shown again.
const aboveRE = `\x1b\[K` + networkRE + promptRE

// TestPromptBeforeDHCP boots the laptop on a LAN whose DHCP server starts
// only once the password prompt shows: the prompt does not wait for the
// network, the network's line comes later, above the prompt, which shows
// again, and the right password opens the disk. The timing file shows the
// unlock step starting before the network ended and the root step after.
//
// What it does not prove: that the sign-in of the deployed stage waits for
// a late network before it goes online (it waits in connect, which
// TestDeployedLab runs with a network that is up in time).
func TestPromptBeforeDHCP(t *testing.T) {
	_, _, disk, _ := pbnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	lab, m := bootPBN(t, ctx, disk, false, "pbn.nettimeout="+lateNetTimeout, LaptopOptions{})

	expect(t, ctx, m, promptRE)
	if regexp.MustCompile(networkRE).MatchString(m.Console.Output()) {
		t.Fatal("the network's line came before the prompt, with no DHCP server on the LAN")
	}
	if _, err := lab.StartDHCP(ctx); err != nil {
		t.Fatalf("StartDHCP = %v", err)
	}
	got := expect(t, ctx, m, aboveRE)
	if lease, ok := lab.Lease(m.MAC); !ok || !strings.Contains(got[0][1], lease.String()) {
		t.Errorf("network: %q, lease for %s: %v %v; want the leased address above the prompt",
			got[0][1], m.MAC, lease, ok)
	}
	if err := m.Console.Type(testPassword + "\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, ctx, m, `pbn: disk: \S+ opened as /dev/mapper/`, TinyOSBanner)
	tm, err := m.Console.Timing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	network, unlock, root := tm.Phases["network"], tm.Phases["unlock"], tm.Phases["root"]
	if unlock[0] == 0 || network[1] == 0 || root[1] == 0 {
		t.Fatalf("timing file phases network %v, unlock %v, root %v; want all three", network, unlock, root)
	}
	if unlock[0] >= network[1] {
		t.Errorf("unlock started at %.0f ms, network ended at %.0f ms; want the prompt before the network's end",
			unlock[0], network[1])
	}
	if root[0] < network[1] {
		t.Errorf("root started at %.0f ms, network ended at %.0f ms; want switch_root after the network's end",
			root[0], network[1])
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
}
