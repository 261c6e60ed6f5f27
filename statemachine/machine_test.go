package statemachine_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

func newMachine(t *testing.T) (*statemachine.Machine, *events.Log, *natstest.Env) {
	t.Helper()
	env := natstest.Start(t)
	lg, err := events.Open(context.Background(), env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	return m, lg, env
}

func countTypes(t *testing.T, lg *events.Log, id string) map[string]int {
	t.Helper()
	recs, err := lg.Load(context.Background(), id)
	require.NoError(t, err)
	out := map[string]int{}
	for _, r := range recs {
		out[r.Type]++
	}
	return out
}

func TestRacingTransitionsExactlyOneWins(t *testing.T) {
	for _, tc := range []struct {
		name   string
		do     func(m *statemachine.Machine, id string) error
		winner string
		state  statemachine.State
	}{
		{"acquire", func(m *statemachine.Machine, id string) error {
			_, err := m.Acquire(context.Background(), id, "w")
			return err
		}, events.TypeAcquired, statemachine.StateRunning},
		{"cancel", func(m *statemachine.Machine, id string) error {
			_, err := m.Cancel(context.Background(), id, "race")
			return err
		}, events.TypeCanceled, statemachine.StateCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, lg, _ := newMachine(t)
			job, _, err := m.Submit(context.Background(), statemachine.SubmitParams{Type: "build"})
			require.NoError(t, err)
			var wg sync.WaitGroup
			var mu sync.Mutex
			wins := 0
			for i := 0; i < 100; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := tc.do(m, job.ID)
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						wins++
						return
					}
					var conflict *statemachine.ConflictError
					if !errors.As(err, &conflict) {
						t.Errorf("loser got %v, want a *ConflictError", err)
						return
					}
					if !errors.Is(err, statemachine.ErrConflict) || conflict.Job.State != tc.state {
						t.Errorf("conflict %v carries state %s, want %s", err, conflict.Job.State, tc.state)
					}
				}()
			}
			wg.Wait()
			require.Equal(t, 1, wins)
			require.Equal(t, 1, countTypes(t, lg, job.ID)[tc.winner])
		})
	}
}

func TestIdempotencyKeyReturnsTheFirstJob(t *testing.T) {
	ctx := context.Background()
	m, lg, env := newMachine(t)
	first, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-42"})
	require.NoError(t, err)
	require.False(t, existed)
	second, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "other", Key: "deploy-42"})
	require.NoError(t, err)
	require.True(t, existed)
	require.Equal(t, first.ID, second.ID)
	require.Equal(t, "build", second.Type)
	// Past any dedupe window: it is the key's job ID and expected sequence 0.
	env.Restart(t)
	lg2, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg2.Close)
	m2, err := statemachine.New(lg2, statemachine.Config{})
	require.NoError(t, err)
	third, existed, err := m2.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-42"})
	require.NoError(t, err)
	require.True(t, existed)
	require.Equal(t, first.ID, third.ID)
	require.Equal(t, 1, countTypes(t, lg2, first.ID)[events.TypeSubmitted])
	_ = lg
}

func TestRunningJobCancelAndFailures(t *testing.T) {
	ctx := context.Background()
	m, lg, _ := newMachine(t)
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", MaxAttempts: 2})
	require.NoError(t, err)
	held, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	require.Equal(t, 1, held.Attempt)
	j, err := m.Fail(ctx, held, statemachine.FailParams{Error: "boom", Code: "exit"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateScheduled, j.State)
	require.True(t, j.RunAt.After(j.UpdatedAt))
	_, err = m.Promote(ctx, job.ID)
	require.NoError(t, err)
	held, err = m.Acquire(ctx, job.ID, "w2")
	require.NoError(t, err)
	require.Equal(t, 2, held.Attempt)
	j, err = m.Cancel(ctx, job.ID, "stop")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceling, j.State)
	// The worker's late success is refused while canceling; its ack is not.
	_, err = m.Succeed(ctx, held, nil)
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	j, err = m.AcknowledgeCancel(ctx, held)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceled, j.State)
	require.Len(t, j.Errors, 1)
	require.Zero(t, countTypes(t, lg, job.ID)[events.TypeSucceeded])

	last, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", MaxAttempts: 1})
	require.NoError(t, err)
	held, err = m.Acquire(ctx, last.ID, "w")
	require.NoError(t, err)
	j, err = m.Fail(ctx, held, statemachine.FailParams{Error: "final", Code: "exit"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateFailed, j.State)
	require.Equal(t, "final", j.Error)
}

func TestAcknowledgedSubmitsSurviveARestart(t *testing.T) {
	ctx := context.Background()
	m, _, env := newMachine(t)
	var ids []string
	for i := 0; i < 50; i++ {
		j, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
		require.NoError(t, err)
		ids = append(ids, j.ID)
	}
	env.Restart(t)
	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m2, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	for _, id := range ids {
		j, err := m2.Load(ctx, id)
		require.NoError(t, err)
		require.Equal(t, statemachine.StatePending, j.State)
	}
}
