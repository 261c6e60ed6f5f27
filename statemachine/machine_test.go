package statemachine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

// These tests run the Machine against a real embedded server: every
// invariant of the state machine is checked on what the log holds.

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newMachine(t *testing.T) (*statemachine.Machine, *events.Log, *natstest.Env) {
	t.Helper()
	env := natstest.Start(t)
	m, lg := openMachine(t, env, statemachine.Config{})
	return m, lg, env
}

// openMachine opens a log and a machine on env's current connection.
func openMachine(t *testing.T, env *natstest.Env, cfg statemachine.Config) (*statemachine.Machine, *events.Log) {
	t.Helper()
	lg, err := events.Open(context.Background(), env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, cfg)
	require.NoError(t, err)
	return m, lg
}

// history lists the event types of a job's history, in order.
func history(t *testing.T, lg *events.Log, id string) []string {
	t.Helper()
	recs, err := lg.Load(context.Background(), id)
	require.NoError(t, err)
	out := make([]string, len(recs))
	for i, r := range recs {
		require.NoError(t, r.Err)
		out[i] = r.Type
	}
	return out
}

func submit(t *testing.T, m *statemachine.Machine, p statemachine.SubmitParams) statemachine.Job {
	t.Helper()
	j, existed, err := m.Submit(testContext(t), p)
	require.NoError(t, err)
	require.False(t, existed)
	return j
}

// race runs n calls at once and returns their errors.
func race(n int, call func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = call(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// TestRacingTransitionsExactlyOneWins: of 100 conflicting transitions on one
// job, exactly one is appended; every other caller gets a conflict carrying
// the job's current state, or is told the transition is no longer allowed.
func TestRacingTransitionsExactlyOneWins(t *testing.T) {
	type racer func(ctx context.Context, m *statemachine.Machine, id string, i int) error
	cancel := func(ctx context.Context, m *statemachine.Machine, id string, _ int) error {
		_, err := m.Cancel(ctx, id, "race")
		return err
	}
	acquire := func(ctx context.Context, m *statemachine.Machine, id string, i int) error {
		_, err := m.Acquire(ctx, id, fmt.Sprintf("w%d", i))
		return err
	}
	for _, tc := range []struct {
		name    string
		running bool
		runAt   time.Duration
		racer   racer
		winners []string // the event one of the racers appends
		states  []statemachine.State
	}{
		{"100 cancels of a pending job", false, 0, cancel, []string{events.TypeCanceled}, []statemachine.State{statemachine.StateCanceled}},
		{"100 acquires of a pending job", false, 0, acquire, []string{events.TypeAcquired}, []statemachine.State{statemachine.StateRunning}},
		{"100 cancels of a running job", true, 0, cancel, []string{events.TypeCancelRequested}, []statemachine.State{statemachine.StateCanceling}},
		{"100 promotes of a scheduled job", false, time.Hour, func(ctx context.Context, m *statemachine.Machine, id string, _ int) error {
			j, err := m.Load(ctx, id)
			if err != nil {
				return err
			}
			_, err = m.PromoteDue(ctx, id, *j.RunAt) // as its timer would
			return err
		}, []string{events.TypePromoted}, []statemachine.State{statemachine.StatePending}},
		{"50 acquires against 50 bulk cancels (seed 000)", false, 0, func(ctx context.Context, m *statemachine.Machine, id string, i int) error {
			if i%2 == 0 {
				return acquire(ctx, m, id, i)
			}
			_, err := m.CancelPending(ctx, id, "outdated")
			return err
		}, []string{events.TypeAcquired, events.TypeCanceled}, []statemachine.State{statemachine.StateRunning, statemachine.StateCanceled}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			m, lg, _ := newMachine(t)
			p := statemachine.SubmitParams{Type: "build"}
			if tc.runAt > 0 {
				at := time.Now().Add(tc.runAt)
				p.RunAt = &at
			}
			job := submit(t, m, p)
			before := []string{events.TypeSubmitted}
			if tc.running {
				_, err := m.Acquire(ctx, job.ID, "w")
				require.NoError(t, err)
				before = append(before, events.TypeAcquired)
			}

			errs := race(100, func(i int) error { return tc.racer(ctx, m, job.ID, i) })

			final, err := m.Load(ctx, job.ID)
			require.NoError(t, err)
			require.Contains(t, tc.states, final.State)
			hist := history(t, lg, job.ID)
			require.Len(t, hist, len(before)+1, "exactly one resulting event: %v", hist)
			require.Equal(t, before, hist[:len(before)])
			require.Contains(t, tc.winners, hist[len(before)])
			require.Zero(t, final.Quarantined)

			wins := 0
			for _, err := range errs {
				if err == nil {
					wins++
					continue
				}
				var conflict *statemachine.ConflictError
				var illegal *statemachine.IllegalTransitionError
				switch {
				case errors.As(err, &conflict):
					// Lost the append: the conflict carries the job as it now is.
					require.ErrorIs(t, err, statemachine.ErrConflict)
					require.Equal(t, job.ID, conflict.JobID)
					require.Equal(t, final.State, conflict.Job.State, "%v", err)
					require.Equal(t, final.Version, conflict.Job.Version)
					require.ErrorIs(t, conflict.Cause, statemachine.ErrIllegalTransition)
				case errors.As(err, &illegal):
					// Read the job after the winner: refused outright.
					require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
					require.Equal(t, job.ID, illegal.JobID)
					require.Equal(t, final.State, illegal.State)
				default:
					t.Fatalf("a loser got %v, want a conflict or an illegal transition", err)
				}
			}
			require.Equal(t, 1, wins)
		})
	}
}

// TestCancelRacingAcquireIsNeverLost (seed 002): whichever of a cancel and
// an acquire lands first, the other decides on the state it left, so the
// cancel is never overwritten: the job ends canceled, or canceling with its
// worker told.
func TestCancelRacingAcquireIsNeverLost(t *testing.T) {
	ctx := testContext(t)
	m, lg, _ := newMachine(t)
	for round := 0; round < 5; round++ {
		job := submit(t, m, statemachine.SubmitParams{Type: "build"})
		errs := race(20, func(i int) error {
			var err error
			if i%2 == 0 {
				_, err = m.Acquire(ctx, job.ID, "w")
			} else {
				_, err = m.Cancel(ctx, job.ID, "stop")
			}
			return err
		})
		for _, err := range errs {
			if err != nil {
				require.True(t, errors.Is(err, statemachine.ErrConflict) || errors.Is(err, statemachine.ErrIllegalTransition), "%v", err)
			}
		}
		final, err := m.Load(ctx, job.ID)
		require.NoError(t, err)
		require.Zero(t, final.Quarantined)
		switch hist := history(t, lg, job.ID); len(hist) {
		case 2:
			require.Equal(t, []string{events.TypeSubmitted, events.TypeCanceled}, hist)
			require.Equal(t, statemachine.StateCanceled, final.State)
		default:
			require.Equal(t, []string{events.TypeSubmitted, events.TypeAcquired, events.TypeCancelRequested}, hist)
			require.Equal(t, statemachine.StateCanceling, final.State)
		}
	}
}

func TestIdempotencyKeyReturnsTheFirstJobForever(t *testing.T) {
	ctx := testContext(t)
	m, lg, env := newMachine(t)
	first, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-42"})
	require.NoError(t, err)
	require.False(t, existed)
	require.Equal(t, statemachine.JobIDForKey("deploy-42"), first.ID)
	require.Equal(t, "deploy-42", first.Key)

	second, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "other", Key: "deploy-42"})
	require.NoError(t, err)
	require.True(t, existed)
	require.Equal(t, first.ID, second.ID)
	require.Equal(t, "build", second.Type, "the first job, not the second's parameters")

	// A different key is a different job.
	other, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-43"})
	require.NoError(t, err)
	require.False(t, existed)
	require.NotEqual(t, first.ID, other.ID)

	// Much later, and after the job moved on, the key still names it: there
	// is no dedupe window, only the key's job ID and expected sequence 0.
	later, _ := openMachine(t, env, statemachine.Config{Now: func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }})
	_, err = m.Cancel(ctx, first.ID, "done")
	require.NoError(t, err)
	third, existed, err := later.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-42"})
	require.NoError(t, err)
	require.True(t, existed)
	require.Equal(t, first.ID, third.ID)
	require.Equal(t, statemachine.StateCanceled, third.State)

	// And after a crash and restart of the server.
	env.Restart(t)
	m2, lg2 := openMachine(t, env, statemachine.Config{})
	fourth, existed, err := m2.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "deploy-42"})
	require.NoError(t, err)
	require.True(t, existed)
	require.Equal(t, first.ID, fourth.ID)
	require.Equal(t, []string{events.TypeSubmitted, events.TypeCanceled}, history(t, lg2, first.ID))
	_ = lg
}

