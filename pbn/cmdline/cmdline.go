// Package cmdline parses the kernel command line that the agent acts on:
// which LUKS2 volume to open (rd.luks.uuid=, rd.luks.name=), which root to
// mount (root=, rootfstype=, rootflags=, ro, rw), how to bring up the network
// (the dracut-style ip=, see dracut.cmdline(7)) and the agent's own pbn.*
// options.
//
// Parsing is strict for what the agent acts on: a malformed value of a
// parameter it knows, or an unknown pbn.* option, is an error. Parameters
// meant for the kernel or other programs (console=, quiet, ...) are ignored.
package cmdline

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Cmdline is what the agent takes from the kernel command line.
type Cmdline struct {
	// LUKS are the volumes named by rd.luks.uuid= and rd.luks.name=, in
	// the order given.
	LUKS []LUKS
	// Root is the root file system named by root=; its Kind is empty when
	// root= is absent.
	Root Device
	// RootFSType is rootfstype=, empty to detect the type.
	RootFSType string
	// RootFlags is rootflags=, the file system's mount options.
	RootFlags string
	// ReadWrite is true when rw was given: the root is mounted read-only
	// otherwise, as the kernel does.
	ReadWrite bool
	// Init is init=, the program to execute on the real root; empty means
	// the usual places.
	Init string
	// IP are the ip= parameters, in the order given. None means DHCP on
	// every link.
	IP []IP
	// Nameservers are the nameserver= parameters.
	Nameservers []string
	// PBN are the agent's own options.
	PBN Options
}

// LUKS names one LUKS volume to open.
type LUKS struct {
	// UUID is the LUKS header's UUID, lower case, without a "luks-" prefix.
	UUID string
	// Name is the device-mapper name to open it as; rd.luks.uuid= alone
	// gives "luks-<UUID>", as systemd-cryptsetup-generator does.
	Name string
}

// DeviceKind tells how root= names its device.
type DeviceKind string

// The ways root= names a device.
const (
	DeviceUUID     DeviceKind = "UUID"     // the file system's UUID
	DevicePARTUUID DeviceKind = "PARTUUID" // the GPT partition's unique GUID
	DeviceLabel    DeviceKind = "LABEL"    // the file system's label
	DevicePath     DeviceKind = "path"     // a /dev path
)

// Device is a block device named by root=.
type Device struct {
	Kind DeviceKind
	// Value is the UUID (lower case), label or path.
	Value string
}

func (d Device) String() string {
	if d.Kind == DevicePath {
		return d.Value
	}
	return string(d.Kind) + "=" + d.Value
}

// Failure is what the agent does after an error it cannot recover from.
type Failure string

// The failure policies of pbn.onfail=.
const (
	// FailHalt leaves the message on the console and waits for a reset.
	FailHalt Failure = "halt"
	// FailReboot reboots after pbn.failwait.
	FailReboot Failure = "reboot"
	// FailPowerOff powers the machine off after pbn.failwait.
	FailPowerOff Failure = "poweroff"
)

// Mode is what the agent does at this boot: pbn.mode=.
type Mode string

// The agent's modes.
const (
	// ModeBoot opens the disk and boots the OS on it: the default.
	ModeBoot Mode = "boot"
	// ModeImage images the disk: the PXE entry's mode (package imaging).
	ModeImage Mode = "image"
)

// Options are the agent's pbn.* options.
type Options struct {
	// Mode is pbn.mode=: boot (the default) or image.
	Mode Mode
	// Payload is pbn.payload=, an https URL: in the imaging mode, the OS
	// payload to write instead of the one the configuration names. The
	// configuration's pinned CA still authenticates its server.
	Payload string
	// OnFail is pbn.onfail=: halt (the default), reboot or poweroff.
	OnFail Failure
	// FailWait is pbn.failwait=, a Go duration: how long the failure
	// message stays before a reboot or power-off. Default 10s.
	FailWait time.Duration
	// Tries is pbn.tries=, how many passwords the prompt takes. Default 3.
	Tries int
	// NetTimeout is pbn.nettimeout=, a Go duration: how long the network
	// bring-up may take as a whole. Default 5s.
	NetTimeout time.Duration
	// DeviceTimeout is pbn.devtimeout=, a Go duration: how long to wait
	// for the ESP and the LUKS volume to appear. Default 10s.
	DeviceTimeout time.Duration
	// Debug is pbn.debug: the agent's structured log goes to the console
	// too.
	Debug bool
}

