package workers_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// A pool runs the jobs whose type and tags it serves; the handler's result
// becomes the job's state.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "jetjob-example")
	defer os.RemoveAll(dir)
	// Any NATS with JetStream serves; this one is embedded with
	// nats-server's own package (`jetjob dev` runs one for a shell).
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true})
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("the embedded NATS did not start")
	}
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

// A typed handler gets its payload decoded, and sets a result that the
// job's success records.
func ExampleJSONHandler() {
	ctx := context.Background()
	js, m, stop := exampleServer(ctx) // as in Example
	defer stop()

	type resize struct {
		Image string `json:"image"`
		Width int    `json:"width"`
	}
	results := make(chan workers.Result, 1)
	pool, _ := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"resize"}, OnResult: func(r workers.Result) { results <- r },
	}, workers.JSONHandler(func(ctx context.Context, j *workers.Job, args resize) error {
		return j.SetResult(map[string]string{"url": fmt.Sprintf("s3://thumbs/%s-%d.png", args.Image, args.Width)})
	}))
	_ = pool.Start(ctx)
	defer pool.Stop(ctx)

	_, _, _ = m.Submit(ctx, statemachine.SubmitParams{Type: "resize", Payload: []byte(`{"image":"cat","width":128}`)})
	r := <-results
	fmt.Println(r.Job.State, string(r.Job.Result))
	// Output:
	// succeeded {"url":"s3://thumbs/cat-128.png"}
}

// A pool has one handler for all its types: to serve two, each with its
// own payload type, dispatch on the job's type. A handler's log lines and
// progress are the job's log, which any process can read or follow.
func ExampleNewPool() {
	ctx := context.Background()
	js, m, stop := exampleServer(ctx) // as in Example
	defer stop()

	type email struct {
		To string `json:"to"`
	}
	type thumbnail struct {
		Image string `json:"image"`
	}
	handlers := map[string]workers.Handler{
		"email": workers.JSONHandler(func(ctx context.Context, j *workers.Job, a email) error {
			if a.To == "" {
				return workers.NoRetry(errors.New("no recipient")) // no retry would help
			}
			j.Logf("sent to %s", a.To)
			return nil
		}),
		"thumbnail": workers.JSONHandler(func(ctx context.Context, j *workers.Job, a thumbnail) error {
			for i := 1; i <= 2; i++ {
				j.Progress(float64(i)/2, fmt.Sprintf("pass %d of 2", i))
			}
			return j.SetResult(map[string]string{"url": "s3://thumbs/" + a.Image})
		}),
	}
	results := make(chan workers.Result, 3)
	pool, _ := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"email", "thumbnail"}, OnResult: func(r workers.Result) { results <- r },
	}, func(ctx context.Context, j *workers.Job) error {
		return handlers[j.Type](ctx, j)
	})
	_ = pool.Start(ctx)

	thumb, _, _ := m.Submit(ctx, statemachine.SubmitParams{Type: "thumbnail", Payload: []byte(`{"image":"cat"}`)})
	_, _, _ = m.Submit(ctx, statemachine.SubmitParams{Type: "email", Payload: []byte(`{"to":"ann@example.com"}`)})
	_, _, _ = m.Submit(ctx, statemachine.SubmitParams{Type: "email", Payload: []byte(`{}`)})
	byType := map[string][]string{}
	for range 3 {
		r := <-results
		byType[r.Job.Type] = append(byType[r.Job.Type], strings.TrimSpace(fmt.Sprintf("%s %s%s", r.Job.State, r.Job.Error, r.Job.Result)))
	}
	slices.Sort(byType["email"])
	fmt.Println("email:", strings.Join(byType["email"], "; "))
	fmt.Println("thumbnail:", byType["thumbnail"][0])

	// Log lines are sent without waiting for their acks; Stop waits for
	// them, so the thumbnail's lines are all stored once it returns.
	_ = pool.Stop(ctx)
	logs, _ := workers.AttachLogs(ctx, js)
	lines, _ := logs.Read(ctx, thumb.ID)
	for _, l := range lines {
		fmt.Println(l.Stream, *l.Progress, l.Line)
	}
	// Output:
	// email: failed no recipient; succeeded
	// thumbnail: succeeded {"url":"s3://thumbs/cat"}
	// progress 0.5 pass 1 of 2
	// progress 1 pass 2 of 2
}

// exampleServer runs what a server runs (the log, the queue topology, the
// enqueuer) on an embedded NATS in a temporary directory.
func exampleServer(ctx context.Context) (jetstream.JetStream, *statemachine.Machine, func()) {
	js, stopNATS := exampleNATS()
	lg, _ := events.Open(ctx, js, events.Config{})
	m, _ := statemachine.New(lg, statemachine.Config{})
	_ = workers.EnsureTopology(ctx, js)
	enq, _ := workers.NewEnqueuer(js, m, workers.EnqueuerConfig{})
	_ = enq.Start(ctx)
	return js, m, func() {
		enq.Stop()
		lg.Close()
		stopNATS()
	}
}

// Canceling a running job cancels its handler's context, with ErrCanceled
// as the cause: the handler stops, and whatever it returns, the pool
// acknowledges the cancel and the job ends canceled, by its worker.
func Example_cancel() {
	ctx := context.Background()
	js, m, stop := exampleServer(ctx) // as in Example
	defer stop()

	started := make(chan struct{})
	results := make(chan workers.Result, 1)
	pool, _ := workers.NewPool(js, m, workers.PoolConfig{
		Types: []string{"export"}, OnResult: func(r workers.Result) { results <- r },
	}, func(ctx context.Context, j *workers.Job) error {
		close(started)
		<-ctx.Done() // a long export, until it is told to stop
		return context.Cause(ctx)
	})
	_ = pool.Start(ctx)
	defer pool.Stop(ctx)

	job, _, _ := m.Submit(ctx, statemachine.SubmitParams{Type: "export"})
	<-started
	// A running job waits in canceling for its worker to stop it (or for
	// the hang detector's cancel grace, if the worker is gone).
	asked, _ := m.Cancel(ctx, job.ID, "wrong account")
	fmt.Println("asked:", asked.State)

	r := <-results
	fmt.Println("handler returned:", r.Err, errors.Is(r.Err, workers.ErrCanceled))
	fmt.Println("state:", r.Job.State, "by:", r.Job.CanceledBy, "reason:", r.Job.CancelReason)
	// Output:
	// asked: canceling
	// handler returned: job canceled true
	// state: canceled by: worker reason: wrong account
}