func TestConcurrentSubmitsWithOneKeyMakeOneJob(t *testing.T) {
	m, lg, _ := newMachine(t)
	submitOnce(t, m, 50, "once")
	require.Equal(t, []string{events.TypeSubmitted}, history(t, lg, statemachine.JobIDForKey("once")))
}

// submitOnce races n submits with one key: each gets the key's job, and
// exactly one of them made it.
func submitOnce(t *testing.T, m *statemachine.Machine, n int, key string) {
	t.Helper()
	ctx := testContext(t)
	ids := make([]string, n)
	fresh := make([]bool, n)
	errs := race(n, func(i int) error {
		j, existed, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: key})
		ids[i], fresh[i] = j.ID, !existed
		return err
	})
	created := 0
	for i, err := range errs {
		require.NoError(t, err)
		require.Equal(t, statemachine.JobIDForKey(key), ids[i])
		if fresh[i] {
			created++
		}
	}
	require.Equal(t, 1, created)
}

// Junk that another publisher put on a key's subject before any submit
// does not take the key: the submit goes after it, once.
func TestAKeyWhoseSubjectHoldsJunkStillSubmits(t *testing.T) {
	ctx := testContext(t)
	m, lg, env := newMachine(t)
	id := statemachine.JobIDForKey("poisoned")
	_, err := env.JS.Publish(ctx, events.SubjectPrefixDefault+id, []byte("junk before any submit"))
	require.NoError(t, err)
	submitOnce(t, m, 10, "poisoned")
	recs, err := lg.Load(ctx, id)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Error(t, recs[0].Err, "the junk, which the fold skips")
	require.Equal(t, events.TypeSubmitted, recs[1].Type)
	job, err := m.Load(ctx, id)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, job.State)
}

