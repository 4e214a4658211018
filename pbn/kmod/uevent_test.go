package kmod

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/testenv"
)

// ueventMessage builds a message as the kernel sends it: the header and
// the fields, each ended by a NUL.
func ueventMessage(header string, fields ...string) []byte {
	return []byte(header + "\x00" + strings.Join(fields, "\x00") + "\x00")
}

func TestParseUevent(t *testing.T) {
	const alias = "virtio:d00000001v00001AF4"
	tests := []struct {
		name string
		msg  []byte
		want string
	}{
		{"virtio network device added", ueventMessage("add@/devices/pci0000:00/0000:00:02.0/virtio0",
			"ACTION=add", "DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio0", "SUBSYSTEM=virtio",
			"MODALIAS="+alias, "SEQNUM=1042"), alias},
		{"removed", ueventMessage("remove@/devices/pci0000:00/0000:00:02.0/virtio0",
			"ACTION=remove", "MODALIAS="+alias), ""},
		{"driver bound", ueventMessage("bind@/devices/pci0000:00/0000:00:02.0/virtio0",
			"ACTION=bind", "DRIVER=virtio_net", "MODALIAS="+alias), ""},
		{"no modalias", ueventMessage("add@/devices/virtual/net/lo", "ACTION=add", "SUBSYSTEM=net"), ""},
		{"empty modalias", ueventMessage("add@/devices/x", "ACTION=add", "MODALIAS="), ""},
		{"the CPU's, with its newline", ueventMessage("add@/devices/system/cpu/cpu0", "ACTION=add",
			"MODALIAS=cpu:type:x86,ven0000fam0006mod0055:feature:,0099,\n"), "cpu:type:x86,ven0000fam0006mod0055:feature:,0099,"},
		{"no header", []byte("ACTION=add\x00MODALIAS=" + alias + "\x00"), ""},
		{"no NUL", []byte("add@/devices/x"), ""},
		{"udev's rebroadcast", append([]byte("libudev\x00\xfe\xed\xca\xfe"), ueventMessage("ACTION=add", "MODALIAS="+alias)...), ""},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		got, ok := parseUevent(tt.msg)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("%s: parseUevent() = %q, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add(ueventMessage("add@/devices/pci0000:00/0000:00:02.0/virtio0", "ACTION=add", "MODALIAS=virtio:d00000001v00001AF4", "SEQNUM=7"))
	f.Add(ueventMessage("remove@/devices/x", "ACTION=remove"))
	f.Add([]byte("libudev\x00\xfe\xed\xca\xfe"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := parseUevent(b)
		if ok != (a != "") {
			t.Fatalf("parseUevent() = %q, %v", a, ok)
		}
		if ok && (strings.ContainsRune(a, 0) || a != strings.TrimSpace(a) || !strings.Contains(string(b), a)) {
			t.Fatalf("parseUevent() = %q, not a field of the message", a)
		}
	})
}

// TestUeventsKernel subscribes to this machine's kernel and has it send
// an "add" event for the first CPU again, as udevadm trigger does at
// every boot (writing to the device's uevent file); the CPU's modalias
// must come through. It does not prove that a forged message from another
// process is ignored: only root may send to the kernel's group.
func TestUeventsKernel(t *testing.T) {
	testenv.Root(t)
	const cpu0 = "/sys/devices/system/cpu/cpu0"
	b, err := os.ReadFile(cpu0 + "/uevent")
	if err != nil {
		t.Skipf("no CPU device in sysfs: %v", err)
	}
	want, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "MODALIAS=")
	if !ok {
		t.Skipf("the CPU device's uevent has no modalias: %q", b)
	}
	u, err := ListenUevents("/sys")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := os.WriteFile(cpu0+"/uevent", []byte("add"), 0); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	var got []string
	for {
		select {
		case a := <-u.Modaliases():
			if a == want {
				return
			}
			got = append(got, a)
		case <-timeout:
			t.Fatalf("no uevent with the CPU's modalias %q in 10 s; got %q", want, got)
		}
	}
}

// TestUeventsClose checks that Close ends the subscription and its
// channel.
func TestUeventsClose(t *testing.T) {
	testenv.Root(t)
	u, err := ListenUevents("/sys")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-u.Modaliases():
		for ok {
			_, ok = <-u.Modaliases()
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Modaliases() not closed 10 s after Close")
	}
}
