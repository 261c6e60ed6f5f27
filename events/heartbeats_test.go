package events_test

import (
	"context"
	"sync"
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
	require.NoError(t, hb.PublishHangAfter(ctx, 30*time.Second))
	natstest.Eventually(t, 5*time.Second, func() bool { return last() == 30*time.Second }, "30s told")
	first, err := kv.Get(ctx, "hang_after")
	require.NoError(t, err)
	require.NoError(t, hb.PublishHangAfter(ctx, 30*time.Second))
	again, err := kv.Get(ctx, "hang_after")
	require.NoError(t, err)
	require.Equal(t, first.Revision(), again.Revision(), "an unchanged hang-after is not written again")
	// A value no server wrote is skipped. (A watch may also skip a value
	// replaced before it was delivered: only the latest is kept.)
	_, err = kv.PutString(ctx, "hang_after", "soon")
	require.NoError(t, err)
	require.NoError(t, hb.PublishHangAfter(ctx, 2*time.Minute))
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

	require.Error(t, hb.PublishHangAfter(ctx, 0))
}
