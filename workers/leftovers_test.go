package workers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

func (f *fixture) waitQueued(want uint64) {
	f.t.Helper()
	natstest.Eventually(f.t, 10*time.Second, func() bool { return f.queued() == want }, "%d jobs queued", want)
}

func (f *fixture) timersOf(jobID string) int {
	f.t.Helper()
	s, err := f.env.JS.Stream(context.Background(), TimersStream)
	require.NoError(f.t, err)
	n := 0
	for _, subject := range []string{timerPrefix + jobID, duePrefix + jobID} {
		_, err := s.GetLastMsgForSubject(context.Background(), subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(f.t, err)
		n++
	}
	return n
}

func TestLeftoversOfACanceledPendingJobAreForgotten(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	canceled := f.submit(statemachine.SubmitParams{Type: "build", Tags: map[string]string{"os": "linux"}, Priority: 3})
	waiting := f.submit(statemachine.SubmitParams{Type: "build", Tags: map[string]string{"os": "linux"}, Priority: 3})
	f.waitQueued(2)
	job, err := f.m.Cancel(ctx, canceled.ID, "outdated")
	require.NoError(t, err)

	l, err := AttachLeftovers(ctx, f.env.JS)
	require.NoError(t, err)
	_, err = f.m.Load(ctx, waiting.ID)
	require.NoError(t, err)
	require.ErrorIs(t, l.Forget(ctx, waiting), statemachine.ErrInvalid, "a pending job's message is its own")
	require.NoError(t, l.Forget(ctx, job))
	f.waitQueued(1)
	require.NoError(t, l.Forget(ctx, job), "forgetting twice is harmless")
}

func TestLeftoversOfARetriedJobAreForgotten(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"flaky"}}, func(_ context.Context, j *Job) error {
		if j.Attempt == 1 {
			return errors.New("try again")
		}
		return nil
	})
	j := f.submit(statemachine.SubmitParams{Type: "flaky", MaxAttempts: 2,
		Backoff: statemachine.BackoffConfig{Base: 20 * time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 2, done.Attempt)
	require.Positive(t, f.timersOf(j.ID), "the fired retry timer left its due message")

	l, err := AttachLeftovers(ctx, f.env.JS)
	require.NoError(t, err)
	require.NoError(t, l.Forget(ctx, done))
	require.Zero(t, f.timersOf(j.ID))
	f.waitQueued(0)
}

// TestRemoveQueuesRemovesOnlyTheMatchingTypes: the removed type's consumers,
// messages and registrations are gone; another type's queues are untouched
// and still run their jobs.
func TestRemoveQueuesRemovesOnlyTheMatchingTypes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	for _, tags := range []map[string]string{nil, {"os": "linux"}, {"os": "mac"}} {
		f.submit(statemachine.SubmitParams{Type: "gone", Tags: tags})
		f.submit(statemachine.SubmitParams{Type: "gone", Tags: tags, Priority: 5})
	}
	kept := f.submit(statemachine.SubmitParams{Type: "kept", Tags: map[string]string{"os": "linux"}})
	f.waitQueued(7)

	removed, err := RemoveQueues(ctx, f.env.JS, func(jobType string) bool { return jobType == "gone" })
	require.NoError(t, err)
	require.Equal(t, 6, removed)
	f.waitQueued(1)

	kv, err := f.env.JS.KeyValue(ctx, TagsetsBucket)
	require.NoError(t, err)
	names, err := kv.ListKeys(ctx)
	require.NoError(t, err)
	var left []string
	for name := range names.Keys() {
		left = append(left, name)
	}
	require.Equal(t, []string{"kept." + TagsetID(map[string]string{"os": "linux"}) + ".0"}, left)
	consumers := 0
	for _, stream := range QueueStreams() {
		st, err := f.env.JS.Stream(ctx, stream)
		require.NoError(t, err)
		for name := range st.ConsumerNames(ctx).Name() {
			require.NotContains(t, name, "gone", "a removed queue's consumer")
			consumers++
		}
	}
	require.Equal(t, 1, consumers)

	f.pool(PoolConfig{Types: []string{"kept"}, Tags: map[string]string{"os": "linux"}}, noop)
	f.waitState(kept.ID, statemachine.StateSucceeded)
	again, err := RemoveQueues(ctx, f.env.JS, func(jobType string) bool { return jobType == "gone" })
	require.NoError(t, err)
	require.Zero(t, again, "removing twice is harmless")
}

// A job whose ID cannot name a job is invalid input, as the Machine's
// commands and the job logs say it: a caller checks by statemachine.ErrInvalid.
func TestLeftoversOfAnInvalidJobIDAreInvalidInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	l, err := AttachLeftovers(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range []string{"", "a.b", ">", "*"} {
		err := l.Forget(ctx, statemachine.Job{ID: id, Type: "build", State: statemachine.StateCanceled})
		require.ErrorIs(t, err, statemachine.ErrInvalid, "%q", id)
		require.ErrorIs(t, err, events.ErrInvalidJobID, "%q", id)
	}
}
