//go:build !unix

package natsserver

// lockDataDir: no lock where flock is missing; one server per data
// directory is then the operator's to ensure, and a server that died is not
// told apart from one that stopped.
func lockDataDir(string) (func(string), string, error) { return func(string) {}, "", nil }

const (
	stoppedMark     = "stopped"
	writeFailedMark = "stopped after a failed write"
)
