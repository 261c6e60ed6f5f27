package events_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
)

func TestWorkersFollowThePublishedHangAfter(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)

	var mu sync.Mutex
	var told []time.Duration
	seen := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), told...)
	}
	last := func() time.Duration {
		if all := seen(); len(all) > 0 {
			return all[len(all)-1]
		}
		return 0
	}
	stop, err := hb.FollowHangAfter(ctx, func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, d)
	})
	require.NoError(t, err)
	defer stop()
	require.Empty(t, seen(), "nothing published yet")

	kv, err := env.JS.KeyValue(ctx, events.SettingsBucketDefault)
	require.NoError(t, err)
	previous, err := hb.PublishHangAfter(ctx, 30*time.Second)
	require.NoError(t, err)
	require.Zero(t, previous, "none before")
	natstest.Eventually(t, 5*time.Second, func() bool { return last() == 30*time.Second }, "30s told")
	first, err := kv.Get(ctx, "hang_after")
	require.NoError(t, err)
	previous, err = hb.PublishHangAfter(ctx, 30*time.Second)
	require.NoError(t, err)
	require.Equal(t, 30*time.Second, previous)
	again, err := kv.Get(ctx, "hang_after")
	require.NoError(t, err)
	require.Equal(t, first.Revision(), again.Revision(), "an unchanged hang-after is not written again")
	// A value no server wrote is skipped. (A watch may also skip a value
	// replaced before it was delivered: only the latest is kept.)
	_, err = kv.PutString(ctx, "hang_after", "soon")
	require.NoError(t, err)
	previous, err = hb.PublishHangAfter(ctx, 2*time.Minute)
	require.NoError(t, err)
	require.Zero(t, previous, "a value no server wrote is no hang-after")
	natstest.Eventually(t, 5*time.Second, func() bool { return last() == 2*time.Minute }, "2m told")
	for _, d := range seen() {
		require.Contains(t, []time.Duration{30 * time.Second, 2 * time.Minute}, d)
	}

	// A follower started later is told the current one before it starts.
	var current time.Duration
	stop2, err := hb.FollowHangAfter(ctx, func(d time.Duration) { current = d })
	require.NoError(t, err)
	stop2()
	require.Equal(t, 2*time.Minute, current)

	// A hang-after that is no duration above 0 is refused as a setting
	// out of range (ErrInvalidConfig), saying what is expected, by both
	// publishers, and the published one stays.
	for _, bad := range []time.Duration{0, -time.Second} {
		_, err = hb.PublishHangAfter(ctx, bad)
		require.ErrorIs(t, err, events.ErrInvalidConfig)
		require.ErrorContains(t, err, "expected a duration above 0")
		err = hb.PublishHangAfterIfNone(ctx, bad)
		require.ErrorIs(t, err, events.ErrInvalidConfig)
		require.ErrorContains(t, err, "expected a duration above 0")
	}
	stop3, err := hb.FollowHangAfter(ctx, func(d time.Duration) { current = d })
	require.NoError(t, err)
	stop3()
	require.Equal(t, 2*time.Minute, current)
}

// A follower goes on after the ctx it started with ends: callers start with
// a timeout, and a pool started so kept the hang-after it began with.
func TestFollowingTheHangAfterOutlivesTheStartsContext(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	_, err = hb.PublishHangAfter(ctx, 30*time.Second)
	require.NoError(t, err)

	var told atomic.Int64
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	stop, err := hb.FollowHangAfter(startCtx, func(d time.Duration) { told.Store(int64(d)) })
	cancel()
	require.NoError(t, err)
	defer stop()
	require.Equal(t, 30*time.Second, time.Duration(told.Load()))

	_, err = hb.PublishHangAfter(ctx, 12*time.Second)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool { return time.Duration(told.Load()) == 12*time.Second },
		"the change after the start's ctx ended is told")
}

