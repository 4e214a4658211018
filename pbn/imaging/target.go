package imaging

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pbn-project/pbn/pbn/disk"
)

// virtualDisks are the name prefixes of block devices that are not a
// laptop's disks: loop, RAM and compressed-RAM disks, optical drives,
// device-mapper and software RAID volumes, network block devices.
var virtualDisks = []string{"loop", "ram", "zram", "sr", "dm-", "md", "nbd"}

// FixedDisks returns the /dev paths of the disks that imaging may choose
// from, sorted by name: whole disks with a size that are neither removable
// (USB sticks, card readers: /sys/class/block/NAME/removable) nor virtual.
func FixedDisks(s disk.Sysfs) ([]string, error) {
	devs, err := disk.Scan(s)
	if err != nil {
		return nil, fmt.Errorf("imaging: %w", err)
	}
	block := s.Block
	if block == "" {
		block = "/sys/class/block"
	}
	var paths []string
	for _, d := range devs {
		if d.Disk != "" || slices.ContainsFunc(virtualDisks, func(p string) bool {
			return strings.HasPrefix(d.Name, p)
		}) {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(block, d.Name, "removable")); err == nil &&
			strings.TrimSpace(string(b)) == "1" {
			continue
		}
		paths = append(paths, d.Path)
	}
	slices.Sort(paths)
	return paths, nil
}
