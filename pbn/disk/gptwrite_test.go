package disk

import (
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/internal/testenv"
)

const (
	testDiskGUID = "0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9"
	luksType     = "ca7d7ccb-63ed-4c53-861c-1742536059cc"
)

// TestWriteGPT writes tables on both sector sizes, reads them back with
// ReadGPT and has sgdisk, the real tool, verify the primary and the
// backup.
func TestWriteGPT(t *testing.T) {
	sgdisk := testenv.Command(t, "sgdisk")
	for _, sector := range []int{512, 4096} {
		t.Run(strconv.Itoa(sector), func(t *testing.T) {
			const size = 64 << 20
			p := image(t, size)
			mib := uint64(1<<20) / uint64(sector)
			want := []Partition{
				{Number: 1, Type: ESPType, GUID: partUUID, Name: "PBN ESP", FirstLBA: mib, LastLBA: 9*mib - 1},
				{Number: 2, Type: luksType, GUID: luksUUID, Name: "PBN root", FirstLBA: 9 * mib, LastLBA: 63*mib - 1},
			}
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := WriteGPT(f, size, sector, testDiskGUID, want); err != nil {
				t.Fatalf("WriteGPT = %v", err)
			}
			got, err := ReadGPT(f)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("ReadGPT = %+v, %v; want %+v", got, err, want)
			}
			if sector != 512 {
				return // sgdisk takes an image file's sectors to be 512 bytes
			}
			out, err := exec.Command(sgdisk, "--verify", p).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "No problems found") {
				t.Errorf("sgdisk --verify = %v:\n%s", err, out)
			}
			out, err = exec.Command(sgdisk, "--info=2", p).CombinedOutput()
			if err != nil || !strings.Contains(strings.ToLower(string(out)), luksUUID) ||
				!strings.Contains(string(out), "'PBN root'") {
				t.Errorf("sgdisk --info=2 = %v:\n%s\nwant the root's GUID and name", err, out)
			}
		})
	}
}

func TestWriteGPTRefuses(t *testing.T) {
	const size = 8 << 20
	ok := Partition{Number: 1, Type: ESPType, GUID: partUUID, FirstLBA: 2048, LastLBA: 4095}
	tests := []struct {
		name   string
		size   int64
		sector int
		parts  []Partition
	}{
		{"odd sector", size, 1024, []Partition{ok}},
		{"tiny disk", 32 << 10, 512, nil},
		{"before the first usable", size, 512, []Partition{{Number: 1, Type: ESPType, GUID: partUUID, FirstLBA: 33, LastLBA: 100}}},
		{"past the last usable", size, 512, []Partition{{Number: 1, Type: ESPType, GUID: partUUID, FirstLBA: 2048, LastLBA: size/512 - 2}}},
		{"overlap", size, 512, []Partition{ok, {Number: 2, Type: ESPType, GUID: luksUUID, FirstLBA: 4095, LastLBA: 5000}}},
		{"same number", size, 512, []Partition{ok, {Number: 1, Type: ESPType, GUID: luksUUID, FirstLBA: 5000, LastLBA: 6000}}},
		{"zero type", size, 512, []Partition{{Number: 1, Type: "00000000-0000-0000-0000-000000000000", GUID: partUUID, FirstLBA: 2048, LastLBA: 4095}}},
		{"bad guid", size, 512, []Partition{{Number: 1, Type: ESPType, GUID: "not-a-guid", FirstLBA: 2048, LastLBA: 4095}}},
		{"long name", size, 512, []Partition{{Number: 1, Type: ESPType, GUID: partUUID, Name: strings.Repeat("n", 37), FirstLBA: 2048, LastLBA: 4095}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.OpenFile(image(t, tt.size), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := WriteGPT(f, tt.size, tt.sector, testDiskGUID, tt.parts); err == nil {
				t.Errorf("WriteGPT(%+v) = nil, want an error", tt.parts)
			}
		})
	}
}

// FuzzEncodeGUID checks that every GUID encodeGUID accepts reads back as
// guid prints it, in lower case.
func FuzzEncodeGUID(f *testing.F) {
	for _, s := range []string{ESPType, luksType, strings.ToUpper(partUUID), "0-0-0-0-0", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := encodeGUID(s)
		if err != nil {
			return
		}
		if got := guid(g[:]); got != strings.ToLower(s) {
			t.Errorf("guid(encodeGUID(%q)) = %q", s, got)
		}
	})
}
