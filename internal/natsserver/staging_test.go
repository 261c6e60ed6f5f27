//go:build linux

package natsserver

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// atomicStream makes a stream that takes atomic batches, as the event log is.
func atomicStream(t *testing.T, s *Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "EV", Subjects: []string{"ev.>"}, AllowAtomicPublish: true})
	require.NoError(t, err)
	return nc
}

// stageOne sends message seq of a batch, its commit if commit, and returns
// the server's answer; the server holds a batch's messages staged until its
// commit.
func stageOne(t *testing.T, nc *nats.Conn, batch string, seq int, commit bool) *nats.Msg {
	t.Helper()
	m := nats.NewMsg("ev.job" + strconv.Itoa(seq))
	m.Data = []byte("event")
	m.Header.Set("Nats-Batch-Id", batch)
	m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(seq))
	if commit {
		m.Header.Set("Nats-Batch-Commit", "1")
	}
	resp, err := nc.RequestMsg(m, 5*time.Second)
	require.NoError(t, err)
	return resp
}

// stoppedWithStream is a data directory whose server made the stream and
// stopped, and where the stream's batches directory would be.
func stoppedWithStream(t *testing.T) (data, batches string) {
	t.Helper()
	data = t.TempDir()
	s, err := Start(Config{DataDir: data, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	atomicStream(t, s)
	batches = s.batchesDir("EV")
	s.Shutdown()
	return data, batches
}

// stagingInMemory is a server whose stream stages its batches in memory,
// in dir.
func stagingInMemory(t *testing.T) (s *Server, nc *nats.Conn, dir string) {
	t.Helper()
	requireMemoryFS(t)
	s, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(s.Shutdown)
	nc = atomicStream(t, s)
	require.NoError(t, s.StageBatchesInMemory("EV"))
	dir, err = os.Readlink(s.batchesDir("EV"))
	require.NoError(t, err)
	return s, nc, dir
}

// requireStagedThenCommitted stages a batch's first message in dir, then
// commits the batch, which removes its staging.
func requireStagedThenCommitted(t *testing.T, nc *nats.Conn, dir string) {
	t.Helper()
	stageOne(t, nc, "b1", 1, false)
	require.True(t, holdsBatch(dir), "the uncommitted batch is staged in memory")
	resp := stageOne(t, nc, "b1", 2, true)
	require.Contains(t, string(resp.Data), `"count":2`, "the batch is committed whole")
	// Removed just after the ack.
	require.Eventually(t, func() bool { return !holdsBatch(dir) }, 5*time.Second, time.Millisecond,
		"a committed batch's staging is removed")
}

func requireMemoryFS(t *testing.T) {
	t.Helper()
	if _, err := memoryFS(); err != nil {
		t.Skipf("batches cannot be staged in memory here: %v", err)
	}
}

// The server stages a batch where StageBatchesInMemory linked the stream's
// batches directory: on the memory file system, not in the data directory.
// Committed, the batch is stored in the stream and its staging removed; at
// Shutdown the staging directory goes too.
func TestAtomicBatchesAreStagedInMemory(t *testing.T) {
	s, nc, dir := stagingInMemory(t)
	require.Equal(t, memoryFSPath, filepath.Dir(dir))
	requireStagedThenCommitted(t, nc, dir)

	s.Shutdown()
	_, err := os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Lstat(s.batchesDir("EV"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// A server configured for disk never stages in memory; one whose stream
// is staging a batch on disk (a client appended first) leaves those files,
// in use, and stages in memory once that batch is done.
func TestBatchesStayOnDiskWhenAsked(t *testing.T) {
	requireMemoryFS(t)
	t.Run("configured", func(t *testing.T) {
		s, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", BatchStaging: BatchStagingDisk})
		require.NoError(t, err)
		defer s.Shutdown()
		atomicStream(t, s)
		require.ErrorIs(t, s.StageBatchesInMemory("EV"), ErrStagedOnDisk)
	})
	t.Run("a batch staged first", func(t *testing.T) {
		s, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
		require.NoError(t, err)
		defer s.Shutdown()
		nc := atomicStream(t, s)
		stageOne(t, nc, "b1", 1, false)
		require.ErrorIs(t, s.StageBatchesInMemory("EV"), ErrStagedOnDisk)
		info, err := os.Lstat(s.batchesDir("EV"))
		require.NoError(t, err)
		require.True(t, info.IsDir(), "the batch staged on disk is left where it is")

		s.restage()
		info, err = os.Lstat(s.batchesDir("EV"))
		require.NoError(t, err)
		require.True(t, info.IsDir(), "not while the batch is staged")
		stageOne(t, nc, "b1", 2, true)
		require.Eventually(t, func() bool {
			entries, err := os.ReadDir(s.batchesDir("EV"))
			return err == nil && len(entries) == 0
		}, 5*time.Second, time.Millisecond, "the committed batch's staging is removed")
		s.restage()
		dir, err := os.Readlink(s.batchesDir("EV"))
		require.NoError(t, err, "staged in memory once the batch is done")
		requireStagedThenCommitted(t, nc, dir)
	})
}

// A server that died leaves its stream's batches directory linked to a
// staging directory in memory. nats-server completes from it what the death
// cut short, and unlinks it as it starts; the next server removes it.
func TestAStartRemovesTheStagingADeadServerLeft(t *testing.T) {
	requireMemoryFS(t)
	data, link := stoppedWithStream(t)

	// What a server killed while staging in memory leaves behind.
	left, err := os.MkdirTemp(memoryFSPath, stagingPrefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(left) })
	require.NoError(t, os.Symlink(left, link))

	s, err := Start(Config{DataDir: data, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer s.Shutdown()
	_, err = os.Stat(left)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// A server killed whose data directory is never used again leaves its
// staging directory; the next server to stage batches on the machine
// removes it, unless a running server holds it (in this PID namespace or
// another sharing /dev/shm), or it holds a batch and its data directory
// still links to it, for the next server there to complete.
func TestStagingLeftByAServerGoneForGoodIsSwept(t *testing.T) {
	requireMemoryFS(t)
	left := func(link string, batch bool) string {
		d, err := newStaging(memoryFSPath, link)
		require.NoError(t, err)
		_ = d.lock.Close() // its server died
		t.Cleanup(func() { _ = os.RemoveAll(d.dir) })
		if batch {
			require.NoError(t, os.Mkdir(filepath.Join(d.dir, "batch"), 0o700))
		}
		return d.dir
	}
	data := t.TempDir()
	waitingLink := filepath.Join(data, "batches")
	empty := left(filepath.Join(data, "gone-empty"), false)
	orphan := left(filepath.Join(data, "gone"), true)
	waiting := left(waitingLink, true)
	require.NoError(t, os.Symlink(waiting, waitingLink))
	held, err := newStaging(memoryFSPath, filepath.Join(data, "running"))
	require.NoError(t, err)
	defer held.drop()

	s, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer s.Shutdown()
	atomicStream(t, s)
	require.NoError(t, s.StageBatchesInMemory("EV"))
	for _, gone := range []string{empty, orphan} {
		_, err = os.Stat(gone)
		require.ErrorIs(t, err, os.ErrNotExist, "an abandoned staging is swept")
	}
	require.DirExists(t, waiting, "a staged batch waits for its data directory's next server")
	require.DirExists(t, held.dir, "a running server's staging is its own")
}

// A data directory whose batches link to a staging directory that is not
// one a dead server of this user left (a running server's, in a copy of its
// data directory; another user's; one gone with a reboot) starts with the
// link removed, and the directory untouched: nats-server never reads it.
func TestAStartTrustsOnlyStagingADeadServerLeft(t *testing.T) {
	requireMemoryFS(t)
	running, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer running.Shutdown()
	atomicStream(t, running)
	require.NoError(t, running.StageBatchesInMemory("EV"))
	live, err := os.Readlink(running.batchesDir("EV"))
	require.NoError(t, err)
	open, err := os.MkdirTemp(memoryFSPath, stagingPrefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(open) })
	require.NoError(t, os.Chmod(open, 0o755))

	for name, target := range map[string]string{
		"held by a running server": live,
		"open to others":           open,
		"gone":                     filepath.Join(memoryFSPath, stagingPrefix+"gone"),
		"not a staging directory":  t.TempDir(),
	} {
		t.Run(name, func(t *testing.T) {
			data, link := stoppedWithStream(t)
			require.NoError(t, os.Symlink(target, link))

			s, err := Start(Config{DataDir: data, Listen: "127.0.0.1:0"})
			require.NoError(t, err)
			s.Shutdown()
			_, err = os.Lstat(link)
			require.ErrorIs(t, err, os.ErrNotExist, "the link is removed")
		})
	}
	require.DirExists(t, live, "the running server keeps its staging")
	require.DirExists(t, open)
}

// A batch staged when the server shuts down stays staged, as nats-server
// keeps it, for the next start on the data directory; that start removes
// it once nats-server is done with it.
func TestAShutdownKeepsAStagedBatchForTheNextStart(t *testing.T) {
	requireMemoryFS(t)
	data := t.TempDir()
	s, err := Start(Config{DataDir: data, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	nc := atomicStream(t, s)
	require.NoError(t, s.StageBatchesInMemory("EV"))
	dir, err := os.Readlink(s.batchesDir("EV"))
	require.NoError(t, err)
	stageOne(t, nc, "b1", 1, false)
	s.Shutdown()
	require.DirExists(t, dir)

	s, err = Start(Config{DataDir: data, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer s.Shutdown()
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// A staging directory removed behind the server's back (systemd's RemoveIPC
// at a user's logout) is replaced, and batches are staged in memory again.
func TestAStagingDirectoryRemovedIsReplaced(t *testing.T) {
	s, nc, gone := stagingInMemory(t)
	require.NoError(t, os.RemoveAll(gone))

	s.restage()
	dir, err := os.Readlink(s.batchesDir("EV"))
	require.NoError(t, err)
	require.NotEqual(t, gone, dir)
	requireStagedThenCommitted(t, nc, dir)
	s.Shutdown()
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist, "removed at Shutdown as the first")
}
