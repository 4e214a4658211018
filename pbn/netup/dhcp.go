package netup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
)

// dhcpRetries bounds the transmissions of one DHCP message; the timeout
// doubles after each (RFC 2131 section 4.1), so the context's deadline ends
// the exchange long before.
const dhcpRetries = 8

// dhcp4 runs the DISCOVER-OFFER-REQUEST-ACK exchange of RFC 2131 section
// 3.1 on the link.
func dhcp4(ctx context.Context, cfg Config, link string) (*config, error) {
	c, err := nclient4.New(link, nclient4.WithTimeout(cfg.Retransmit), nclient4.WithRetry(dhcpRetries))
	if err != nil {
		return nil, fmt.Errorf("dhcp client: %w", err)
	}
	defer c.Close()
	// TODO: the lease is not renewed; the agent hands over to the OS,
	// whose own DHCP client takes over, long before any lease expires.
	// A secure moment held open for hours would need RFC 2131 section
	// 4.4.5's renewal.
	lease, err := c.Request(ctx)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	return fromACK(lease.ACK)
}

// ctxErr returns the context's error when it ended, so that a timeout and
// a cancellation stay apart from the protocol's errors.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

func fromACK(ack *dhcpv4.DHCPv4) (*config, error) {
	addr, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || !addr.IsGlobalUnicast() {
		return nil, fmt.Errorf("dhcp: the server offered no usable address (%v)", ack.YourIPAddr)
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = addr4DefaultMask(ack.YourIPAddr)
	}
	ones, bits := mask.Size()
	if bits != 32 || ones == 0 {
		return nil, fmt.Errorf("dhcp: the server gave an invalid netmask %v", mask)
	}
	c := &config{Result: Result{Method: "DHCP", Address: netip.PrefixFrom(addr, ones)}}
	if r := ack.Router(); len(r) > 0 {
		c.Gateway, _ = netip.AddrFromSlice(r[0].To4())
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			c.DNS = append(c.DNS, a)
		}
	}
	if lt := ack.IPAddressLeaseTime(0); lt > 0 && lt < 100*365*24*time.Hour {
		c.validLft = int(lt / time.Second)
	}
	return c, nil
}

// addr4DefaultMask is the classful mask that RFC 2131 section 2.2 lets a
// client assume when the server sends none (option 1).
func addr4DefaultMask(ip net.IP) net.IPMask {
	return ip.To4().DefaultMask()
}

// dhcp6 runs the SOLICIT-ADVERTISE-REQUEST-REPLY exchange of RFC 8415
// section 18 on the link, for one non-temporary address.
func dhcp6(ctx context.Context, cfg Config, link string) (*config, error) {
	c, err := newClient6(ctx, cfg, link)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	adv, err := c.Solicit(ctx)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	reply, err := c.Request(ctx, adv)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	return fromReply(reply)
}

// newClient6 opens the DHCPv6 client once the link-local address has
// passed duplicate address detection (RFC 4862 section 5.4), which the
// socket needs.
// TODO: detection takes one to two seconds, so DHCPv6 never wins against
// a DHCPv4 server on the same LAN; an optimistic address (RFC 4429) would
// let it start at once.
func newClient6(ctx context.Context, cfg Config, link string) (*nclient6.Client, error) {
	for {
		c, err := nclient6.New(link, nclient6.WithTimeout(cfg.Retransmit), nclient6.WithRetry(dhcpRetries))
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dhcpv6 client: %w (%w)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func fromReply(reply *dhcpv6.Message) (*config, error) {
	iana := reply.Options.OneIANA()
	if iana == nil {
		return nil, errors.New("dhcpv6: the server offered no address")
	}
	ia := iana.Options.OneAddress()
	if ia == nil {
		return nil, errors.New("dhcpv6: the server offered no address")
	}
	addr, ok := netip.AddrFromSlice(ia.IPv6Addr)
	if !ok || !addr.IsGlobalUnicast() {
		return nil, fmt.Errorf("dhcpv6: the server offered no usable address (%v)", ia.IPv6Addr)
	}
	// DHCPv6 gives an address without a prefix or a router; those come
	// from router advertisements (RFC 4861), which the kernel handles.
	c := &config{Result: Result{Method: "DHCPv6", Address: netip.PrefixFrom(addr.Unmap(), 128)}}
	for _, d := range reply.Options.DNS() {
		if a, ok := netip.AddrFromSlice(d); ok {
			c.DNS = append(c.DNS, a)
		}
	}
	if lt := ia.ValidLifetime; lt > 0 && lt < 100*365*24*time.Hour {
		c.validLft = int(lt / time.Second)
	}
	return c, nil
}
