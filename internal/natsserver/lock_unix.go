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
// shut down: anything else found there was left by a server that died.
const stoppedMark = "stopped"

// lockDataDir takes the data directory for this server, or says which
// process has it. diedBefore reports that the server that last had it did
// not shut down (it was killed, or its machine stopped). unlock lets go of
// the directory, marking it cleanly stopped if stopped is true.
func lockDataDir(dir string) (unlock func(stopped bool), diedBefore bool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("data directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, fmt.Errorf("%w: %s (process %s); stop that server or use another data directory",
				ErrDataDirInUse, dir, strings.TrimSpace(string(holder)))
		}
		return nil, false, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	before, _ := os.ReadFile(f.Name())
	last := strings.TrimSpace(string(before))
	diedBefore = last != "" && last != stoppedMark
	mark := func(s string) {
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(s+"\n"), 0)
		_ = f.Sync() // a machine crash soon after must not leave "stopped"
	}
	mark(strconv.Itoa(os.Getpid()))
	return func(stopped bool) {
		if stopped {
			mark(stoppedMark)
		}
		_ = f.Close()
	}, diedBefore, nil
}
