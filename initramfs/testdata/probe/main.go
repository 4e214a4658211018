// Command probe is a stand-in agent for the image tests: as /init it says
// that it runs, lists the modules the image carries, and powers off.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	mods, _ := filepath.Glob("/lib/modules/*/modules.dep")
	fmt.Printf("probe: pid %d, module index %v\n", os.Getpid(), mods)
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println("probe: power off:", err)
	}
}