// TestCanceledPendingJobIsNeverAcquired is seed 000: acquisition is a
// transition validated against the job's state, so a canceled (or finished)
// job is refused, even to a worker holding a stale pending snapshot.
func TestCanceledPendingJobIsNeverAcquired(t *testing.T) {
	ctx := testContext(t)
	m, lg, _ := newMachine(t)
	job := submit(t, m, statemachine.SubmitParams{Type: "build"})
	snapshot := job

	canceled, err := m.Cancel(ctx, job.ID, "outdated")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceled, canceled.State)
	require.NotNil(t, canceled.CanceledAt)
	require.NotNil(t, canceled.CompletedAt)
	require.Nil(t, canceled.StartedAt)

	_, err = m.Acquire(ctx, job.ID, "w1")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	var illegal *statemachine.IllegalTransitionError
	require.ErrorAs(t, err, &illegal)
	require.Equal(t, statemachine.IllegalTransitionError{JobID: job.ID, State: statemachine.StateCanceled, Transition: statemachine.TransitionAcquire}, *illegal)

	// A queue message still carrying the pending job.
	_, err = m.AcquireFrom(ctx, snapshot, "w2")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	require.ErrorAs(t, err, &illegal)
	require.Equal(t, statemachine.StateCanceled, illegal.State)

	// A bulk cancel of it again is refused too.
	_, err = m.CancelPendingFrom(ctx, snapshot, "outdated")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)

	require.Equal(t, []string{events.TypeSubmitted, events.TypeCanceled}, history(t, lg, job.ID))

	// Succeeded and failed jobs are never acquired either.
	for _, finish := range []func(held statemachine.Job) (statemachine.Job, error){
		func(held statemachine.Job) (statemachine.Job, error) { return m.Succeed(ctx, held, nil) },
		func(held statemachine.Job) (statemachine.Job, error) {
			return m.Fail(ctx, held, statemachine.FailParams{Error: "x", NoRetry: true})
		},
	} {
		j := submit(t, m, statemachine.SubmitParams{Type: "build"})
		held, err := m.Acquire(ctx, j.ID, "w")
		require.NoError(t, err)
		done, err := finish(held)
		require.NoError(t, err)
		require.True(t, done.State.Finished())
		_, err = m.Acquire(ctx, j.ID, "w")
		require.ErrorAs(t, err, &illegal)
		require.Equal(t, done.State, illegal.State)
		_, err = m.AcquireFrom(ctx, j, "w")
		require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
		require.Len(t, history(t, lg, j.ID), 3)
	}
}

func TestRunningJobCancelGoesThroughCanceling(t *testing.T) {
	ctx := testContext(t)
	m, lg, _ := newMachine(t)
	job := submit(t, m, statemachine.SubmitParams{Type: "build"})
	held, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateRunning, held.State)
	require.Equal(t, "w1", held.WorkerID)
	require.Equal(t, held.Version, held.Lease, "the lease is the acquired event's sequence")

	j, err := m.Cancel(ctx, job.ID, "user asked")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceling, j.State)
	require.Equal(t, "user asked", j.CancelReason)
	require.NotNil(t, j.CancelRequestedAt)
	require.Nil(t, j.CompletedAt)

	// The worker learns it still holds the job, canceling.
	j, err = m.CheckLease(ctx, held)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceling, j.State)

	_, err = m.Cancel(ctx, job.ID, "again")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	// A late success or failure is refused while canceling; the ack is not.
	_, err = m.Succeed(ctx, held, nil)
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	_, err = m.Fail(ctx, held, statemachine.FailParams{Error: "killed"})
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)

	j, err = m.AcknowledgeCancel(ctx, held)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceled, j.State)
	require.Equal(t, "user asked", j.CancelReason)
	require.NotNil(t, j.CanceledAt)
	require.NotNil(t, j.CompletedAt)
	require.Equal(t, []string{events.TypeSubmitted, events.TypeAcquired, events.TypeCancelRequested, events.TypeCanceled}, history(t, lg, job.ID))

	// Once canceled the worker no longer holds it.
	_, err = m.AcknowledgeCancel(ctx, held)
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)
	_, err = m.CheckLease(ctx, held)
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)

	// A worker that never acknowledges is terminated by the server.
	job2 := submit(t, m, statemachine.SubmitParams{Type: "build"})
	held2, err := m.Acquire(ctx, job2.ID, "w2")
	require.NoError(t, err)
	_, err = m.TerminateCanceling(ctx, job2.ID, "grace period over")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition, "only a canceling job is terminated")
	_, err = m.Cancel(ctx, job2.ID, "stop")
	require.NoError(t, err)
	j, err = m.TerminateCanceling(ctx, job2.ID, "grace period over")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceled, j.State)
	_, err = m.AcknowledgeCancel(ctx, held2)
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)
}

