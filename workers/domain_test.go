package workers_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/coretest"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Every part of jetjob runs on a JetStream handle made with
// jetstream.NewWithDomain, through a leaf node without JetStream of its
// own, where the plain API prefix ($JS.API.) and $KV.> are denied: the
// reads and writes jetjob makes itself, on raw subjects (direct gets, the
// leader's message get, the views' writes), go by the handle's prefix.
func TestTheGoAPIRunsThroughALeafNodeByDomain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	// Generous: through the leaf, the hub queues each API request, and a
	// loaded machine answers them slowly.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	leafed := natstest.StartLeafed(t, "hub")
	_, js := leafed.Connect(t)

	lg, hb, m := coretest.Open(t, js)
	require.NoError(t, workers.EnsureTopology(ctx, js))
	logs, err := workers.AttachLogs(ctx, js)
	require.NoError(t, err)
	proj, err := projector.New(js, lg, hb, projector.Config{})
	require.NoError(t, err)
	require.NoError(t, proj.Start(ctx))
	t.Cleanup(proj.Stop)
	reader, err := projector.NewReader(ctx, js)
	require.NoError(t, err)
	enq, err := workers.NewEnqueuer(js, m, workers.EnqueuerConfig{})
	require.NoError(t, err)
	require.NoError(t, enq.Start(ctx))
	t.Cleanup(enq.Stop)

	results := make(chan workers.Result, 1)
	pool, err := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"render"}, OnResult: func(r workers.Result) { results <- r },
	}, func(ctx context.Context, j *workers.Job) error {
		j.Log("rendering through the leaf")
		return j.SetResult(map[string]string{"url": "s3://renders/1"})
	})
	require.NoError(t, err)
	require.NoError(t, pool.Start(ctx))
	t.Cleanup(func() { _ = pool.Stop(context.Background()) })

	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "render"})
	require.NoError(t, err)
	var r workers.Result
	select {
	case r = <-results:
	case <-ctx.Done():
		t.Fatalf("job %s never ran through the leaf", job.ID)
	}
	require.Equal(t, statemachine.StateSucceeded, r.Job.State, "job %s: %s", job.ID, r.Job.Error)

	// Direct gets: the job's history, and its last event.
	loaded, err := m.Load(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateSucceeded, loaded.State)
	last, err := lg.LastSeq(ctx, job.ID)
	require.NoError(t, err)
	require.NotZero(t, last)
	// A read past the last event asks the stream's leader where the job
	// ends.
	recs, err := lg.LoadPast(ctx, job.ID, last+10)
	require.NoError(t, err)
	require.Equal(t, last, recs[len(recs)-1].Seq)

	// The view, which the projector wrote to its bucket.
	var view projector.View
	natstest.Eventually(t, time.Minute, func() bool {
		view, err = reader.Get(ctx, job.ID)
		return err == nil && view.State == statemachine.StateSucceeded
	}, "the view of job %s succeeded", job.ID)
	require.JSONEq(t, `{"url":"s3://renders/1"}`, string(view.Result))

	// The job's log, read and followed to its end (the leader says where).
	lines, err := logs.Read(ctx, job.ID)
	require.NoError(t, err)
	require.NotEmpty(t, lines)
	var followed []string
	require.NoError(t, logs.Follow(ctx, job.ID, func(context.Context) bool { return true }, func(l workers.LogLine) {
		followed = append(followed, l.Line)
	}))
	require.Contains(t, followed, "rendering through the leaf")
}
