package natsserver

import (
	"fmt"
	"os"
	"path/filepath"
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

// holdShared opens dir and holds a shared lock on it until the file is
// closed (or its process dies).
func holdShared(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// ownUnheld says whether dir is a staging directory this user made on the
// memory file system (a directory, not a link, of mode 0700) that no
// server holds.
func ownUnheld(dir string) bool {
	if filepath.Dir(dir) != memoryFSPath {
		return false
	}
	info, err := os.Lstat(dir)
	if err != nil || !info.IsDir() || info.Mode().Perm() != 0o700 {
		return false
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Geteuid() {
		return false
	}
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
}
