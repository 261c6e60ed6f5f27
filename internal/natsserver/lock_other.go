//go:build !unix

package natsserver

// lockDataDir: no lock where flock is missing; one server per data
// directory is then the operator's to ensure.
func lockDataDir(string) (func(), error) { return func() {}, nil }
