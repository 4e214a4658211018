package cmdline

import (
	"errors"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	uuid  = "0f8f3c2e-1b7a-4d5e-9c3b-2a1d4e5f6a7b"
	uuidU = "0F8F3C2E-1B7A-4D5E-9C3B-2A1D4E5F6A7B"
)

func defaults() Options {
	return Options{Mode: ModeBoot, OnFail: FailHalt, FailWait: DefaultFailWait, Tries: DefaultTries,
		NetTimeout: DefaultNetTimeout, DeviceTimeout: DefaultDeviceTimeout}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Cmdline
	}{
		{"empty", "", Cmdline{PBN: defaults()}},
		{"debian", "BOOT_IMAGE=/vmlinuz root=UUID=" + uuid + " ro quiet console=ttyS0,115200",
			Cmdline{Root: Device{DeviceUUID, uuid}, PBN: defaults()}},
		{"luks uuid", "rd.luks.uuid=luks-" + uuidU + " root=/dev/mapper/luks-" + uuid + " rw",
			Cmdline{LUKS: []LUKS{{uuid, "luks-" + uuid}}, Root: Device{DevicePath, "/dev/mapper/luks-" + uuid},
				ReadWrite: true, PBN: defaults()}},
		{"luks name", "rd.luks.name=" + uuid + "=cryptroot root=PARTUUID=" + uuid + " rootfstype=ext4 rootflags=noatime,discard",
			Cmdline{LUKS: []LUKS{{uuid, "cryptroot"}}, Root: Device{DevicePARTUUID, uuid},
				RootFSType: "ext4", RootFlags: "noatime,discard", PBN: defaults()}},
		{"label and fat serial", "root=LABEL=root", Cmdline{Root: Device{DeviceLabel, "root"}, PBN: defaults()}},
		{"udev link", "root=/dev/disk/by-partuuid/" + uuidU, Cmdline{Root: Device{DevicePARTUUID, uuid}, PBN: defaults()}},
		{"fat serial", "root=UUID=ABCD-12ef", Cmdline{Root: Device{DeviceUUID, "abcd-12ef"}, PBN: defaults()}},
		{"quoted", `pbn.onfail="poweroff" init="/sbin/init"`,
			Cmdline{Init: "/sbin/init", PBN: func() Options { o := defaults(); o.OnFail = FailPowerOff; return o }()}},
		{"pbn options", "pbn.onfail=reboot pbn.failwait=0s pbn.tries=5 pbn.nettimeout=800ms pbn.devtimeout=2s pbn.debug",
			Cmdline{PBN: Options{Mode: ModeBoot, OnFail: FailReboot, FailWait: 0, Tries: 5, NetTimeout: 800 * time.Millisecond,
				DeviceTimeout: 2 * time.Second, Debug: true}}},
		{"imaging", "pbn.mode=image pbn.payload=https://images.corp.example.test/os.img",
			Cmdline{PBN: func() Options {
				o := defaults()
				o.Mode, o.Payload = ModeImage, "https://images.corp.example.test/os.img"
				return o
			}()}},
		{"ip dhcp", "ip=dhcp", Cmdline{IP: []IP{{Method: MethodDHCP}}, PBN: defaults()}},
		{"ip on", "ip=on", Cmdline{IP: []IP{{Method: MethodAny}}, PBN: defaults()}},
		{"ip off", "ip=none", Cmdline{IP: []IP{{Method: MethodOff}}, PBN: defaults()}},
		{"ip link dhcp6 mtu mac", "ip=eth1:dhcp6:1400:52:54:00:12:34:56",
			Cmdline{IP: []IP{{Method: MethodDHCP6, Interface: "eth1", MTU: 1400,
				MAC: []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}}}, PBN: defaults()}},
		{"ip two links", "ip=eth0:dhcp ip=eth1:off",
			Cmdline{IP: []IP{{Method: MethodDHCP, Interface: "eth0"}, {Method: MethodOff, Interface: "eth1"}},
				PBN: defaults()}},
		{"ip static dns", "ip=192.0.2.10::192.0.2.1:255.255.255.0:laptop:eth0:none:192.0.2.53:192.0.2.54",
			Cmdline{IP: []IP{{Method: MethodStatic, Interface: "eth0",
				Address:  netip.MustParsePrefix("192.0.2.10/24"),
				Gateway:  netip.MustParseAddr("192.0.2.1"),
				Hostname: "laptop",
				DNS:      []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54")}}},
				PBN: defaults()}},
		{"ip static prefix len any link", "ip=10.1.2.3:::16:::none:1500 nameserver=10.1.0.1",
			Cmdline{IP: []IP{{Method: MethodStatic, Address: netip.MustParsePrefix("10.1.2.3/16"), MTU: 1500}},
				Nameservers: []string{"10.1.0.1"}, PBN: defaults()}},
		{"ip static v6", "ip=[2001:db8::10]::[2001:db8::1]:64::eth0:off",
			Cmdline{IP: []IP{{Method: MethodStatic, Interface: "eth0",
				Address: netip.MustParsePrefix("2001:db8::10/64"), Gateway: netip.MustParseAddr("2001:db8::1")}},
				PBN: defaults()}},
		{"ip dhcp with interface in long form", "ip=:::::eth0:dhcp",
			Cmdline{IP: []IP{{Method: MethodDHCP, Interface: "eth0"}}, PBN: defaults()}},
		{"after -- belongs to init", "root=/dev/vda1 -- single", Cmdline{Root: Device{DevicePath, "/dev/vda1"}, PBN: defaults()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.in, err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("Parse(%q) =\n %+v\nwant\n %+v", tt.in, *got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in, param string
	}{
		{"rd.luks.uuid=1234", "rd.luks.uuid=1234"},
		{"rd.luks.uuid=0f8f3c2e-1b7a-4d5e-9c3b-2a1d4e5f6a7g", "rd.luks.uuid=0f8f3c2e-1b7a-4d5e-9c3b-2a1d4e5f6a7g"},
		{"rd.luks.name=" + uuid, "rd.luks.name=" + uuid},
		{"rd.luks.name=" + uuid + "=a/b", "rd.luks.name=" + uuid + "=a/b"},
		{"root=sda1", "root=sda1"},
		{"root=/dev/../etc/passwd", "root=/dev/../etc/passwd"},
		{"root=UUID=xyz", "root=UUID=xyz"},
		{"rw=1", "rw=1"},
		{"pbn.nosuch=1", "pbn.nosuch=1"},
		{"pbn.tries=0", "pbn.tries=0"},
		{"pbn.tries=1000", "pbn.tries=1000"},
		{"pbn.failwait=-1s", "pbn.failwait=-1s"},
		{"pbn.onfail=shell", "pbn.onfail=shell"},
		{"pbn.debug=1", "pbn.debug=1"},
		{"pbn.mode=install", "pbn.mode=install"},
		{"pbn.payload=http://images.lab/os.img", "pbn.payload=http://images.lab/os.img"},
		{"pbn.payload=https:///os.img", "pbn.payload=https:///os.img"},
		{"ip=auto6", "ip=auto6"},
		{"ip=bogus", "ip=bogus"},
		{"ip=eth0", "ip=eth0"},
		{"ip=a:b:c:d:e", "ip=a:b:c:d:e"},
		{"ip=192.0.2.10::192.0.2.1:255.0.255.0::eth0:none", "ip=192.0.2.10::192.0.2.1:255.0.255.0::eth0:none"},
		{"ip=192.0.2.10::[2001:db8::1]:24::eth0:none", "ip=192.0.2.10::[2001:db8::1]:24::eth0:none"},
		{"ip=192.0.2.10:::24::eth0:dhcp", "ip=192.0.2.10:::24::eth0:dhcp"},
		{"ip=[2001:db8::1:::64::eth0:none", "ip=[2001:db8::1:::64::eth0:none"},
		{"ip=eth0:dhcp:9", "ip=eth0:dhcp:9"},
		{"ip=averyveryverylonglinkname:dhcp", "ip=averyveryverylonglinkname:dhcp"},
		{"ip=192.0.2.10:::24:-bad-:eth0:none", "ip=192.0.2.10:::24:-bad-:eth0:none"},
		{"nameserver=ns.example", "nameserver=ns.example"},
		{`root="/dev/vda1`, `root="/dev/vda1`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q) error = %v, want *Error", tt.in, err)
			}
			if e.Param != tt.param {
				t.Errorf("Parse(%q) error names %q, want %q", tt.in, e.Param, tt.param)
			}
			if s := e.Sentence(); !strings.Contains(s, strconv.Quote(tt.param)) || !strings.HasSuffix(s, ".") {
				t.Errorf("Sentence() = %q, want a sentence naming %q", s, tt.param)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"root=UUID=" + uuid + " ro quiet",
		"rd.luks.name=" + uuid + "=root root=/dev/mapper/root rootflags=x",
		"ip=[2001:db8::10]::[2001:db8::1]:64:h:eth0:off:[2001:db8::53]",
		"ip=192.0.2.10::192.0.2.1:255.255.255.0:laptop:eth0:none:192.0.2.53:192.0.2.54",
		"ip=eth0:dhcp:1500:52:54:00:12:34:56 pbn.tries=3 pbn.onfail=poweroff",
		`init="/bin/sh -c" "a b"`,
		"pbn.mode=image pbn.payload=https://10.99.0.1:8443/tinyos.ext4",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q) error %v is not *Error", s, err)
			}
			return
		}
		for _, l := range c.LUKS {
			if len(l.UUID) != 36 || strings.ToLower(l.UUID) != l.UUID || l.Name == "" || strings.Contains(l.Name, "/") {
				t.Errorf("Parse(%q) LUKS %+v: not a lower-case UUID and a name", s, l)
			}
		}
		if c.PBN.Mode != ModeBoot && c.PBN.Mode != ModeImage {
			t.Errorf("Parse(%q) mode = %q", s, c.PBN.Mode)
		}
		if c.PBN.Payload != "" && !strings.HasPrefix(c.PBN.Payload, "https://") {
			t.Errorf("Parse(%q) payload = %q, want an https URL", s, c.PBN.Payload)
		}
		if c.PBN.Tries < 1 || c.PBN.Tries > maxTries {
			t.Errorf("Parse(%q) tries = %d", s, c.PBN.Tries)
		}
		for _, ip := range c.IP {
			if (ip.Method == MethodStatic) != ip.Address.IsValid() {
				t.Errorf("Parse(%q) ip %+v: a static set-up needs an address and only it has one", s, ip)
			}
		}
	})
}