// The defaults of the pbn.* options.
const (
	DefaultFailWait      = 10 * time.Second
	DefaultTries         = 3
	DefaultNetTimeout    = 5 * time.Second
	DefaultDeviceTimeout = 10 * time.Second
	maxTries             = 100
)

// Error reports a kernel command line that the agent cannot act on.
// [Parse] returns it.
type Error struct {
	// Param is the parameter as given, key=value.
	Param string
	// Err says what is wrong with it.
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("kernel command line: %q: %v", e.Param, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Sentence returns the line the console shows a person.
func (e *Error) Sentence() string {
	return fmt.Sprintf("The boot parameter %q is not valid; ask your administrator to fix the boot entry.",
		e.Param)
}

// Parse parses a kernel command line as /proc/cmdline holds it. Errors are
// of type *Error.
func Parse(s string) (*Cmdline, error) {
	c := &Cmdline{PBN: Options{
		Mode:          ModeBoot,
		OnFail:        FailHalt,
		FailWait:      DefaultFailWait,
		Tries:         DefaultTries,
		NetTimeout:    DefaultNetTimeout,
		DeviceTimeout: DefaultDeviceTimeout,
	}}
	params, err := split(s)
	if err != nil {
		return nil, &Error{Param: s, Err: err}
	}
	for _, p := range params {
		key, value, hasValue := strings.Cut(p, "=")
		if err := c.set(key, value, hasValue); err != nil {
			return nil, &Error{Param: p, Err: err}
		}
	}
	return c, nil
}

// split splits the command line at spaces outside double quotes and
// removes the quotes, as the kernel's next_arg does.
func split(s string) ([]string, error) {
	var params []string
	var cur strings.Builder
	quoted, inParam := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			inParam = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if inParam {
				params = append(params, cur.String())
				cur.Reset()
				inParam = false
			}
		default:
			cur.WriteRune(r)
			inParam = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated double quote")
	}
	if inParam {
		params = append(params, cur.String())
	}
	return params, nil
}

// set applies one parameter. Parameters that the agent does not act on are
// ignored; so are those past "--", which belong to init.
func (c *Cmdline) set(key, value string, hasValue bool) error {
	if strings.HasPrefix(key, "pbn.") {
		return c.PBN.set(strings.TrimPrefix(key, "pbn."), value, hasValue)
	}
	var err error
	switch key {
	case "rd.luks.uuid":
		var u string
		u, err = parseUUID(strings.TrimPrefix(value, "luks-"))
		c.LUKS = append(c.LUKS, LUKS{UUID: u, Name: "luks-" + u})
	case "rd.luks.name":
		err = c.addLUKSName(value)
	case "root":
		c.Root, err = parseDevice(value)
	case "rootfstype":
		c.RootFSType, err = word(value)
	case "rootflags":
		c.RootFlags, err = word(value)
	case "init":
		c.Init, err = parsePath(value)
	case "ro", "rw":
		if hasValue {
			return fmt.Errorf("%s takes no value", key)
		}
		c.ReadWrite = key == "rw"
	case "ip":
		var ip IP
		ip, err = parseIP(value)
		c.IP = append(c.IP, ip)
	case "nameserver":
		var ns string
		ns, err = parseAddr(value)
		c.Nameservers = append(c.Nameservers, ns)
	}
	return err
}

func (c *Cmdline) addLUKSName(value string) error {
	u, name, ok := strings.Cut(value, "=")
	if !ok {
		return errors.New("want rd.luks.name=<uuid>=<name>")
	}
	u, err := parseUUID(strings.TrimPrefix(u, "luks-"))
	if err != nil {
		return err
	}
	if err := checkMapperName(name); err != nil {
		return err
	}
	c.LUKS = append(c.LUKS, LUKS{UUID: u, Name: name})
	return nil
}

func (o *Options) set(key, value string, hasValue bool) error {
	var err error
	switch key {
	case "mode":
		switch m := Mode(value); m {
		case ModeBoot, ModeImage:
			o.Mode = m
		default:
			err = errors.New("want boot or image")
		}
	case "payload":
		o.Payload, err = parseHTTPS(value)
	case "onfail":
		switch f := Failure(value); f {
		case FailHalt, FailReboot, FailPowerOff:
			o.OnFail = f
		default:
			err = errors.New("want halt, reboot or poweroff")
		}
	case "failwait":
		o.FailWait, err = parseDuration(value)
	case "nettimeout":
		o.NetTimeout, err = parseDuration(value)
	case "devtimeout":
		o.DeviceTimeout, err = parseDuration(value)
	case "tries":
		o.Tries, err = strconv.Atoi(value)
		if err == nil && (o.Tries < 1 || o.Tries > maxTries) {
			err = fmt.Errorf("want 1 to %d tries", maxTries)
		}
	case "debug":
		if hasValue {
			return errors.New("pbn.debug takes no value")
		}
		o.Debug = true
	default:
		err = errors.New("unknown pbn option")
	}
	return err
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("want a duration such as 5s or 500ms")
	}
	if d < 0 || d > 24*time.Hour {
		return 0, errors.New("want a duration between 0s and 24h")
	}
	return d, nil
}

