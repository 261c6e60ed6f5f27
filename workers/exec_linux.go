package workers

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// dieWithWorker has the kernel kill the command when the worker dies, so
// that a job retried after its worker was found dead never runs next to an
// orphan of its earlier attempt.
func dieWithWorker(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

// groupRunning reports whether a process of group pgid has not exited. A
// zombie has: a worker that reaps orphans (PID 1 in a container, a
// subreaper) and never reaps those of a command would otherwise wait out
// every cancel's grace for processes long gone.
func groupRunning(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true // cannot tell: as if running
	}
	// Gone only if every member found is a zombie: finding none (a /proc
	// of another PID namespace, or hiding other users' processes) tells
	// nothing, and kill found the group.
	members := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and ')'.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := bytes.Fields(stat[i+1:])
		if len(fields) < 3 || string(fields[2]) != strconv.Itoa(pgid) {
			continue
		}
		members++
		if string(fields[0]) != "Z" {
			return true
		}
	}
	return members == 0
}

// pipeBacklog is how many bytes are in pipe r, to be read (TIOCINQ is
// FIONREAD).
func pipeBacklog(r *os.File) int {
	rc, err := r.SyscallConn()
	if err != nil {
		return pipeBacklogMax
	}
	n := pipeBacklogMax
	_ = rc.Control(func(fd uintptr) {
		var queued int32
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&queued))); errno == 0 {
			n = int(queued)
		}
	})
	return n
}

// commandExited reports whether the command of process pid has exited: a
// zombie, or reaped (by its cmd.Wait, just before the caller could hear of
// it: only its parent reaps it) while /proc shows processes.
func commandExited(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	// ESRCH: reaped between the open and the read, as when the worker
	// wakes from a pause and its Wait runs at the same moment.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		_, err := os.Stat("/proc/self/stat")
		return err == nil
	}
	if err != nil {
		return false // cannot tell: as if running
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	fields := bytes.Fields(stat[i+1:])
	return len(fields) > 0 && string(fields[0]) == "Z"
}

// checkBinary refuses a file that begins with no #! line and is no ELF
// binary, as the kernel does (ENOEXEC), unless binfmt_misc has formats
// registered: one of those may run it (a jar, a foreign binary), and which
// is not worth telling here.
func checkBinary(head []byte, shown string) error {
	if bytes.HasPrefix(head, []byte("\x7fELF")) {
		return nil
	}
	if entries, err := os.ReadDir("/proc/sys/fs/binfmt_misc"); err == nil {
		for _, e := range entries {
			if name := e.Name(); name != "register" && name != "status" {
				return nil
			}
		}
	}
	return errNoProgram(shown)
}
