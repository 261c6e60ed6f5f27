package workers_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// A pool runs the jobs whose type and tags it serves; the handler's result
// becomes the job's state.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "jetjob-example")
	defer os.RemoveAll(dir)
	srv, _ := natsserver.Start(natsserver.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	defer srv.Shutdown()
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// What a server runs: the log, the queue topology and the enqueuer.
	lg, _ := events.Open(ctx, js, events.Config{})
	defer lg.Close()
	m, _ := statemachine.New(lg, statemachine.Config{})
	_ = workers.EnsureTopology(ctx, js)
	enq, _ := workers.NewEnqueuer(js, m, workers.EnqueuerConfig{})
	_ = enq.Start(ctx)
	defer enq.Stop()

	// A worker with a GPU in the EU serves render jobs that need either tag,
	// both or neither.
	results := make(chan workers.Result, 1)
	pool, _ := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"render"}, Tags: map[string]string{"gpu": "true", "region": "eu"},
		// Each attempt's outcome, once it is in the job's history.
		OnResult: func(r workers.Result) { results <- r },
	}, func(ctx context.Context, j *workers.Job) error {
		j.Logf("rendering %s", j.Payload)
		return nil
	})
	_ = pool.Start(ctx)
	defer pool.Stop(ctx)

	job, _, _ := m.Submit(ctx, statemachine.SubmitParams{
		Type: "render", Tags: map[string]string{"gpu": "true"}, Payload: []byte(`"frame-1"`),
	})
	r := <-results
	fmt.Println("ran the submitted job:", r.Job.ID == job.ID)
	fmt.Println("state:", r.Job.State, "attempt:", r.Job.Attempt)
	// Output:
	// ran the submitted job: true
	// state: succeeded attempt: 1
}