func TestFailRetriesWithBackoffThenFails(t *testing.T) {
	ctx := testContext(t)
	env := natstest.Start(t)
	m, lg := openMachine(t, env, statemachine.Config{Backoff: statemachine.BackoffConfig{Base: time.Minute, Cap: time.Hour}})
	job := submit(t, m, statemachine.SubmitParams{Type: "build", MaxAttempts: 2})
	require.Equal(t, 2, job.MaxAttempts)

	held, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	require.Equal(t, 1, held.Attempt)
	before := time.Now()
	j, err := m.Fail(ctx, held, statemachine.FailParams{Error: "boom", Code: "exit_1"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateScheduled, j.State)
	require.NotNil(t, j.RunAt)
	require.True(t, j.RunAt.After(before.Add(29*time.Second)), "retry at %s, not after the backoff", j.RunAt)
	require.True(t, j.RunAt.Before(before.Add(2*time.Minute)), "retry at %s", j.RunAt)
	require.Zero(t, j.Lease)
	require.Nil(t, j.CompletedAt)
	require.Equal(t, "boom", j.Error)

	// Not before its time: a scheduled job is promoted first, by its timer.
	_, err = m.Acquire(ctx, job.ID, "w2")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
	_, err = m.Promote(ctx, job.ID)
	var notDue *statemachine.NotDueError
	require.ErrorAs(t, err, &notDue, "its run-at has not come")
	require.Equal(t, *j.RunAt, notDue.RunAt)
	_, err = m.PromoteDue(ctx, job.ID, j.RunAt.Add(-time.Second))
	require.ErrorIs(t, err, statemachine.ErrNotDue, "a timer armed for another run-at is stale")
	_, err = m.PromoteDue(ctx, job.ID, *j.RunAt)
	require.NoError(t, err)
	held, err = m.Acquire(ctx, job.ID, "w2")
	require.NoError(t, err)
	require.Equal(t, 2, held.Attempt)

	j, err = m.Fail(ctx, held, statemachine.FailParams{Error: "boom again", Code: "exit_2"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateFailed, j.State)
	require.Equal(t, "boom again", j.Error)
	require.Equal(t, "exit_2", j.ErrorCode)
	require.NotNil(t, j.CompletedAt)
	require.Len(t, j.Errors, 2)
	require.Equal(t, []string{"boom", "boom again"}, []string{j.Errors[0].Error, j.Errors[1].Error})
	require.Equal(t, []string{"exit_1", "exit_2"}, []string{j.Errors[0].Code, j.Errors[1].Code})
	require.Equal(t, []int{1, 2}, []int{j.Errors[0].Attempt, j.Errors[1].Attempt})

	// What the machine returned is what the log folds to.
	loaded, err := m.Load(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, j, loaded)
	require.Equal(t, []string{
		events.TypeSubmitted, events.TypeAcquired, events.TypeAttemptFailed, events.TypePromoted, events.TypeAcquired, events.TypeFailed,
	}, history(t, lg, job.ID))

	_, err = m.Acquire(ctx, job.ID, "w3")
	require.ErrorIs(t, err, statemachine.ErrIllegalTransition)
}

// TestStaleWorkerIsFenced: results are fenced by the attempt that acquired
// the job; a worker that lost it records nothing.
func TestStaleWorkerIsFenced(t *testing.T) {
	ctx := testContext(t)
	m, lg, _ := newMachine(t)
	job := submit(t, m, statemachine.SubmitParams{Type: "build", MaxAttempts: 3})
	first, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	// The first worker is declared dead and the job retried on another.
	retrying, err := m.FailStale(ctx, job.ID, first.Lease, statemachine.FailParams{Error: "hung", Code: "hung"})
	require.NoError(t, err)
	_, err = m.FailStale(ctx, job.ID, first.Lease, statemachine.FailParams{Error: "hung", Code: "hung"})
	require.ErrorIs(t, err, statemachine.ErrLeaseLost, "the same attempt is not failed twice")
	_, err = m.PromoteDue(ctx, job.ID, *retrying.RunAt)
	require.NoError(t, err)
	second, err := m.Acquire(ctx, job.ID, "w2")
	require.NoError(t, err)
	require.NotEqual(t, first.Lease, second.Lease)
	before := history(t, lg, job.ID)

	for name, report := range map[string]func() error{
		"succeed": func() error { _, err := m.Succeed(ctx, first, []byte(`"late"`)); return err },
		"fail":    func() error { _, err := m.Fail(ctx, first, statemachine.FailParams{Error: "late"}); return err },
		"release": func() error { _, err := m.Release(ctx, first, "late"); return err },
		"check":   func() error { _, err := m.CheckLease(ctx, first); return err },
	} {
		err := report()
		require.ErrorIs(t, err, statemachine.ErrLeaseLost, name)
		// The reports decide on their stale copy and lose the append:
		// still a fenced attempt, which no retry can help, not a conflict.
		require.NotErrorIs(t, err, statemachine.ErrConflict, name)
		require.NotContains(t, err.Error(), "concurrently", name)
		var lost *statemachine.LeaseLostError
		require.ErrorAs(t, err, &lost, name)
		require.Equal(t, job.ID, lost.JobID)
		require.Equal(t, first.Lease, lost.Lease)
		require.Equal(t, second.Lease, lost.Job.Lease, "it names the lease that holds the job")
		require.Equal(t, statemachine.StateRunning, lost.Job.State)
	}
	require.Equal(t, before, history(t, lg, job.ID), "nothing recorded for the stale attempt")

	// A result that is not JSON is invalid input, refused before anything
	// is appended, as Submit refuses a bad parameter.
	_, err = m.Succeed(ctx, second, []byte(`{bad`))
	require.ErrorIs(t, err, statemachine.ErrInvalid)
	require.Equal(t, before, history(t, lg, job.ID), "nothing recorded for a result that is not JSON")

	done, err := m.Succeed(ctx, second, []byte(`{"ok":true}`))
	require.NoError(t, err)
	require.Equal(t, statemachine.StateSucceeded, done.State)
	require.JSONEq(t, `{"ok":true}`, string(done.Result))
	// Reporting again with the winning lease is refused too: the job is done.
	_, err = m.Succeed(ctx, second, nil)
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)
}

func TestReleaseDoesNotUseAnAttempt(t *testing.T) {
	ctx := testContext(t)
	m, _, _ := newMachine(t)
	job := submit(t, m, statemachine.SubmitParams{Type: "build", MaxAttempts: 1})
	held, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	j, err := m.Release(ctx, held, "shutting down")
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, j.State)
	require.Zero(t, j.Attempt)
	require.Zero(t, j.Lease)
	held, err = m.Acquire(ctx, job.ID, "w2")
	require.NoError(t, err)
	require.Equal(t, 1, held.Attempt)
	j, err = m.Fail(ctx, held, statemachine.FailParams{Error: "x"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateFailed, j.State, "the only attempt was the second acquisition")
}

func TestGarbageInAHistoryDoesNotStallTheJob(t *testing.T) {
	ctx := testContext(t)
	m, lg, env := newMachine(t)
	job := submit(t, m, statemachine.SubmitParams{Type: "build"})
	_, err := env.JS.PublishMsg(ctx, &nats.Msg{Subject: lg.Subject(job.ID), Data: []byte("not an event")})
	require.NoError(t, err)
	forged, err := events.New(job.ID, "job.exploded", struct{}{})
	require.NoError(t, err)
	_, err = lg.Append(ctx, forged, job.Version+1)
	require.NoError(t, err)

	j, err := m.Load(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, j.State)
	require.Equal(t, 2, j.Quarantined)
	require.Greater(t, j.Version, job.Version)

	j, err = m.Cancel(ctx, job.ID, "stop")
	require.NoError(t, err, "the expected sequence counts the quarantined messages")
	require.Equal(t, statemachine.StateCanceled, j.State)
}

func TestUnknownJobsAndBadInputGetClearErrors(t *testing.T) {
	ctx := testContext(t)
	env := natstest.Start(t)
	m, lg := openMachine(t, env, statemachine.Config{MaxPayload: 16})
	require.Equal(t, 16, m.MaxPayload())

	_, err := m.Cancel(ctx, statemachine.JobIDForKey("never submitted"), "x")
	require.ErrorIs(t, err, statemachine.ErrNotFound)
	_, err = m.Acquire(ctx, "no.such>job", "w")
	require.ErrorIs(t, err, events.ErrInvalidJobID)

	_, _, err = m.Submit(ctx, statemachine.SubmitParams{Type: "build", Payload: make([]byte, 17)})
	require.ErrorIs(t, err, statemachine.ErrPayloadTooLarge)
	require.ErrorIs(t, err, statemachine.ErrInvalid)
	_, _, err = m.Submit(ctx, statemachine.SubmitParams{Type: "build", Tags: map[string]string{"a.b": "x"}})
	require.ErrorIs(t, err, statemachine.ErrInvalid)
	_, _, err = m.Submit(ctx, statemachine.SubmitParams{Type: "build", Priority: 10})
	require.ErrorIs(t, err, statemachine.ErrInvalid)

	s, err := env.JS.Stream(ctx, lg.Stream())
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "nothing appended for refused input")

	p := statemachine.SubmitParams{Type: "build", Payload: make([]byte, 16)}
	require.NoError(t, m.Validate(&p))
	require.Equal(t, statemachine.MaxAttemptsDefault, p.MaxAttempts)
}

