package bench

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Targets from the benchmark issue.
var e2eTargets = map[string]map[string]float64{
	natsserver.FsyncAlways:   {"batch": 14_000, "one_at_a_time": 3_000},
	natsserver.FsyncInterval: {"batch": 18_000, "one_at_a_time": 10_500},
}

// successCounter counts job.succeeded events as the log stores them, the
// moment each job is done.
type successCounter struct {
	n    atomic.Int64
	sub  *nats.Subscription
	want int64
	done chan struct{}
	once sync.Once
}

var succeededMarker = []byte(`"type":"` + events.TypeSucceeded + `"`)

func countSuccesses(s *server.Server, want int) (*successCounter, error) {
	c := &successCounter{want: int64(want), done: make(chan struct{})}
	sub, err := s.NC.Subscribe(s.Log.SubjectPrefix()+">", func(m *nats.Msg) {
		if bytes.Contains(m.Data, succeededMarker) && c.n.Add(1) >= c.want {
			c.once.Do(func() { close(c.done) })
		}
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	c.sub = sub
	return c, nil
}

func (c *successCounter) wait(ctx context.Context, within time.Duration) error {
	defer func() { _ = c.sub.Unsubscribe() }()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(within):
		return fmt.Errorf("only %d of %d jobs succeeded within %s", c.n.Load(), c.want, within)
	}
}

func noop(context.Context, *workers.Job) error { return nil }

// startPools starts pools totalling the configured workers.
func (r *Runner) startPools(ctx context.Context, s *server.Server, cfgs []workers.PoolConfig, h workers.Handler) (func(), error) {
	var pools []*workers.Pool
	stop := func() {
		for _, p := range pools {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = p.Stop(sctx)
			cancel()
		}
	}
	for _, cfg := range cfgs {
		cfg.Logger = r.logger
		p, err := workers.NewPool(s.JS, s.Machine, cfg, h)
		if err != nil {
			stop()
			return nil, err
		}
		if err := p.Start(ctx); err != nil {
			stop()
			return nil, err
		}
		pools = append(pools, p)
	}
	return stop, nil
}

// submitAll submits the jobs one at a time from P producers, or in batches
// of 1,000; it returns when every submit has returned.
func submitAll(ctx context.Context, m *statemachine.Machine, params []statemachine.SubmitParams, producers int, batch bool) error {
	if batch {
		for i := 0; i < len(params); i += 1000 {
			for _, res := range m.SubmitMany(ctx, params[i:min(i+1000, len(params))]) {
				if res.Err != nil {
					return res.Err
				}
			}
		}
		return nil
	}
	var next atomic.Int64
	errs := make(chan error, producers)
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(params) {
					return
				}
				if _, _, err := m.Submit(ctx, params[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// throughput runs n no-op jobs through fresh pools while they are being
// submitted and returns jobs/s from the first submit to the last success.
func (r *Runner) throughput(ctx context.Context, s *server.Server, params []statemachine.SubmitParams, pools []workers.PoolConfig, batch bool) (float64, error) {
	counter, err := countSuccesses(s, len(params))
	if err != nil {
		return 0, err
	}
	stop, err := r.startPools(ctx, s, pools, noop)
	if err != nil {
		return 0, err
	}
	defer stop()
	start := time.Now()
	if err := submitAll(ctx, s.Machine, params, r.cfg.Producers, batch); err != nil {
		return 0, err
	}
	if err := counter.wait(ctx, 10*time.Minute); err != nil {
		return 0, err
	}
	return float64(len(params)) / time.Since(start).Seconds(), nil
}

func (r *Runner) e2eScenario(ctx context.Context) error {
	for _, fsync := range r.cfg.Fsyncs {
		for _, mode := range []string{"batch", "one_at_a_time"} {
			err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
				params := make([]statemachine.SubmitParams, r.cfg.Jobs)
				for i := range params {
					params[i] = statemachine.SubmitParams{Type: "noop"}
				}
				pools := []workers.PoolConfig{{Types: []string{"noop"}, Concurrency: r.cfg.Workers}}
				rate, err := r.throughput(ctx, s, params, pools, mode == "batch")
				if err != nil {
					return err
				}
				r.add(Figure{Scenario: ScenarioE2E, Fsync: fsync, Metric: "jobs_per_s_" + mode, Value: rate, Unit: "jobs/s",
					Target: e2eTargets[fsync][mode], Higher: true, Note: ceilingAppendsBatched})
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	r.rss(ScenarioE2E)
	return nil
}
