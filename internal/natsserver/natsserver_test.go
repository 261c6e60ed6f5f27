package natsserver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Two servers on one data directory would write one JetStream store at
// once: the second is refused until the first stops.
func TestOneServerPerDataDirectory(t *testing.T) {
	dir := t.TempDir()
	first, err := Start(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	_, err = Start(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	require.ErrorIs(t, err, ErrDataDirInUse)
	require.Contains(t, err.Error(), "process ")
	first.Shutdown()
	first.Shutdown()
	again, err := Start(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	again.Shutdown()
}

// A data directory whose last server died (its lock file still names the
// process) needs repair until a server says it repaired it; a server that
// shuts down before then leaves it needing repair.
func TestADeathIsRepairedOnce(t *testing.T) {
	dir := t.TempDir()
	start := func() *Server {
		t.Helper()
		s, err := Start(Config{DataDir: dir, Listen: "127.0.0.1:0"})
		require.NoError(t, err)
		return s
	}
	s := start()
	require.False(t, s.NeedsRepair(), "a new data directory")
	s.Shutdown()
	s = start()
	require.False(t, s.NeedsRepair(), "after a shutdown")
	s.Shutdown()

	// What a killed server leaves: the lock file naming its process.
	require.NoError(t, os.WriteFile(filepath.Join(dir, lockFile), []byte("4242\n"), 0o644))
	s = start()
	require.True(t, s.NeedsRepair(), "after a death")
	require.Equal(t, "the last server on this data directory died instead of stopping", s.RepairReason())
	s.Shutdown() // before the repair
	s = start()
	require.True(t, s.NeedsRepair(), "a repair cut short is done again")
	s.Repaired()
	require.False(t, s.NeedsRepair())
	s.Shutdown()
	s = start()
	require.False(t, s.NeedsRepair(), "once repaired")
	s.Shutdown()
}
