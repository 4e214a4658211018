package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/disk"
)

// The volumes of the command lines in TestVolumes.
const (
	uuidA = "0a0a0a0a-0000-4000-8000-00000000000a"
	uuidB = "0b0b0b0b-0000-4000-8000-00000000000b"
	uuidC = "0c0c0c0c-0000-4000-8000-00000000000c"
)

// TestVolumes checks which volume holds the root and which are opened as
// data volumes, for command lines as the kernel passes them.
func TestVolumes(t *testing.T) {
	a := cmdline.LUKS{UUID: uuidA, Name: "luks-" + uuidA}
	b := cmdline.LUKS{UUID: uuidB, Name: "data"}
	c := cmdline.LUKS{UUID: uuidC, Name: "luks-" + uuidC}
	tests := []struct {
		name     string
		cmdline  string
		root     cmdline.LUKS
		data     []cmdline.LUKS
		noVolume bool
	}{
		{"one volume", "rd.luks.uuid=" + uuidA, a, nil, false},
		{"no root=: the first", "rd.luks.uuid=" + uuidA + " rd.luks.name=" + uuidB + "=data", a, []cmdline.LUKS{b}, false},
		{"root= by the LUKS UUID", "rd.luks.uuid=" + uuidA + " rd.luks.name=" + uuidB + "=data root=UUID=" + uuidB,
			b, []cmdline.LUKS{a}, false},
		{"root= by the mapper path", "rd.luks.uuid=" + uuidA + " rd.luks.name=" + uuidB + "=data root=/dev/mapper/data",
			b, []cmdline.LUKS{a}, false},
		{"root= inside a volume: the first", "rd.luks.uuid=" + uuidA + " rd.luks.uuid=" + uuidC + " root=LABEL=os",
			a, []cmdline.LUKS{c}, false},
		{"a volume named twice opens once", "rd.luks.uuid=" + uuidA + " rd.luks.name=" + uuidB + "=data rd.luks.uuid=" +
			uuidB + " rd.luks.uuid=" + uuidA, a, []cmdline.LUKS{b}, false},
		{"three volumes in order", "rd.luks.uuid=" + uuidC + " rd.luks.uuid=" + uuidA + " rd.luks.name=" + uuidB + "=data",
			c, []cmdline.LUKS{a, b}, false},
		{"no rd.luks: root= by UUID", "root=UUID=" + uuidA, a, nil, false},
		{"nothing named", "root=/dev/vda2", cmdline.LUKS{}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cmdline.Parse(tt.cmdline)
			if err != nil {
				t.Fatal(err)
			}
			root, err := rootVolume(c)
			if tt.noVolume {
				if !errors.Is(err, errNoVolume) {
					t.Errorf("rootVolume(%q) = %v, %v; want errNoVolume", tt.cmdline, root, err)
				}
				return
			}
			if err != nil || root != tt.root {
				t.Errorf("rootVolume(%q) = %v, %v; want %v", tt.cmdline, root, err, tt.root)
			}
			if got := dataVolumes(c, root); !slices.Equal(got, tt.data) {
				t.Errorf("dataVolumes(%q) = %v, want %v", tt.cmdline, got, tt.data)
			}
		})
	}
}

// TestVolumeSentence checks that a data volume that did not open gets its
// own plain line for each cause, naming the volume and none of the error's
// details.
func TestVolumeSentence(t *testing.T) {
	v := cmdline.LUKS{UUID: uuidB, Name: "data"}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"missing", &disk.NotFoundError{What: "UUID=" + uuidB}, "could not be found"},
		{"wrong key", fmt.Errorf("open /dev/vdb: %w", disk.ErrWrongKey), "does not open with your key"},
		{"other", errors.New("open /dev/vdb: cryptsetup: exit status 5: device busy"), "could not be opened"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &volumeError{Volume: v, Err: tt.err}
			got := e.Sentence()
			if !strings.Contains(got, tt.want) || !strings.Contains(got, "data") ||
				!strings.Contains(got, "starts without it") {
				t.Errorf("Sentence() = %q, want %q about data and the boot going on", got, tt.want)
			}
			if strings.Contains(got, "/dev/") || strings.Contains(got, uuidB) {
				t.Errorf("Sentence() = %q, want no device path or UUID", got)
			}
			if !errors.Is(e, tt.err) {
				t.Errorf("errors.Is(%v, %v) = false", e, tt.err)
			}
		})
	}
}