// Each beat of an attempt follows its previous one, so that a beat sent late
// by a worker that lost the job never replaces the beat of the attempt that
// runs it now.
func TestALateBeatNeverReplacesALaterAttempts(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	beat := func(lease uint64) events.Beat {
		return events.Beat{JobID: "job-1", Lease: lease, WorkerID: fmt.Sprint("w", lease), At: time.Now().UTC()}
	}
	lastLease := func() uint64 {
		b, ok, err := hb.Last(ctx, "job-1")
		require.NoError(t, err)
		require.True(t, ok)
		return b.Lease
	}

	first, err := hb.RecordAfter(ctx, beat(10), 0)
	require.NoError(t, err)
	second, err := hb.RecordAfter(ctx, beat(10), first)
	require.NoError(t, err)
	// The retry's first beat goes after the earlier attempt's.
	retry, err := hb.RecordAfter(ctx, beat(20), 0)
	require.NoError(t, err)
	require.Equal(t, uint64(20), lastLease())
	// The old attempt's beats, sent late, first or not, are refused.
	_, err = hb.RecordAfter(ctx, beat(10), second)
	require.ErrorIs(t, err, events.ErrBeatSuperseded)
	_, err = hb.RecordAfter(ctx, beat(10), 0)
	require.ErrorIs(t, err, events.ErrBeatSuperseded)
	require.Equal(t, uint64(20), lastLease())

	// An attempt whose ack was lost beats after its own later beat.
	unseen, err := hb.RecordAfter(ctx, beat(20), retry)
	require.NoError(t, err)
	latest, err := hb.RecordAfter(ctx, beat(20), retry)
	require.NoError(t, err)
	require.Greater(t, latest, unseen)
	// A beat stored whatever came before (Record, as tools do) of an
	// earlier attempt: the next beat goes after it.
	require.NoError(t, hb.Record(ctx, beat(10)))
	latest, err = hb.RecordAfter(ctx, beat(20), latest)
	require.NoError(t, err)
	require.Equal(t, uint64(20), lastLease())

	// A beat of another job on this job's subject counts as none.
	_, err = env.JS.Publish(ctx, hb.Subject("job-1"), []byte(`{"job":"job-2","lease":99}`))
	require.NoError(t, err)
	_, ok, err := hb.Last(ctx, "job-1")
	require.NoError(t, err)
	require.False(t, ok)
	latest, err = hb.RecordAfter(ctx, beat(20), latest)
	require.NoError(t, err)

	// A message that is not a beat counts as none, and is replaced.
	_, err = env.JS.Publish(ctx, hb.Subject("job-1"), []byte("not a beat"))
	require.NoError(t, err)
	_, ok, err = hb.Last(ctx, "job-1")
	require.NoError(t, err)
	require.False(t, ok)
	_, err = hb.RecordAfter(ctx, beat(20), latest)
	require.NoError(t, err)
	require.Equal(t, uint64(20), lastLease())
}

func TestAServerStartingPublishesItsHangAfterIfNoneIs(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	require.NoError(t, hb.PublishHangAfterIfNone(ctx, 3*time.Second))
	require.NoError(t, hb.PublishHangAfterIfNone(ctx, time.Hour))
	var told time.Duration
	stop, err := hb.FollowHangAfter(ctx, func(d time.Duration) { told = d })
	require.NoError(t, err)
	stop()
	require.Equal(t, 3*time.Second, told)
}

// A beat counts from the worker's time, held to the server's: not before
// the server stored it (a lagging clock), nor more than BeatAheadLimit past
// (a clock running ahead).
func TestABeatCountsFromTheWorkersTimeHeldToTheServers(t *testing.T) {
	stored := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		at, want time.Time
		storedAt time.Time
	}{
		{"in step", stored.Add(-time.Millisecond), stored, stored},
		{"lagging", stored.Add(-10 * time.Minute), stored, stored},
		{"a little ahead", stored.Add(30 * time.Second), stored.Add(30 * time.Second), stored},
		{"a day ahead", stored.Add(24 * time.Hour), stored.Add(events.BeatAheadLimit), stored},
		{"not read from a server", stored, stored, time.Time{}},
	} {
		require.Equal(t, tc.want, events.Beat{At: tc.at, StoredAt: tc.storedAt}.Sent(), tc.name)
	}
}

// Forget takes a job ID: one that cannot name a job (a wildcard above all,
// which names every job's subject) is refused, and no other job's beat goes.
func TestForgetOfAnInvalidJobIDKeepsEveryBeat(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	require.NoError(t, hb.Record(ctx, events.Beat{JobID: "job-1", Lease: 1, WorkerID: "w", At: time.Now().UTC()}))
	mark, err := hb.Mark(ctx)
	require.NoError(t, err)
	for _, id := range []string{">", "*", "", "a.b"} {
		require.ErrorIs(t, hb.Forget(ctx, id, mark), events.ErrInvalidJobID, "%q", id)
	}
	_, ok, err := hb.Last(ctx, "job-1")
	require.NoError(t, err)
	require.True(t, ok, "job-1's beat was forgotten by another ID's Forget")
}
