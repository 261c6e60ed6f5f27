package natsserver

import (
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
