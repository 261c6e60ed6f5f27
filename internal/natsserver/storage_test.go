package natsserver

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// nats-server's own words for its storage failing, as 2.15 logs them.
func TestStorageLinesAreToldApart(t *testing.T) {
	for _, tc := range []struct {
		line string
		want storageTrouble
	}{
		{"Critical write error: write /data/jetstream/$G/streams/JJ_VIEWS/msgs/1.blk: no space left on device", storageWriteFailed},
		{"JetStream failed to store a msg on stream '$G > JJ_EVENTS': write /d/1.blk: no space left on device", storageWriteFailed},
		{"JetStream out of File resources, will be DISABLED", storageWriteFailed},
		{"Filesystem permission denied while writing msg, disabling JetStream: open /d: permission denied", storageWriteFailed},
		{"JetStream file resource limits exceeded for server", storageLimitReached},
		{"Client parser ERROR, state=0, i=0: proto='\"NOT NATS\"'", 0},
		{"Readloop processing time: 2.1s", 0},
	} {
		require.Equal(t, tc.want, classifyStorageLine(tc.line), tc.line)
	}
}

// A failed write is said once a minute in words an operator acts on, and
// leaves the data directory needing the check a death needs, for the next
// start: nats-server may have lost writes it acknowledged.
func TestAFailedWriteIsSaidAndRepairedAtTheNextStart(t *testing.T) {
	dir := t.TempDir()
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := Start(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: zap.New(core)})
	require.NoError(t, err)
	require.False(t, s.NeedsRepair())
	s.alarm.heard("JetStream file resource limits exceeded for server")
	require.False(t, s.NeedsRepair(), "a limit refuses writes; it loses none")
	for range 3 {
		s.alarm.heard("Critical write error: write /d/1.blk: no space left on device")
	}
	require.True(t, s.NeedsRepair())
	said := logs.FilterLoggerName("storage").All()
	require.Len(t, said, 2, "once for each trouble")
	require.Contains(t, said[0].Message, "storage limit, 75% of the disk space free when it started")
	require.Contains(t, said[1].Message, "then restart jetjob server")
	require.Equal(t, "Critical write error: write /d/1.blk: no space left on device", said[1].ContextMap()["nats_server_said"])
	s.Shutdown()

	again, err := Start(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer again.Shutdown()
	require.True(t, again.NeedsRepair(), "the next start checks the views")
	require.Equal(t, "the last server on this data directory failed to write to it (a full disk?)", again.RepairReason())
}
