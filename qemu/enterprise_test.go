package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbn-project/pbn/internal/netns"
	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
	"github.com/pbn-project/pbn/pbn/tang"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// entFixture is the enterprise the tests of this binary share, on a lab of
// its own with a DHCP server, and the PBN image with its configuration:
// the DC takes tens of seconds to provision. TestMain closes the lab.
var entFixture struct {
	once  sync.Once
	lab   *Lab
	ent   *Enterprise
	image string
	err   error
}

// sharedEnterprise returns the shared enterprise and its image, starting
// them on the first call.
func sharedEnterprise(t testing.TB) (*Enterprise, string) {
	t.Helper()
	pbnDisk(t)
	samba.Need(t)
	f := &entFixture
	f.once.Do(func() { f.err = startEnterprise() })
	if f.err != nil {
		t.Fatalf("enterprise: %v", f.err)
	}
	return f.ent, f.image
}

func startEnterprise() error {
	f := &entFixture
	ctx, cancel := context.WithTimeout(context.Background(), fixtureTimeout)
	defer cancel()
	var err error
	if f.ent, f.image, err = StartWorld(ctx, "..", fixtures.dir, pbnFixture.base, Options{}); err != nil {
		return err
	}
	f.lab = f.ent.Lab
	return nil
}

// closeEnterprise closes the shared enterprise's lab, if it was made.
func closeEnterprise() error {
	if entFixture.lab == nil {
		return nil
	}
	return entFixture.lab.Close()
}

// TestProvisionedLaptop provisions a laptop from the host, checks that the
// key server lists it enrolled, and boots it: the agent gets its address
// from the lab's DHCP server and finds the provisioning key file. Then the
// power is cut, and the TPM, its state kept, still opens the provisioning
// key file with the key server's help (what autoboot will do in the
// guest), and the laptop powers on again. Throughout, the guest sends
// nothing to an address outside the lab.
//
// It does not prove that the guest would use no route out if one existed:
// the lab's namespace has none, and the check sees only what the guest
// tried on the LAN.
func TestProvisionedLaptop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	e, image := sharedEnterprise(t)
	k, _, _, _ := pbnDisk(t)
	dev, err := e.Provision(ctx, "prov1", ProvisionOptions{Template: pbnFixture.spec})
	if err != nil {
		t.Fatalf("Provision = %v", err)
	}
	info, err := e.Admin.Device(ctx, dev.ID)
	if err != nil {
		t.Fatalf("Device(%s) = %v", dev.ID, err)
	}
	if info.Hostname != "prov1" || info.Group != "laptops" || info.State != store.DeviceActive {
		t.Errorf("Device = %+v, want prov1 in laptops, active", info)
	}

	sniff := sniffLAN(t, e.Lab)
	m, err := e.Lab.Laptop(ctx, "prov1", LaptopOptions{Kernel: k.Image, Initrd: image, Disks: []string{dev.Disk},
		TPMState: dev.TPMDir, Console: &testWriter{t: t, name: "prov1"},
		Append: "quiet pbn.debug rd.luks.uuid=" + dev.LUKSUUID})
	if err != nil {
		t.Fatalf("Laptop = %v", err)
	}
	// The provisioning key file opened with the key server's help: the
	// countdown to the unattended boot starts (see provisioning_test.go).
	got := expect(t, ctx, m, networkRE, `pbn: keyfiles: (\d+) on (\S+)`, countdownRE)
	if lease, ok := e.Lab.Lease(m.MAC); !ok || !strings.Contains(got[0][1], lease.String()) {
		t.Errorf("network: %q, lease for %s: %v %v; want the leased address", got[0][1], m.MAC, lease, ok)
	}
	if got[1][1] != "1" {
		t.Errorf("the agent found %s key files, want the provisioning one", got[1][1])
	}
	if err := m.PowerCut(); err != nil {
		t.Fatalf("PowerCut = %v", err)
	}

	openProvisioning(t, ctx, e, dev)

	if err := m.PowerOn(ctx); err != nil {
		t.Fatalf("PowerOn = %v", err)
	}
	expect(t, ctx, m, `pbn: keyfiles: 1 on `)
	if err := m.PowerCut(); err != nil {
		t.Fatalf("PowerCut = %v", err)
	}
	seen, outside := sniff.stop()
	if seen == 0 {
		t.Error("the capture saw no IP packet from the guest, which leased an address")
	}
	for _, a := range outside {
		t.Errorf("the guest sent a packet to %s, outside the lab", a)
	}
}

