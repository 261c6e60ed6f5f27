package workers_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// An enqueuer run without a jetjob server needs a Lister to repair what
// its consumer alone cannot: a queue message lost (a queue stream purged, a
// NATS that lost its tail) or a timer that never fired. A jetjob server
// lists the projector's views; without a Lister, Reconcile does nothing and
// such a job waits forever.
func ExampleEnqueuerConfig_lister() {
	ctx := context.Background()
	js, stop := exampleNATS() // as in Example, without the enqueuer
	defer stop()
	lg, _ := events.Open(ctx, js, events.Config{})
	defer lg.Close()
	hb, _ := events.OpenHeartbeats(ctx, js)
	m, _ := statemachine.New(lg, statemachine.Config{})
	_ = workers.EnsureTopology(ctx, js)
	proj, _ := projector.New(js, lg, hb, projector.Config{})
	_ = proj.Start(ctx)
	defer proj.Stop()
	reader, _ := projector.NewReader(ctx, js)

	enq, _ := workers.NewEnqueuer(js, m, workers.EnqueuerConfig{
		Lister: func(ctx context.Context, states []statemachine.State) ([]workers.QueuedJob, error) {
			page, err := reader.List(ctx, projector.Filter{States: states}) // one pass, no limit
			if err != nil {
				return nil, err
			}
			jobs := make([]workers.QueuedJob, 0, len(page.Views))
			for _, v := range page.Views {
				jobs = append(jobs, workers.QueuedJob{ID: v.ID, Type: v.Type, Tags: v.Tags, Priority: v.Priority,
					State: v.State, RunAt: v.RunAt, UpdatedAt: v.UpdatedAt, Version: v.Version})
			}
			return jobs, nil
		},
		// Short for the example: by default a pass runs every 30 s, and
		// looks at jobs pending for 10 s.
		ReconcileEvery: 100 * time.Millisecond, ReconcileAge: time.Millisecond,
	})
	_ = enq.Start(ctx)
	defer enq.Stop()

	job, _, _ := m.Submit(ctx, statemachine.SubmitParams{Type: "report"})
	// Enqueued: polled, with a deadline, since the example has no hook to
	// wait on.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n, _ := workers.Queued(ctx, js); n > 0 {
			break
		}
	}
	// The queue message is lost.
	for _, name := range workers.QueueStreams() {
		s, _ := js.Stream(ctx, name)
		_ = s.Purge(ctx)
	}

	results := make(chan workers.Result, 1)
	pool, _ := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"report"}, OnResult: func(r workers.Result) { results <- r },
	}, func(ctx context.Context, j *workers.Job) error { return nil })
	_ = pool.Start(ctx)
	defer pool.Stop(ctx)
	r := <-results
	fmt.Println("ran the job whose message was lost:", r.Job.ID == job.ID, r.Job.State)
	// Output:
	// ran the job whose message was lost: true succeeded
}

// exampleNATS runs an embedded NATS with JetStream in a temporary
// directory, for the examples.
func exampleNATS() (jetstream.JetStream, func()) {
	dir, _ := os.MkdirTemp("", "jetjob-example")
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true})
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("the embedded NATS did not start")
	}
	nc, _ := nats.Connect(srv.ClientURL())
	js, _ := jetstream.New(nc)
	return js, func() {
		nc.Close()
		srv.Shutdown()
		_ = os.RemoveAll(dir)
	}
}
