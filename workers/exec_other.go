//go:build !linux

package workers

import (
	"errors"
	"syscall"
)

// dieWithWorker: only Linux kills a command when its parent dies; elsewhere
// the watchdog alone kills it, with its group, when the worker dies.
func dieWithWorker(*syscall.SysProcAttr) {}

// groupRunning reports whether group pgid has a process; a zombie counts.
func groupRunning(pgid int) bool {
	return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}