// openProvisioning opens the device's provisioning key file from the host
// with the device's TPM, on its state, and the key server in the lab.
func openProvisioning(t *testing.T, ctx context.Context, e *Enterprise, dev *Device) {
	t.Helper()
	sock := filepath.Join(dev.TPMDir, "test.sock")
	p, err := e.Lab.startSwtpm(ctx, dev.Name+" (test)", dev.TPMDir, "--server", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	tp, err := tpm.Open(ctx, "unix:"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	key, err := tp.DeviceKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := readESPFile(ctx, dev.Disk, disk.KeyDir+"/"+ProvisioningFile)
	if err != nil {
		t.Fatal(err)
	}
	f, err := keyfile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Header().ID != dev.Binding {
		t.Errorf("the ESP's key file is %s, want the binding %s", f.Header().ID, dev.Binding)
	}
	network := tang.Factor{Curve: keyserver.PBNCurve,
		Transport: &keyserver.Transport{Key: key, Dial: netns.Dialer(e.Lab.Name)}}
	if err := f.Open(ctx, network); err != nil {
		t.Errorf("Open(network) with the laptop's TPM after a power cut = %v", err)
	}
}

// sniffer records where the laptops on a lab's LAN send IP packets that
// the lab cannot deliver: to addresses outside Subnet, besides broadcast
// and multicast.
type sniffer struct {
	fd      int
	done    chan struct{}
	mu      sync.Mutex
	outside []netip.Addr
	seen    int // IP packets from laptops
	stopped bool
}

// sniffPoll is how often the capture looks whether it was stopped.
const sniffPoll = 100 * time.Millisecond

// sniffLAN captures the frames on the lab's bridge, where every packet a
// laptop sends to an address beyond the LAN arrives (the bridge is its
// router), with a packet socket (packet(7)) made inside the namespace and
// the bridge in promiscuous mode, until stop.
func sniffLAN(t *testing.T, l *Lab) *sniffer {
	t.Helper()
	s := &sniffer{fd: -1, done: make(chan struct{})}
	err := netns.Do(l.Name, func() error {
		br, err := net.InterfaceByName("br0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		s.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: br.Index}); err != nil {
			return err
		}
		mr := unix.PacketMreq{Ifindex: int32(br.Index), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(sniffPoll.Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		t.Fatalf("capture on the lab's bridge: %v", err)
	}
	go s.read()
	t.Cleanup(func() { s.stop() })
	return s
}

// laptopMAC is the prefix of the laptops' MAC addresses (see Lab.Laptop).
var laptopMAC = []byte{0x52, 0x54, 0x00, 0x99}

func (s *sniffer) read() {
	defer close(s.done)
	buf := make([]byte, 2048)
	for {
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			return
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		a, ip, bad := undeliverable(buf[:n])
		s.mu.Lock()
		if ip {
			s.seen++
		}
		if bad {
			s.outside = append(s.outside, a)
		}
		s.mu.Unlock()
	}
}

// undeliverable returns the destination of an Ethernet frame, whether it
// carries an IP packet from a laptop, and whether that packet goes to an
// address outside the lab.
func undeliverable(frame []byte) (dst netip.Addr, ip, outside bool) {
	if len(frame) < 14 || !bytes.Equal(frame[6:10], laptopMAC) {
		return netip.Addr{}, false, false
	}
	switch pkt := frame[14:]; binary.BigEndian.Uint16(frame[12:14]) {
	case unix.ETH_P_IP:
		if len(pkt) < 20 {
			return netip.Addr{}, false, false
		}
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
	case unix.ETH_P_IPV6:
		if len(pkt) < 40 {
			return netip.Addr{}, false, false
		}
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
	default:
		return netip.Addr{}, false, false
	}
	lab := Subnet.Contains(dst) || dst.IsMulticast() || dst.IsLinkLocalUnicast() ||
		dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})
	return dst, true, !lab
}

// stop ends the capture and returns the number of IP packets the laptops
// sent and the destinations outside the lab among them.
func (s *sniffer) stop() (int, []netip.Addr) {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	s.mu.Unlock()
	if first {
		<-s.done
		unix.Close(s.fd)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen, s.outside
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// readESPFile reads the file name from the ESP of a disk MakeDisk made.
func readESPFile(ctx context.Context, img, name string) ([]byte, error) {
	dst := filepath.Join(filepath.Dir(img), "esp-read")
	defer os.Remove(dst)
	if err := run(ctx, "mcopy", "-n", "-o", "-i", fmt.Sprintf("%s@@%d", img, ESPOffset), "::"+name, dst); err != nil {
		return nil, err
	}
	return os.ReadFile(dst)
}

// TestUndeliverable checks the capture's verdict on frames a laptop might
// send.
func TestUndeliverable(t *testing.T) {
	frame := func(ethertype uint16, dst netip.Addr) []byte {
		b := make([]byte, 14+40)
		copy(b[6:], append(laptopMAC, 0, 1))
		binary.BigEndian.PutUint16(b[12:], ethertype)
		if dst.Is4() {
			a := dst.As4()
			copy(b[14+16:], a[:])
		} else {
			a := dst.As16()
			copy(b[14+24:], a[:])
		}
		return b
	}
	ip4, ip6 := uint16(unix.ETH_P_IP), uint16(unix.ETH_P_IPV6)
	host := frame(ip4, netip.MustParseAddr("192.0.2.1"))
	host[6] = 0x02 // another MAC address than the laptops'
	tests := []struct {
		name        string
		frame       []byte
		ip, outside bool
	}{
		{"to the key server", frame(ip4, Gateway), true, false},
		{"to the DC", frame(ip4, DCAddr), true, false},
		{"DHCP broadcast", frame(ip4, netip.MustParseAddr("255.255.255.255")), true, false},
		{"DHCPv6 multicast", frame(ip6, netip.MustParseAddr("ff02::1:2")), true, false},
		{"IPv6 link-local", frame(ip6, netip.MustParseAddr("fe80::1")), true, false},
		{"to the internet", frame(ip4, netip.MustParseAddr("192.0.2.1")), true, true},
		{"IPv6 to the internet", frame(ip6, netip.MustParseAddr("2001:db8::1")), true, true},
		{"ARP", frame(unix.ETH_P_ARP, Gateway), false, false},
		{"the host's", host, false, false},
		{"short", frame(ip4, Gateway)[:20], false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ip, outside := undeliverable(tt.frame)
			if ip != tt.ip || outside != tt.outside {
				t.Errorf("undeliverable = ip %v, outside %v; want %v, %v", ip, outside, tt.ip, tt.outside)
			}
		})
	}
}

// FuzzUndeliverable checks that no frame makes the capture's parser panic
// or call a frame outside the lab that carries no IP packet.
func FuzzUndeliverable(f *testing.F) {
	f.Add([]byte{})
	f.Add(append(append(make([]byte, 6), laptopMAC...), 0, 1, 0x08, 0x00))
	f.Add(append(append(append(make([]byte, 6), laptopMAC...), 0, 1, 0x86, 0xdd), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, frame []byte) {
		dst, ip, outside := undeliverable(frame)
		if outside && (!ip || Subnet.Contains(dst)) {
			t.Errorf("undeliverable(%x) = %v, ip %v, outside %v", frame, dst, ip, outside)
		}
	})
}
