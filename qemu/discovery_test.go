package qemu

import (
	"context"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/pbn-project/pbn/pbn/securemoment"
)

// TestDCByDNS signs a user in on a provisioned laptop whose image names
// the domain and no domain controller: the agent learns the name server
// from the lab's DHCP server (the DC's own, see StartEnterprise), finds
// the DC by the SRV records _ldap._tcp.dc._msdcs.<domain> that Samba
// serves, reaches it by the name found there (DC.Host, which the DC's
// certificate carries beside its address) with StartTLS on the record's
// port, and the secure moment runs to the tiny OS.
//
// It proves that the certificate check passes for the name that DNS gave
// (the TLS server name is that name, not an address); it does not prove
// that a DC found by DNS whose certificate lacks that name is refused
// (pbn/ad's TestPinMismatch checks the pinned CA, by address), nor
// anything about a spoofed DNS answer beyond that: DNS is not
// authenticated, and the pinned CA is what stands between a forged SRV
// record and the person's password.
func TestDCByDNS(t *testing.T) {
	e, _ := sharedEnterprise(t)
	ctx, cancel := context.WithTimeout(context.Background(), secureMomentTimeout)
	defer cancel()
	c := e.Config()
	c.AD.DCs = nil
	image := filepath.Join(t.TempDir(), "pbn-dns.img")
	if err := e.ImageWith(pbnFixture.base.Image, image, c); err != nil {
		t.Fatalf("ImageWith = %v", err)
	}
	upn, err := e.AddUser(ctx, "dns-dora", labPassword)
	if err != nil {
		t.Fatalf("AddUser = %v", err)
	}
	dev, err := e.Provision(ctx, "dora1", ProvisionOptions{Template: pbnFixture.spec})
	if err != nil {
		t.Fatalf("Provision = %v", err)
	}
	m := startProvisioned(t, ctx, e.Lab, image, dev, LaptopOptions{})

	signIn(t, ctx, m, "dns-dora", labPassword)
	dc := "ldap://" + e.DC.Host + ":389"
	expect(t, ctx, m, `domain controllers found in DNS" .*dcs=\[`+regexp.QuoteMeta(dc)+`\]`)
	for _, s := range securemoment.Steps {
		expect(t, ctx, m, stepRE(s))
	}
	expect(t, ctx, m, `pbn: secure moment: this computer is now `+regexp.QuoteMeta(upn)+`'s\n`, tinyOSRE)
	if err := m.Wait(ctx); err != nil {
		t.Errorf("Wait = %v, want the tiny OS to power off", err)
	}
	checkOwned(t, ctx, e, dev, upn)
}