// A copy of a job with version 0 is no job's copy: every job's history
// starts with its submit, at a sequence of 1 or more. A command decided on
// one (a bulk cancel from a stored value in the views bucket that no
// projector wrote, a report from a made-up held job) once appended its
// event with expected sequence 0, which the log took as the first event of
// a history of its own: a job.canceled with no submit before it, reported
// canceled. It is decided on the log's history instead.
func TestACommandOnACopyWithNoHistoryAppendsNothing(t *testing.T) {
	ctx := testContext(t)
	m, lg, _ := newMachine(t)
	real, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)

	for name, cmd := range map[string]func(statemachine.Job) (statemachine.Job, error){
		"cancel pending": func(j statemachine.Job) (statemachine.Job, error) { return m.CancelPendingFrom(ctx, j, "x") },
		"acquire":        func(j statemachine.Job) (statemachine.Job, error) { return m.AcquireFrom(ctx, j, "w") },
		"succeed": func(j statemachine.Job) (statemachine.Job, error) {
			j.State, j.Lease, j.Attempt = statemachine.StateRunning, 7, 1
			return m.Succeed(ctx, j, nil)
		},
		"fail": func(j statemachine.Job) (statemachine.Job, error) {
			j.State, j.Lease, j.Attempt = statemachine.StateRunning, 7, 1
			return m.Fail(ctx, j, statemachine.FailParams{Error: "x"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			ghost := statemachine.Job{ID: statemachine.JobIDForKey("never submitted " + name), Type: "build",
				State: statemachine.StatePending, MaxAttempts: 3}
			_, err := cmd(ghost)
			require.ErrorIs(t, err, statemachine.ErrNotFound)
			recs, err := lg.Load(ctx, ghost.ID)
			require.ErrorIs(t, err, events.ErrNotFound, "nothing appended for a job that was never submitted: %v", recs)
		})
	}

	// A real job's copy with version 0 is decided on its history.
	stale := real
	stale.Version = 0
	got, err := m.CancelPendingFrom(ctx, stale, "x")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceled, got.State)
	require.Equal(t, []string{events.TypeSubmitted, events.TypeCanceled}, history(t, lg, real.ID))
}

// A payload within the machine's limit whose event the NATS server cannot
// take in one message is refused before it is sent, saying how much would
// fit, and that much does; the other jobs of a batch with it are stored.
func TestAPayloadOverTheServersMaxPayloadIsRefusedUnsent(t *testing.T) {
	ctx := testContext(t)
	env := natstest.StartStock(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
	m, lg := openMachine(t, env, statemachine.Config{})
	big := bytes.Repeat([]byte("x"), int(env.NC.MaxPayload()))

	_, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "render", Payload: big})
	require.ErrorIs(t, err, statemachine.ErrPayloadTooLarge)
	require.NotErrorIs(t, err, events.ErrOutcomeUnknown, "it was never sent")
	fits := regexp.MustCompile(`at most about (\d+) bytes of payload fit`).FindStringSubmatch(err.Error())
	require.Len(t, fits, 2, err.Error())
	n, err := strconv.Atoi(fits[1])
	require.NoError(t, err)

	results := m.SubmitMany(ctx, []statemachine.SubmitParams{
		{Type: "render", Payload: big[:n]},
		{Type: "render", Payload: big[:n+64]},
		{Type: "render"},
	})
	require.NoError(t, results[0].Err, "the size it said fits")
	require.ErrorIs(t, results[1].Err, statemachine.ErrPayloadTooLarge)
	require.NoError(t, results[2].Err)
	for _, i := range []int{0, 2} {
		require.Equal(t, []string{events.TypeSubmitted}, history(t, lg, results[i].Job.ID))
	}
}

// TestAcknowledgedSubmitsSurviveARestart: every submit that returned, one by
// one or batched, is in the log after the server crashes and restarts, and
// its jobs go on from there.
func TestAcknowledgedSubmitsSurviveARestart(t *testing.T) {
	ctx := testContext(t)
	m, _, env := newMachine(t)
	want := map[string]statemachine.Job{}
	for i := 0; i < 20; i++ {
		j := submit(t, m, statemachine.SubmitParams{Type: "t", Priority: i % 10})
		want[j.ID] = j
	}
	params := make([]statemachine.SubmitParams, 300)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t", Tags: map[string]string{"n": fmt.Sprint(i)}}
	}
	for _, r := range m.SubmitMany(ctx, params) {
		require.NoError(t, r.Err)
		want[r.Job.ID] = r.Job
	}
	require.Len(t, want, 320)

	env.Restart(t)
	m2, _ := openMachine(t, env, statemachine.Config{})
	for id, w := range want {
		j, err := m2.Load(ctx, id)
		require.NoError(t, err)
		require.Equal(t, w.Version, j.Version)
		require.Equal(t, statemachine.StatePending, j.State)
		require.Equal(t, w.Tags, j.Tags)
		require.Equal(t, w.Priority, j.Priority)
	}
	for id := range want {
		_, err := m2.Acquire(ctx, id, "w")
		require.NoError(t, err)
		break
	}
}

