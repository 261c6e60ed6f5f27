package natsserver

import (
	"errors"
	"fmt"
	"syscall"
)

// memoryFSPath is Linux's shared memory file system, mounted by systemd and
// by container runtimes.
const memoryFSPath = "/dev/shm"

const tmpfsMagic = 0x01021994

// memoryFS returns a memory file system's path with stagingRoomMin free.
func memoryFS() (string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(memoryFSPath, &st); err != nil {
		return "", fmt.Errorf("no memory file system: %s: %w", memoryFSPath, err)
	}
	if st.Type != tmpfsMagic {
		return "", fmt.Errorf("%s is not a memory file system (tmpfs)", memoryFSPath)
	}
	if free := uint64(st.Bavail) * uint64(st.Bsize); free < stagingRoomMin {
		return "", fmt.Errorf("%s has %d MiB free, fewer than %d", memoryFSPath, free>>20, stagingRoomMin>>20)
	}
	return memoryFSPath, nil
}

// processRunning says whether a process with this ID runs (perhaps another
// user's).
func processRunning(pid int) bool {
	return pid > 0 && !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
