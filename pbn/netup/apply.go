package netup

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
)

// apply sets the address and the default route on the link and writes the
// name servers.
func apply(cfg Config, l netlink.Link, c *config) error {
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   c.Address.Addr().AsSlice(),
		Mask: net.CIDRMask(c.Address.Bits(), c.Address.Addr().BitLen()),
	}}
	if c.validLft > 0 {
		addr.ValidLft, addr.PreferedLft = c.validLft, c.validLft
	}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("set address %s on %s: %w", c.Address, l.Attrs().Name, err)
	}
	if c.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: c.Gateway.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("set default route via %s: %w", c.Gateway, err)
		}
	}
	if len(c.DNS) > 0 {
		return writeResolvConf(cfg.ResolvConf, c)
	}
	return nil
}

// writeResolvConf writes the name servers in resolv.conf(5)'s format.
func writeResolvConf(path string, c *config) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by pbn from %s on %s\n", c.Method, c.Link)
	for _, d := range c.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}