// TestHugeBackoffDoesNotCrashTheFailingWorker: the failure report of a job
// with the longest backoff Submit accepts must be recorded, not panic in the
// worker's goroutine; a longer one is refused.
func TestHugeBackoffDoesNotCrashTheFailingWorker(t *testing.T) {
	ctx := testContext(t)
	m, _, _ := newMachine(t)
	_, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Backoff: statemachine.BackoffConfig{Cap: time.Duration(1<<63 - 1)}})
	require.ErrorIs(t, err, statemachine.ErrInvalid)
	job := submit(t, m, statemachine.SubmitParams{Type: "build", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: statemachine.BackoffLimit, Cap: statemachine.BackoffLimit}})
	held, err := m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	retrying, err := m.Fail(ctx, held, statemachine.FailParams{Error: "first"})
	require.NoError(t, err)
	_, err = m.PromoteDue(ctx, job.ID, *retrying.RunAt)
	require.NoError(t, err)
	held, err = m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		var j statemachine.Job
		j, err = m.Fail(ctx, held, statemachine.FailParams{Error: "second"})
		require.NoError(t, err)
		require.Equal(t, statemachine.StateScheduled, j.State)
		require.True(t, j.RunAt.After(time.Now().Add(statemachine.BackoffLimit/2-time.Minute)))
	}()
	require.Nil(t, panicked, "Fail panicked")
}

// SubmitMany gives new jobs IDs in the order of its params, so that listing
// by ID is listing in submit order; a bad job fails alone, and the params
// given are left as they were.
func TestSubmitManyKeepsTheOrderOfItsJobs(t *testing.T) {
	ctx := testContext(t)
	m, _, _ := newMachine(t)
	params := make([]statemachine.SubmitParams, 500)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t"}
	}
	params[7] = statemachine.SubmitParams{Type: "bad type"}
	results := m.SubmitMany(ctx, params)
	var ids []string
	for i, r := range results {
		if i == 7 {
			require.ErrorIs(t, r.Err, statemachine.ErrInvalid)
			continue
		}
		require.NoError(t, r.Err)
		ids = append(ids, r.Job.ID)
	}
	require.True(t, slices.IsSorted(ids), "IDs in submit order")
	require.Zero(t, params[0].MaxAttempts, "defaults filled in a copy")
}

// Of several jobs with one key in a SubmitMany, the first makes the job, as
// if each were submitted in turn, and the others are told it existed.
func TestSubmitManyWithOneKeyTwiceKeepsTheFirst(t *testing.T) {
	ctx := testContext(t)
	m, _, _ := newMachine(t)
	for round := range 5 {
		key := fmt.Sprintf("deploy-%d", round)
		// The last one keyed too: Go runs the goroutine started last first.
		params := make([]statemachine.SubmitParams, 5+round*10)
		for i := range params {
			params[i] = statemachine.SubmitParams{Type: "t", Meta: map[string]string{"line": fmt.Sprint(i)}}
			if i%5 == 1 || i == len(params)-1 {
				params[i].Key = key
			}
		}
		results := m.SubmitMany(ctx, params)
		for i, r := range results {
			require.NoError(t, r.Err)
			if params[i].Key == "" {
				continue
			}
			require.Equal(t, "1", r.Job.Meta["line"], "the first line with the key made the job")
			require.Equal(t, i != 1, r.Existed, "line %d", i)
		}
	}
}

func TestConfigThatCannotRunIsRefused(t *testing.T) {
	_, lg, _ := newMachine(t)
	for name, tc := range map[string]struct {
		log *events.Log
		cfg statemachine.Config
	}{
		"no log":                {nil, statemachine.Config{}},
		"negative max payload":  {lg, statemachine.Config{MaxPayload: -1}},
		"backoff base over cap": {lg, statemachine.Config{Backoff: statemachine.BackoffConfig{Base: time.Hour, Cap: time.Minute}}},
		// Negatives were read as their defaults, not refused.
		"negative conflict retries": {lg, statemachine.Config{ConflictRetries: -1}},
		"negative backoff base":     {lg, statemachine.Config{Backoff: statemachine.BackoffConfig{Base: -time.Second}}},
		"negative backoff cap":      {lg, statemachine.Config{Backoff: statemachine.BackoffConfig{Cap: -time.Second}}},
	} {
		_, err := statemachine.New(tc.log, tc.cfg)
		require.ErrorIs(t, err, statemachine.ErrInvalidConfig, name)
	}
	// A machine's own default cap decides whether a job's base is above it.
	m, err := statemachine.New(lg, statemachine.Config{Backoff: statemachine.BackoffConfig{Base: time.Minute, Cap: time.Hour}})
	require.NoError(t, err)
	require.NoError(t, m.Validate(&statemachine.SubmitParams{Type: "t", Backoff: statemachine.BackoffConfig{Base: 20 * time.Minute}}))
	require.ErrorIs(t, m.Validate(nil), statemachine.ErrInvalid, "no parameters: an error, not a panic")
	// So for the Validate of tools that check input before they connect.
	var none *statemachine.SubmitParams
	require.NotPanics(t, func() { err = none.Validate() })
	require.ErrorIs(t, err, statemachine.ErrInvalid, "no parameters: an error, not a panic")
}

