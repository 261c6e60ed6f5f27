package bench

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The counter ends a run on the successes of its own jobs only, whichever
// comes first of a job's success and its submit's return.
func TestSuccessCounterCountsOnlyExpectedJobs(t *testing.T) {
	c := newSuccessCounter(3)
	done := func() bool {
		select {
		case <-c.all:
			return true
		default:
			return false
		}
	}
	c.expect("a")
	c.succeeded("a")
	c.succeeded("b") // before its submit returned
	c.succeeded("other-run")
	c.succeeded("other-run-2")
	require.False(t, done())
	require.EqualValues(t, 1, c.n.Load())
	c.expect("b")
	c.expect("c")
	require.False(t, done(), "c has not succeeded yet; the foreign successes do not stand in for it")
	require.EqualValues(t, 2, c.n.Load())
	c.succeeded("c")
	require.True(t, done())
	require.EqualValues(t, 3, c.n.Load())
}
