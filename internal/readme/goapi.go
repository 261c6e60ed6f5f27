// Package readme holds the README's Go API snippet as code that compiles;
// its test holds the README to it, so that the snippet a newcomer pastes
// builds against this version of the API.
package readme

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Snippet is the README's snippet, for the compiler and vet: nothing calls it.
var Snippet = run

// run submits, cancels and runs render jobs through a jetjob server on NATS.
func run(ctx context.Context, params []statemachine.SubmitParams, tags map[string]string) error {
	nc, err := nats.Connect("nats://127.0.0.1:4222") // github.com/nats-io/nats.go
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc) // github.com/nats-io/nats.go/jetstream
	if err != nil {
		return err
	}
	// The event log a server provisioned; a small process's appends join the
	// server's atomic batches (Relay), sent as that server records (Follow).
	lg, err := events.Attach(js, events.Config{Relay: true})
	if err != nil {
		return err
	}
	defer lg.Close()
	if err := lg.Follow(ctx); err != nil {
		return err
	}
	m, err := statemachine.New(lg, statemachine.Config{}) // commands
	if err != nil {
		return err
	}
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "render", Tags: map[string]string{"gpu": "true"}})
	if err != nil {
		return err
	}
	for _, r := range m.SubmitMany(ctx, params) { // batch insert; one job's error does not stop the others
		if r.Err != nil {
			return r.Err
		}
	}
	if _, err := m.Cancel(ctx, job.ID, "not needed"); err != nil {
		return err
	}

	type renderArgs struct{ Scene string }
	pool, err := workers.NewPool(js, m, workers.PoolConfig{Types: []string{"render"}, Tags: tags, Concurrency: 8},
		workers.JSONHandler(func(ctx context.Context, j *workers.Job, a renderArgs) error { // payload decoded
			j.Log("rendering " + a.Scene)
			// The view's result; refused once the handler returned.
			return j.SetResult(map[string]string{"url": "s3://renders/" + a.Scene})
		}))
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	// Stop waits up to ShutdownGrace (30 s) for running handlers; a ctx
	// already done gives them none.
	defer pool.Stop(context.Background())

	reader, err := projector.NewReader(ctx, js) // views: Get, List, Watch
	if err != nil {
		return err
	}
	res, err := maintenance.CancelPending(ctx, reader, m, projector.Filter{Type: "render",
		MetaNot: map[string]string{"template_version": "v7"}}, maintenance.BulkCancelOptions{})
	if err != nil {
		return err
	}
	fmt.Println(len(res.Canceled), "canceled;", len(res.Skipped), "skipped")
	return nil
}
