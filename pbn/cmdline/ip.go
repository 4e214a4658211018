package cmdline

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Method is how ip= configures a link.
type Method string

// The methods of ip=, with dracut's synonyms folded: on and any ask for
// both DHCP versions, none and off for none.
const (
	// MethodAny runs DHCPv4 and DHCPv6 (RFC 8415) at once; the first lease
	// wins. It is what the agent does without ip=.
	MethodAny Method = "any"
	// MethodDHCP runs DHCPv4 (RFC 2131) only.
	MethodDHCP Method = "dhcp"
	// MethodDHCP6 runs DHCPv6 only.
	MethodDHCP6 Method = "dhcp6"
	// MethodStatic sets the address, gateway and name servers given.
	MethodStatic Method = "static"
	// MethodOff leaves the network down.
	MethodOff Method = "off"
)

// IP is one ip= parameter, in one of dracut's forms:
//
//	ip=<method>
//	ip=<interface>:<method>[:[<mtu>][:<macaddr>]]
//	ip=<client>:[<peer>]:<gateway>:<netmask>:<hostname>:<interface>:<method>[:[<mtu>][:<macaddr>]]
//	ip=<client>:[<peer>]:<gateway>:<netmask>:<hostname>:<interface>:<method>[:[<dns0>][:<dns1>]]
//
// IPv6 addresses are written in brackets. A client address with the method
// none or off is the static set-up.
type IP struct {
	Method Method
	// Interface is the link's name; empty means every link.
	Interface string
	// Address is the client address with the prefix of the netmask, for
	// MethodStatic.
	Address netip.Prefix
	// Peer is the point-to-point peer, seldom given.
	Peer netip.Addr
	// Gateway is the default route's next hop, if any.
	Gateway netip.Addr
	// Hostname is the client's host name, if any.
	Hostname string
	// MTU is the link's MTU; zero keeps the driver's.
	MTU int
	// MAC is the link's hardware address to set, if any.
	MAC net.HardwareAddr
	// DNS are the name servers given.
	DNS []netip.Addr
}

// methods maps dracut's method words to a Method; the empty ones are
// dracut's but not supported.
var methods = map[string]Method{
	"dhcp": MethodDHCP, "dhcp6": MethodDHCP6, "on": MethodAny, "any": MethodAny,
	"none": MethodOff, "off": MethodOff,
	"auto6": "", "either6": "", "link6": "", "ibft": "", "single-dhcp": "",
}

func parseMethod(s string) (Method, error) {
	m, ok := methods[s]
	switch {
	case !ok:
		return "", fmt.Errorf("unknown ip method %q", s)
	case m == "":
		return "", fmt.Errorf("ip method %q is not supported (want dhcp, dhcp6, any, on, off or none)", s)
	}
	return m, nil
}

func parseIP(s string) (IP, error) {
	f, err := splitFields(s)
	if err != nil {
		return IP{}, err
	}
	switch {
	case len(f) == 1:
		m, err := parseMethod(f[0])
		return IP{Method: m}, err
	case len(f) == 2 || len(f) == 3 || len(f) == 3+macFields && isMethodWord(f[1]):
		return parseLinkIP(f)
	case len(f) >= 7 && len(f) <= 9 || len(f) == 8+macFields:
		return parseStaticIP(f)
	}
	return IP{}, errors.New("want ip=<method>, ip=<interface>:<method> or " +
		"ip=<client>:<peer>:<gateway>:<netmask>:<hostname>:<interface>:<method>")
}

// splitFields splits at colons outside brackets and removes the brackets.
func splitFields(s string) ([]string, error) {
	var fields []string
	start, depth := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ':':
			if depth == 0 {
				fields = append(fields, s[start:i])
				start = i + 1
			}
		}
		if depth < 0 || depth > 1 {
			return nil, errors.New("unbalanced brackets")
		}
	}
	if depth != 0 {
		return nil, errors.New("unbalanced brackets")
	}
	fields = append(fields, s[start:])
	for i, v := range fields {
		if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
			fields[i] = v[1 : len(v)-1]
		} else if strings.ContainsAny(v, "[]") {
			return nil, errors.New("brackets must enclose a whole field")
		}
	}
	return fields, nil
}

// macFields is how many fields a MAC address, written with colons, spans.
const macFields = 6

func isMethodWord(s string) bool {
	_, ok := methods[s]
	return ok
}

// joinMAC joins the fields of a MAC address that the split at colons cut
// apart, after the MTU field.
func joinMAC(f []string) []string {
	if len(f) == 1+macFields {
		return []string{f[0], strings.Join(f[1:], ":")}
	}
	return f
}