// The machine folds the events it appends from the values it encoded, not
// decoded again (events.DataAs): the job it returns must be the job its log
// folds, and must not share the caller's maps or payload.
func TestTheJobAWriterGetsIsTheJobTheLogFolds(t *testing.T) {
	ctx := testContext(t)
	m, _, _ := newMachine(t)
	runAt := time.Now().Add(time.Hour)
	for name, p := range map[string]statemachine.SubmitParams{
		"everything": {Type: "t", Tags: map[string]string{"os": "linux"}, Meta: map[string]string{"by": "me"},
			Payload: []byte(`{"n":1}`), Priority: 3, MaxAttempts: 2, Key: "k1",
			Backoff: statemachine.BackoffConfig{Base: time.Second, Cap: time.Minute}},
		"empty maps and payload": {Type: "t", Tags: map[string]string{}, Meta: map[string]string{}, Payload: []byte{}},
		"run at":                 {Type: "t", RunAt: &runAt},
	} {
		t.Run(name, func(t *testing.T) {
			p.Tags, p.Meta, p.Payload = maps.Clone(p.Tags), maps.Clone(p.Meta), slices.Clone(p.Payload)
			submitted := submit(t, m, p)
			loaded, err := m.Load(ctx, submitted.ID)
			require.NoError(t, err)
			require.Equal(t, loaded, submitted)

			for k := range p.Tags {
				p.Tags[k] = "changed"
			}
			for k := range p.Meta {
				p.Meta[k] = "changed"
			}
			for i := range p.Payload {
				p.Payload[i] = 'x'
			}
			require.Equal(t, loaded, submitted, "the caller's maps and payload are not the job's")

			if submitted.State != statemachine.StatePending {
				return
			}
			acquired, err := m.AcquireFrom(ctx, submitted, "w1")
			require.NoError(t, err)
			loaded, err = m.Load(ctx, submitted.ID)
			require.NoError(t, err)
			require.Equal(t, loaded, acquired)
		})
	}
}

// A command decides on the history the log's stream holds, not on what a
// replica that has not caught up answers a read with: on a 3-node cluster,
// a cancel right after its job's submit, made through another node, found
// no job (once in seven), and a cancel racing an acquire was refused as a
// conflict (once in forty), its replica still showing the job pending. A
// mirror with direct gets, filtered to hold none of the jobs, answers about
// half of the reads here as such a replica would.
func TestCommandsDecideOnTheStreamsHistoryNotALaggingReplicas(t *testing.T) {
	ctx := testContext(t)
	m, lg, env := newMachine(t)
	natstest.LaggingReplica(t, env.JS, lg.Stream(), lg.Subject("behind"))

	for _, tc := range []struct {
		name string
		// command runs on a job just submitted, with the job as submitted.
		command func(j statemachine.Job) error
	}{
		{name: "cancel right after the submit", command: func(j statemachine.Job) error {
			canceled, err := m.Cancel(ctx, j.ID, "not needed")
			if err == nil && canceled.State != statemachine.StateCanceled {
				return fmt.Errorf("canceled job is %s", canceled.State)
			}
			return err
		}},
		{name: "acquire of a job canceled since", command: func(j statemachine.Job) error {
			ev, err := events.New(j.ID, events.TypeCanceled, events.Canceled{Reason: "not needed", By: events.CanceledByOperator})
			if err != nil {
				return err
			}
			if _, err := lg.Append(ctx, ev, j.Version); err != nil {
				return err
			}
			// The append's conflict is read again: the job is canceled.
			_, err = m.AcquireFrom(ctx, j, "w")
			var illegal *statemachine.IllegalTransitionError
			if errors.As(err, &illegal) && illegal.State == statemachine.StateCanceled {
				return nil
			}
			return fmt.Errorf("acquire of a canceled job: %w", err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 20 {
				require.NoError(t, tc.command(submit(t, m, statemachine.SubmitParams{Type: "build"})), "round %d", i)
			}
		})
	}
}

// A command on a copy of a job that the log's history no longer reaches
// (the log lost its tail in a crash with --fsync interval, or the job was
// purged) is decided on the history as it is, at once: the read that came
// up short was asked again for the whole publish timeout, twice for a
// worker's result (10 s), as if a replica had not caught up, though a
// single server answered it.
func TestACommandOnACopyAheadOfTheLogIsDecidedAtOnce(t *testing.T) {
	m, lg, env := newMachine(t)
	st, err := env.JS.Stream(testContext(t), lg.Stream())
	require.NoError(t, err)
	loseAcquire := func(ctx context.Context, held statemachine.Job) error { return st.DeleteMsg(ctx, held.Lease) }
	purge := func(ctx context.Context, held statemachine.Job) error { return lg.Purge(ctx, held.ID, held.Version) }
	succeed := func(ctx context.Context, held statemachine.Job) error {
		_, err := m.Succeed(ctx, held, nil)
		return err
	}
	cancelPending := func(ctx context.Context, held statemachine.Job) error {
		_, err := m.CancelPendingFrom(ctx, held, "not needed")
		return err
	}
	for _, tc := range []struct {
		name string
		// lose takes the history back from under the held copy.
		lose    func(ctx context.Context, held statemachine.Job) error
		command func(ctx context.Context, held statemachine.Job) error
		wantErr error // nil: the command is made
	}{
		{"a result after the acquire was lost", loseAcquire, succeed, statemachine.ErrLeaseLost},
		{"a cancel after the acquire was lost", loseAcquire, cancelPending, nil},
		{"a result after the job was purged", purge, succeed, events.ErrNotFound},
		{"a cancel after the job was purged", purge, cancelPending, events.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := submit(t, m, statemachine.SubmitParams{Type: "build"})
			held, err := m.Acquire(testContext(t), j.ID, "w")
			require.NoError(t, err)
			require.NoError(t, tc.lose(testContext(t), held))
			// Well under the publish timeout (5 s) the reads were asked
			// again for.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err = tc.command(ctx, held)
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
		})
	}
}

