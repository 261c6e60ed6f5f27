package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

type demoPayload struct {
	Steps int  `json:"steps"`
	Fail  bool `json:"fail_first_attempt,omitempty"`
}

// demoHandler logs a few steps a quarter second apart, failing the first
// attempt when asked to, so that a retry shows up too.
func demoHandler(ctx context.Context, job *workers.Job) error {
	var p demoPayload
	if err := json.Unmarshal(job.Payload, &p); err != nil || p.Steps <= 0 {
		p.Steps = 3
	}
	for i := 1; i <= p.Steps; i++ {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(250 * time.Millisecond):
		}
		job.Logf("step %d of %d", i, p.Steps)
		job.Progress(float64(i)/float64(p.Steps), fmt.Sprintf("step %d", i))
	}
	if p.Fail && job.Attempt == 1 {
		return errors.New("demo failure on the first attempt")
	}
	return nil
}

func runDev(ctx context.Context, args []string, out io.Writer) (err error) {
	s, o, auth, err := startServer(ctx, "dev", filepath.Join(".jetjob", "dev"), args)
	if err != nil {
		return err
	}
	defer func() { _ = o.Logger.Sync() }()
	var pool *workers.Pool
	// The worker and the server stop as jetjob server's does: a second
	// Ctrl-C leaves at once (with the NATS of --nats gone, stopping took
	// 30 s while it was ignored).
	defer func() {
		if serr := stopUnlessSignaled(func() {
			if pool != nil {
				stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = pool.Stop(stopCtx)
			}
			s.Stop()
		}); serr != nil {
			err = serr
			return
		}
		if ctx.Err() != nil {
			o.Logger.Info("stopped")
		}
	}()

	pool, err = workers.NewPool(s.JS, s.Machine, workers.PoolConfig{
		Types: []string{"demo"}, Tags: map[string]string{"region": "eu", "gpu": "true"}, Concurrency: 2,
		ShutdownGrace: 2 * time.Second, Logger: o.Logger,
	}, demoHandler)
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}

	reader, err := projector.NewReader(ctx, s.JS)
	if err != nil {
		return err
	}
	changes, err := reader.Watch(ctx, projector.Filter{Type: "demo"})
	if err != nil {
		return err
	}
	in := 3 * time.Second
	demo := []statemachine.SubmitParams{
		{Type: "demo", Payload: []byte(`{"steps":3}`)},
		{Type: "demo", Tags: map[string]string{"region": "eu"}, Payload: []byte(`{"steps":4}`), Priority: 5},
		{Type: "demo", Tags: map[string]string{"region": "eu", "gpu": "true"}, Payload: []byte(`{"steps":2,"fail_first_attempt":true}`),
			Backoff: statemachine.BackoffConfig{Base: time.Second}},
		{Type: "demo", Payload: []byte(`{"steps":2}`), RunAt: ptrTime(time.Now().Add(in))},
		// Nothing serves region=us: this job waits, and shows what bulk cancel does.
		{Type: "demo", Tags: map[string]string{"region": "us"}, Meta: map[string]string{"template_version": "v1"}},
	}
	for _, p := range demo {
		if _, _, err := s.Machine.Submit(ctx, p); err != nil {
			return fmt.Errorf("submit demo job: %w", err)
		}
	}
	where := ", data in " + o.DataDir
	export := "export JETJOB_SERVER=" + shellWord(s.URL)
	if o.NATSURL != "" {
		where = " (an external NATS: its own storage)"
		for _, e := range auth.exports() {
			export += "\n  export " + e
		}
	}
	fmt.Fprintf(out, `
jetjob dev is running: NATS on %s%s.
A demo worker (type demo, tags gpu=true,region=eu) is running 5 demo jobs:
one fails its first attempt and is retried, one is scheduled %s ahead, and one
(region=us) waits for a worker that never comes.

In another terminal:
  %s
  go build -o jetjob ./cmd/jetjob
  ./jetjob ls
  ./jetjob submit --type demo --tag region=eu --payload '{"steps":5}'
  ./jetjob logs -f <ID>
  ./jetjob history <ID>
  ./jetjob cancel --pending --meta template_version=v1 --dry-run
  ./jetjob worker --type demo --tag region=us -- sh -c 'echo hello from $JETJOB_JOB_ID'
  go test -race ./...

Changes to demo jobs follow; Ctrl-C stops everything.
`, s.URL, where, in, export)
	// A view changes more often than this line does (a running job's
	// heartbeats): a line is printed when what it shows changed.
	shown := map[string]string{}
	for v := range changes {
		line := fmt.Sprintf("%s  %-9s attempt %d/%d %s", v.ID, v.State, v.Attempt, v.MaxAttempts, v.Error)
		if shown[v.ID] == line {
			continue
		}
		shown[v.ID] = line
		fmt.Fprintf(out, "%s  %s\n", v.UpdatedAt.Local().Format("15:04:05.000"), line)
	}
	if ctx.Err() != nil {
		o.Logger.Info("shutting down; a second Ctrl-C stops at once") // as jetjob server answers a Ctrl-C
	}
	return nil
}

func ptrTime(t time.Time) *time.Time { return &t }