func parseLinkIP(f []string) (IP, error) {
	ip := IP{}
	var err error
	if ip.Interface, err = parseInterface(f[0]); err != nil {
		return ip, err
	}
	if ip.Method, err = parseMethod(f[1]); err != nil {
		return ip, err
	}
	return ip, ip.parseMTUAndMAC(joinMAC(f[2:]))
}

func parseStaticIP(f []string) (IP, error) {
	ip := IP{}
	var err error
	if ip.Interface, err = parseOptionalInterface(f[5]); err != nil {
		return ip, err
	}
	if ip.Method, err = parseMethod(f[6]); err != nil {
		return ip, err
	}
	if ip.Peer, err = parseOptionalAddr(f[1]); err != nil {
		return ip, fmt.Errorf("peer: %w", err)
	}
	if ip.Gateway, err = parseOptionalAddr(f[2]); err != nil {
		return ip, fmt.Errorf("gateway: %w", err)
	}
	if ip.Hostname, err = parseHostname(f[4]); err != nil {
		return ip, err
	}
	if ip.Method == MethodOff {
		if ip.Address, err = parsePrefix(f[0], f[3]); err != nil {
			return ip, err
		}
		if ip.Gateway.IsValid() && ip.Gateway.Is4() != ip.Address.Addr().Is4() {
			return ip, errors.New("the gateway and the client address are of different IP versions")
		}
		ip.Method = MethodStatic
	} else if f[0] != "" || f[3] != "" {
		return ip, fmt.Errorf("a client address needs the method none or off, not %s", ip.Method)
	}
	rest := joinMAC(f[7:])
	if len(rest) > 0 && isAddr(rest[0]) || len(rest) > 1 && isAddr(rest[1]) {
		return ip, ip.parseDNS(rest)
	}
	return ip, ip.parseMTUAndMAC(rest)
}

func isAddr(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

func (ip *IP) parseDNS(f []string) error {
	for _, v := range f {
		if v == "" {
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return fmt.Errorf("name server %q is not an IP address", v)
		}
		ip.DNS = append(ip.DNS, a)
	}
	return nil
}

func (ip *IP) parseMTUAndMAC(f []string) error {
	if len(f) > 0 && f[0] != "" {
		mtu, err := strconv.Atoi(f[0])
		if err != nil || mtu < 68 || mtu > 65535 {
			return fmt.Errorf("mtu %q: want a number from 68 to 65535", f[0])
		}
		ip.MTU = mtu
	}
	if len(f) > 1 && f[1] != "" {
		mac, err := net.ParseMAC(f[1])
		if err != nil || len(mac) != 6 {
			return fmt.Errorf("mac address %q: want six hex bytes", f[1])
		}
		ip.MAC = mac
	}
	return nil
}

func parsePrefix(addr, mask string) (netip.Prefix, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil || a.Zone() != "" || !a.IsGlobalUnicast() && !a.IsPrivate() {
		return netip.Prefix{}, fmt.Errorf("client address %q is not a unicast IP address", addr)
	}
	bits, err := parseNetmask(mask, a.Is4())
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, bits), nil
}

// parseNetmask takes a dotted IPv4 netmask or a prefix length; empty
// means a host route.
func parseNetmask(s string, is4 bool) (int, error) {
	max := 128
	if is4 {
		max = 32
	}
	if s == "" {
		return max, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 1 && n <= max && s[0] != '0' {
		return n, nil
	}
	m, err := netip.ParseAddr(s)
	if err != nil || !is4 || !m.Is4() {
		return 0, fmt.Errorf("netmask %q: want a prefix length or a dotted IPv4 netmask", s)
	}
	b := m.As4()
	ones, bits := net.IPMask(b[:]).Size()
	if bits == 0 || ones == 0 {
		return 0, fmt.Errorf("netmask %q is not contiguous", s)
	}
	return ones, nil
}

func parseOptionalAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

func parseAddr(s string) (string, error) {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("%q is not an IP address", s)
	}
	return a.String(), nil
}

// parseInterface checks a Linux interface name (IFNAMSIZ less the NUL).
func parseInterface(s string) (string, error) {
	if s == "" || len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/:\x00 \t\n") {
		return "", fmt.Errorf("interface %q: want a link name of 1 to 15 characters", s)
	}
	return s, nil
}

func parseOptionalInterface(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return parseInterface(s)
}

// parseHostname checks a host name as RFC 1123 section 2.1 allows it.
func parseHostname(s string) (string, error) {
	if len(s) > 253 {
		return "", errors.New("hostname longer than 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if s == "" {
			break
		}
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' ||
			strings.IndexFunc(label, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
			}) >= 0 {
			return "", fmt.Errorf("hostname %q is not a valid host name", s)
		}
	}
	return s, nil
}
