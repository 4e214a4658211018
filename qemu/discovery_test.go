package qemu

import (
	"context"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/pbn-project/pbn/internal/netns"
)

// TestSetDNS asks the lab's DHCP server for a lease, from a veth on its
// bridge, before and after SetDNS: the name server comes in the ACK only
// after, from the dnsmasq that SetDNS started again; and a DHCP server
// started after SetDNS hands it out too. No guest boots.
func TestSetDNS(t *testing.T) {
	needLab(t)
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"link", "add", "dh0", "type", "veth", "peer", "name", "dh1"},
		{"link", "set", "dh1", "master", "br0"},
		{"link", "set", "dh1", "up"},
		{"link", "set", "dh0", "up"},
	} {
		if err := ip(ctx, append([]string{"-n", lab.Name}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := lab.StartDHCP(ctx); err != nil {
		t.Fatalf("StartDHCP = %v", err)
	}
	if got := leaseDNS(t, ctx, lab); len(got) != 0 {
		t.Errorf("name servers before SetDNS = %v, want none", got)
	}
	if err := lab.SetDNS(ctx, DCAddr); err != nil {
		t.Fatalf("SetDNS = %v", err)
	}
	if got := leaseDNS(t, ctx, lab); !slices.Equal(got, []netip.Addr{DCAddr}) {
		t.Errorf("name servers after SetDNS = %v, want %v", got, DCAddr)
	}
	if _, err := lab.StartDHCP(ctx); err != nil {
		t.Fatalf("StartDHCP = %v", err)
	}
	if got := leaseDNS(t, ctx, lab); !slices.Equal(got, []netip.Addr{DCAddr}) {
		t.Errorf("name servers from a DHCP server started after SetDNS = %v, want %v", got, DCAddr)
	}
}

// leaseDNS runs a DHCP exchange (RFC 2131) on the lab's dh0 and returns
// the name servers of the ACK.
func leaseDNS(t *testing.T, ctx context.Context, lab *Lab) []netip.Addr {
	t.Helper()
	var c *nclient4.Client
	// The client's raw socket is made inside the namespace and stays there.
	err := netns.Do(lab.Name, func() error {
		var err error
		c, err = nclient4.New("dh0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(5))
		return err
	})
	if err != nil {
		t.Fatalf("dhcp client: %v", err)
	}
	defer c.Close()
	lease, err := c.Request(ctx)
	if err != nil {
		t.Fatalf("dhcp: %v", err)
	}
	var dns []netip.Addr
	for _, d := range lease.ACK.DNS() {
		a, ok := netip.AddrFromSlice(d.To4())
		if !ok {
			t.Fatalf("dhcp: name server %v", d)
		}
		dns = append(dns, a)
	}
	return dns
}

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
	finishSecureMoment(t, ctx, e, dev, m, upn)
}
