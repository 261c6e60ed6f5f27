//go:build !linux

package workers

import "syscall"

// dieWithWorker: only Linux kills a command when its parent dies; elsewhere
// a command outlives a worker killed with SIGKILL.
func dieWithWorker(*syscall.SysProcAttr) {}
