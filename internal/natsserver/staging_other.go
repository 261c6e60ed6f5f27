//go:build !linux

package natsserver

import (
	"errors"
	"os"
)

// memoryFS: a memory file system is looked for on Linux only.
func memoryFS() (string, error) {
	return "", errors.New("no memory file system is looked for on this system")
}

func holdShared(string) (*os.File, error) { return nil, errors.New("not on this system") }

// ownUnheld: nothing is staged in memory here, so no link found is trusted.
func ownUnheld(string) bool { return false }