// A read that comes up short asks the stream's leader where the job's
// history ends; a leader that does not answer (a cluster electing one) must
// not take the reads' whole time: they went on after the question, and
// found the job on a replica that had it. Here the question is never
// answered (its subject is denied to the log's user), as in an election,
// and a mirror answers about half of the reads as a replica behind would.
func TestAnUnansweredLeaderDoesNotStopTheReads(t *testing.T) {
	ctx := testContext(t)
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{
			{Username: "admin", Password: "a"},
			{Username: "w", Password: "w", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.STREAM.MSG.GET.>"}},
			}},
		},
	})
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(srv.Shutdown)
	require.True(t, srv.ReadyForConnections(10*time.Second))
	connect := func(user, pass string) jetstream.JetStream {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, pass), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		return js
	}
	admin, worker := connect("admin", "a"), connect("w", "w")
	lg, err := events.Open(ctx, worker, events.Config{PublishTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	natstest.LaggingReplica(t, admin, lg.Stream(), lg.Subject("behind"))

	for i := range 20 {
		j := submit(t, m, statemachine.SubmitParams{Type: "build"})
		canceled, err := m.Cancel(ctx, j.ID, "not needed")
		require.NoError(t, err, "round %d", i)
		require.Equal(t, statemachine.StateCanceled, canceled.State)
	}
}

// A job ID that cannot name a job is a command's invalid input, as every
// other: it matches ErrInvalid, and events.ErrInvalidJobID, which says why.
func TestACommandOnAnInvalidJobIDIsInvalidInput(t *testing.T) {
	m, _, _ := newMachine(t)
	ctx := testContext(t)
	for name, call := range map[string]func(id string) error{
		"load":      func(id string) error { _, err := m.Load(ctx, id); return err },
		"cancel":    func(id string) error { _, err := m.Cancel(ctx, id, ""); return err },
		"acquire":   func(id string) error { _, err := m.Acquire(ctx, id, "w"); return err },
		"promote":   func(id string) error { _, err := m.Promote(ctx, id); return err },
		"terminate": func(id string) error { _, err := m.TerminateCanceling(ctx, id, ""); return err },
	} {
		for _, id := range []string{"", "a.b", "a*", "x>", strings.Repeat("a", 65)} {
			err := call(id)
			require.ErrorIs(t, err, statemachine.ErrInvalid, "%s %q", name, id)
			require.ErrorIs(t, err, events.ErrInvalidJobID, "%s %q", name, id)
		}
	}
}

// A command made after the connection closed sent nothing, whether it
// failed on its append or on the read of the job before it: both match
// ErrNotSent, which says the command may be sent again. A Cancel by ID
// (which reads the job first) gave the raw "nats: connection closed".
func TestACommandAfterTheConnectionClosedIsNotSent(t *testing.T) {
	ctx := testContext(t)
	env := natstest.Start(t)
	m, _ := openMachine(t, env, statemachine.Config{})
	pending, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	scheduled, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Delay: time.Hour})
	require.NoError(t, err)

	nc, js := natstest.Connect(t, env.URL)
	lg, err := events.Attach(js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	closed, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	nc.Close()
	for name, command := range map[string]func() error{
		"submit":         func() error { _, _, err := closed.Submit(ctx, statemachine.SubmitParams{Type: "build"}); return err },
		"cancel":         func() error { _, err := closed.Cancel(ctx, pending.ID, ""); return err },
		"cancel pending": func() error { _, err := closed.CancelPending(ctx, pending.ID, ""); return err },
		"acquire":        func() error { _, err := closed.Acquire(ctx, pending.ID, "w"); return err },
		"promote":        func() error { _, err := closed.Promote(ctx, scheduled.ID); return err },
	} {
		err := command()
		require.ErrorIs(t, err, statemachine.ErrNotSent, name)
	}
	// The jobs are as they were.
	j, err := m.Load(ctx, pending.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, j.State)
}

// The line a junk-only ID gets (get, history, cancel) counts its messages
// in English: "holds 1 messages" was said of a single one.
func TestNoSubmitErrorCountsItsMessages(t *testing.T) {
	one := (&statemachine.NoSubmitError{JobID: "j", Messages: 1}).Error()
	require.Equal(t, "job j not found: its history holds 1 message, not a valid submit (it is quarantined)", one)
	two := (&statemachine.NoSubmitError{JobID: "j", Messages: 2}).Error()
	require.Equal(t, "job j not found: its history holds 2 messages, none a valid submit (each is quarantined)", two)
	require.ErrorIs(t, &statemachine.NoSubmitError{JobID: "j", Messages: 1}, statemachine.ErrNotFound)
}

// A stale report that loses its append on its last try is still a lost
// lease, not a conflict: with ConflictRetries 1 (a report's one try used
// by the lost append), it got a bare *ConflictError, matching ErrConflict
// and not ErrLeaseLost, though deciding on the job read after the refusal
// says the attempt is fenced, which no retry can change.
func TestAStaleReportOnItsLastTryIsALostLease(t *testing.T) {
	ctx := testContext(t)
	env := natstest.Start(t)
	m, _ := openMachine(t, env, statemachine.Config{ConflictRetries: 1})
	job := submit(t, m, statemachine.SubmitParams{Type: "build", MaxAttempts: 3})
	first, err := m.Acquire(ctx, job.ID, "w1")
	require.NoError(t, err)
	_, err = m.Release(ctx, first, "handed back")
	require.NoError(t, err)
	second, err := m.Acquire(ctx, job.ID, "w2")
	require.NoError(t, err)

	_, err = m.Succeed(ctx, first, []byte(`"late"`))
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)
	require.NotErrorIs(t, err, statemachine.ErrConflict)
	var lost *statemachine.LeaseLostError
	require.ErrorAs(t, err, &lost)
	require.Equal(t, second.Lease, lost.Job.Lease)
}
