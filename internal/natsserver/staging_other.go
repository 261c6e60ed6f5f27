//go:build !linux

package natsserver

import "errors"

// memoryFS: a memory file system is looked for on Linux only.
func memoryFS() (string, error) {
	return "", errors.New("no memory file system is looked for on this system")
}

// processRunning: nothing is staged in memory here to sweep.
func processRunning(int) bool { return true }
