package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ueventGroup is the netlink multicast group of the kernel's own uevents
// (lib/kobject_uevent.c); udev's rebroadcasts use group 2 and are not read.
const ueventGroup = 1

// ueventBuffer is the socket's receive buffer: a module that brings many
// devices at once (a USB hub, a SATA controller's ports) sends a burst of
// events, each under 2 KiB (UEVENT_BUFFER_SIZE).
const ueventBuffer = 4 << 20

// ueventQueue is how many modaliases Uevents holds for a reader that has
// not come for them yet.
const ueventQueue = 256

// Uevents tells of the devices that the kernel adds, from its uevents
// (NETLINK_KOBJECT_UEVENT): a coldplug then sees a device the moment a
// driver brings it, without looking at the tree again.
type Uevents struct {
	sysfs string
	f     *os.File
	ch    chan string
	done  chan struct{}
}

// ListenUevents subscribes to the kernel's uevents; sysfs is where sysfs
// is mounted, which it reads again when events were lost. Close ends the
// subscription.
func ListenUevents(sysfs string) (*Uevents, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevents: %w", err)
	}
	// SO_RCVBUFFORCE passes the system's limit for a privileged process;
	// anyone else gets what SO_RCVBUF allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ueventBuffer) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventBuffer)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: ueventGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevents: %w", err)
	}
	u := &Uevents{sysfs: sysfs, f: os.NewFile(uintptr(fd), "uevents"),
		ch: make(chan string, ueventQueue), done: make(chan struct{})}
	go u.read()
	return u, nil
}

// Modaliases returns the modalias of each device added since
// ListenUevents, at least once: when the socket overflowed and events were
// lost, the modalias of every device in the tree follows. It is closed
// once Close was called or the socket failed.
func (u *Uevents) Modaliases() <-chan string { return u.ch }

// Close ends the subscription.
func (u *Uevents) Close() error {
	close(u.done)
	return u.f.Close()
}

func (u *Uevents) read() {
	defer close(u.ch)
	rc, err := u.f.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	for {
		var n int
		var from unix.Sockaddr
		var recvErr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, recvErr = unix.Recvfrom(int(fd), buf, 0)
			return !errors.Is(recvErr, unix.EAGAIN)
		})
		switch {
		case err != nil:
			return // closed
		case errors.Is(recvErr, unix.ENOBUFS):
			aliases, _ := Modaliases(u.sysfs)
			for _, a := range aliases {
				if !u.send(a) {
					return
				}
			}
			continue
		case recvErr != nil:
			return
		}
		// Only the kernel sends from port 0; anything else is forged.
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue
		}
		if a, ok := parseUevent(buf[:n]); ok && !u.send(a) {
			return
		}
	}
}

// send queues a modalias and reports false once Close was called.
func (u *Uevents) send(modalias string) bool {
	select {
	case u.ch <- modalias:
		return true
	case <-u.done:
		return false
	}
}

// parseUevent returns the modalias of a kernel uevent that adds a device.
// The kernel's message is a header "ACTION@DEVPATH" and then KEY=VALUE
// fields, each ended by a NUL (lib/kobject_uevent.c); ACTION and MODALIAS
// are among the fields; the modalias comes without surrounding white
// space, as [Modaliases] gives it. A message of another action, without a modalias,
// or not of that form gives false.
func parseUevent(b []byte) (string, bool) {
	header, fields, ok := bytes.Cut(b, []byte{0})
	if !ok || !bytes.Contains(header, []byte("@")) {
		return "", false
	}
	var action, modalias []byte
	for f := range bytes.SplitSeq(fields, []byte{0}) {
		if v, ok := bytes.CutPrefix(f, []byte("ACTION=")); ok {
			action = v
		} else if v, ok := bytes.CutPrefix(f, []byte("MODALIAS=")); ok {
			modalias = v
		}
	}
	// The CPU's modalias ends with a newline, as in its sysfs file.
	modalias = bytes.TrimSpace(modalias)
	if string(action) != "add" || len(modalias) == 0 {
		return "", false
	}
	return string(modalias), true
}
