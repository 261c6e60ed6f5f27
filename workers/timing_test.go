package workers

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Backup passes are spread over a fifth of the interval around it.
func TestBackupPassesAreSpread(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := jittered(30 * time.Second)
		require.GreaterOrEqual(t, d, 27*time.Second)
		require.Less(t, d, 33*time.Second)
		seen[d] = true
	}
	require.Greater(t, len(seen), 900, "spread, not one value")
	require.Equal(t, time.Duration(3), jittered(3), "too short to spread")
}

// A watch reads the history again while a heard event is not yet stored,
// sooner first; settles after its start and after a reconnect; and, with
// nothing heard and settled, waits for its sweep.
func TestWatchPlanSaysWhenToReadAgain(t *testing.T) {
	t0 := time.Unix(1000, 0)
	plan := newWatchPlan(t0)
	next, due := plan.next(t0)
	require.True(t, due)
	require.Equal(t, watchSettleChecks[0], next, "the first settle check")
	next, due = plan.next(t0.Add(watchSettleChecks[0]))
	require.True(t, due)
	require.Equal(t, watchSettleChecks[1]-watchSettleChecks[0], next, "the second")
	at := t0.Add(watchSettleChecks[1])
	_, due = plan.next(at)
	require.False(t, due, "settled: the sweep alone")

	plan.heard("e1", at)
	var waits []time.Duration
	for range 4 {
		next, due = plan.next(at)
		require.True(t, due)
		waits = append(waits, next)
		at = at.Add(next)
	}
	require.Equal(t, []time.Duration{watchCheckFirst, 2 * watchCheckFirst, 4 * watchCheckFirst, 8 * watchCheckFirst}, waits)
	plan.stored("e1")
	_, due = plan.next(at)
	require.False(t, due, "read: nothing to wait for")

	plan.heard("e1", at)
	_, due = plan.next(at)
	require.False(t, due, "an event already read is not waited for")
	plan.heard("", at)
	_, due = plan.next(at)
	require.False(t, due, "nor a message that is no event")

	plan.heard("refused", at)
	_, due = plan.next(at.Add(watchHeardFor + time.Millisecond))
	require.False(t, due, "an event never stored is given up on")

	plan.reconnected(at)
	next, due = plan.next(at)
	require.True(t, due)
	require.Equal(t, watchSettleChecks[0], next, "settles again after a reconnect")
	plan.heard("e2", at)
	next, _ = plan.next(at)
	require.Equal(t, watchCheckFirst, next, "the sooner of the two")
}
