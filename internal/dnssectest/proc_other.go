//go:build !linux

package dnssectest

import (
	"os"
	"syscall"
)

// sysProcAttr: elsewhere than Linux, no process group or death signal;
// the daemon alone is signalled.
func sysProcAttr() *syscall.SysProcAttr { return nil }

func signalGroup(pid int, sig syscall.Signal) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Signal(sig)
	}
}

func groupAlive(pid int) bool { return false }