// parseUUID checks a UUID in its 8-4-4-4-12 form and returns it in lower
// case.
func parseUUID(s string) (string, error) {
	if len(s) != 36 {
		return "", fmt.Errorf("want a UUID of 36 characters, got %d", len(s))
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return "", errors.New("want a UUID of the form 01234567-89ab-cdef-0123-456789abcdef")
			}
		default:
			if !isHex(r) {
				return "", errors.New("want a UUID of hex digits")
			}
		}
	}
	return strings.ToLower(s), nil
}

func isHex(r rune) bool {
	return r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F'
}

// byLinks are the udev links that name a device by what root= names it
// with; the image has no udev, so they are read as UUID=, PARTUUID= and
// LABEL=.
var byLinks = map[string]DeviceKind{
	"/dev/disk/by-uuid/": DeviceUUID, "/dev/disk/by-partuuid/": DevicePARTUUID, "/dev/disk/by-label/": DeviceLabel,
}

func parseDevice(s string) (Device, error) {
	for prefix, kind := range byLinks {
		if v, ok := strings.CutPrefix(s, prefix); ok {
			s = string(kind) + "=" + v
		}
	}
	kind, v, _ := strings.Cut(s, "=")
	switch DeviceKind(kind) {
	case DeviceUUID:
		u, err := parseUUIDOrSerial(v)
		return Device{Kind: DeviceUUID, Value: u}, err
	case DevicePARTUUID:
		u, err := parseUUID(v)
		return Device{Kind: DevicePARTUUID, Value: u}, err
	case DeviceLabel:
		if v == "" || strings.ContainsAny(v, "/\x00") {
			return Device{}, errors.New("want a label without slashes")
		}
		return Device{Kind: DeviceLabel, Value: v}, nil
	}
	p, err := parsePath(s)
	if err == nil && !strings.HasPrefix(p, "/dev/") {
		err = errors.New("want UUID=, PARTUUID=, LABEL= or a /dev path")
	}
	return Device{Kind: DevicePath, Value: p}, err
}

// parseUUIDOrSerial accepts a file system UUID: the usual 36-character
// form, or the 8-hex-digit volume serial of FAT ("ABCD-1234").
func parseUUIDOrSerial(s string) (string, error) {
	if len(s) == 9 && s[4] == '-' && strings.IndexFunc(s[:4]+s[5:], func(r rune) bool {
		return !isHex(r)
	}) < 0 {
		return strings.ToLower(s), nil
	}
	return parseUUID(s)
}

func parsePath(s string) (string, error) {
	if !strings.HasPrefix(s, "/") || strings.Contains(s, "\x00") || strings.Contains(s, "/../") ||
		strings.HasSuffix(s, "/..") {
		return "", errors.New("want an absolute path")
	}
	return s, nil
}

// parseHTTPS checks an https URL with a host.
func parseHTTPS(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return "", errors.New("want an https URL with a host and no user")
	}
	return s, nil
}

// word checks a value that is passed on as it is, such as a file system
// type or its options.
func word(s string) (string, error) {
	if s == "" || strings.ContainsAny(s, "\x00 ") {
		return "", errors.New("want a value without spaces")
	}
	return s, nil
}

// checkMapperName checks a device-mapper name: cryptsetup refuses slashes,
// and the name becomes a file under /dev/mapper.
func checkMapperName(s string) error {
	if s == "" || len(s) > 127 || s == "." || s == ".." || strings.ContainsAny(s, "/\x00 ") {
		return errors.New("want a device-mapper name of 1 to 127 characters without slashes")
	}
	return nil
}
