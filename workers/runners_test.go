package workers

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunnersReuseAnIdleGoroutine(t *testing.T) {
	r := newRunners(t.Context(), time.Minute)
	ran := make(chan int, 50)
	r.run(func() { ran <- 0 })
	require.Equal(t, 0, <-ran)
	for i := 1; i < 50; i++ {
		// The runner waits for more work once its job returns: each next
		// job is taken by it, with no new goroutine.
		require.Eventually(t, func() bool {
			select {
			case r.work <- func() { ran <- i }:
				return true
			default:
				return false
			}
		}, 5*time.Second, time.Millisecond)
		require.Equal(t, i, <-ran)
	}
	require.EqualValues(t, 1, r.started.Load())
}

func TestRunnersStartOneGoroutinePerBusyJob(t *testing.T) {
	r := newRunners(t.Context(), time.Minute)
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(8)
	for range 8 {
		r.run(func() { defer wg.Done(); <-release })
	}
	require.EqualValues(t, 8, r.started.Load(), "a job never waits for a busy runner")
	close(release)
	wg.Wait()
}

func TestRunnersEndWhenIdleOrStopped(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for name, r := range map[string]*runners{
		"idle":    newRunners(t.Context(), time.Millisecond),
		"stopped": newRunners(ctx, time.Hour),
	} {
		done := make(chan struct{})
		r.run(func() { close(done) })
		<-done
		if name == "stopped" {
			cancel()
		}
		require.Eventually(t, func() bool { return r.live.Load() == 0 }, 10*time.Second, time.Millisecond, name)
	}
}
