//go:build !linux

package workers

import (
	"errors"
	"os"
	"syscall"
)

// dieWithWorker: only Linux kills a command when its parent dies; elsewhere
// the watchdog alone kills it, with its group, when the worker dies.
func dieWithWorker(*syscall.SysProcAttr) {}

// groupRunning reports whether group pgid has a process; a zombie counts.
func groupRunning(pgid int) bool {
	return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// pipeBacklog is at most how many bytes are in pipe r, to be read: the
// most a pipe holds, not knowing better.
func pipeBacklog(*os.File) int { return pipeBacklogMax }

// commandExited: elsewhere, only a command's reaping tells that it exited.
func commandExited(int) bool { return false }

// checkBinary: elsewhere the formats the kernel starts are not told here;
// a file without a #! line is left to its start.
func checkBinary([]byte, string) error { return nil }
