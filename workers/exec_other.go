//go:build !linux

package workers

import (
	"errors"
	"syscall"
)

// dieWithWorker: only Linux kills a command when its parent dies; elsewhere
// a command outlives a worker killed with SIGKILL.
func dieWithWorker(*syscall.SysProcAttr) {}

// groupRunning reports whether group pgid has a process; a zombie counts.
func groupRunning(pgid int) bool {
	return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}
