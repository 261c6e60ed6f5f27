//go:build unix

package natsserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile in the data directory is held, with an exclusive flock, by the
// server using it; the kernel lets go of it when the process dies.
const lockFile = "jetjob.lock"

// stoppedMark replaces the holder's process ID in lockFile once its server
// shut down; writeFailedMark once it shut down after a write to the data
// directory failed, which needs the repair a death needs: anything else
// found there was left by a server that died.
const (
	stoppedMark     = "stopped"
	writeFailedMark = "stopped after a failed write"
)

// lockDataDir takes the data directory for this server, or says which
// process has it, and what the server that last had it left in lockFile:
// "" for none, stoppedMark, writeFailedMark, or the process ID of one that
// did not shut down (it was killed, or its machine stopped). unlock lets go
// of the directory, leaving mark there, or the process ID if mark is "".
func lockDataDir(dir string) (unlock func(mark string), last string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("data directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, "", fmt.Errorf("%w: %s (process %s); stop that server or use another data directory",
				ErrDataDirInUse, dir, strings.TrimSpace(string(holder)))
		}
		return nil, "", fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	before, _ := os.ReadFile(f.Name())
	last = strings.TrimSpace(string(before))
	mark := func(s string) {
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(s+"\n"), 0)
		_ = f.Sync() // a machine crash soon after must not leave "stopped"
	}
	mark(strconv.Itoa(os.Getpid()))
	return func(m string) {
		if m != "" {
			mark(m)
		}
		_ = f.Close()
	}, last, nil
}
