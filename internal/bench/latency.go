package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Start latency targets of the issue, ms.
const (
	startP50Target = 1.4
	startP99Target = 4
)

// latencyScenario, for each durability setting: start latency (submit
// returned -> handler started) and submit latency at a fixed rate with idle
// workers waiting, then cancel latency (cancel returned -> handler context
// done) for running jobs.
func (r *Runner) latencyScenario(ctx context.Context) error {
	for _, fsync := range r.cfg.Fsyncs {
		r.progress("latency, fsync %s, %d jobs at %d/s, %d idle workers", fsync, r.cfg.LatencyJobs, r.cfg.Rate, r.cfg.Workers)
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			if err := r.startLatency(ctx, s, fsync); err != nil {
				return err
			}
			return r.cancelLatency(ctx, s, fsync)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// stamps records when something happened to each job.
type stamps struct {
	mu sync.Mutex
	at map[string]time.Time
	// all is closed when want jobs are stamped.
	want int
	all  chan struct{}
}

func newStamps(want int) *stamps {
	return &stamps{at: make(map[string]time.Time, want), want: want, all: make(chan struct{})}
}

func (s *stamps) stamp(id string, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.at[id]; dup {
		return
	}
	s.at[id] = t
	if len(s.at) == s.want {
		close(s.all)
	}
}

func (s *stamps) get(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[id]
	return t, ok
}

func (s *stamps) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.at)
}

// wait waits until every job is stamped, failing when none was for the
// stall duration.
func (s *stamps) wait(ctx context.Context, stall time.Duration, what string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last, since := -1, time.Now()
	for {
		select {
		case <-s.all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			if n := s.count(); n != last {
				last, since = n, now
			} else if now.Sub(since) > stall {
				return fmt.Errorf("stalled: %d of %d jobs %s, none in the last %s", n, s.want, what, stall)
			}
		}
	}
}

func (r *Runner) startLatency(ctx context.Context, s *server.Server, fsync string) error {
	n := r.cfg.LatencyJobs
	started := newStamps(n + 1)
	handler := func(_ context.Context, j *workers.Job) error {
		started.stamp(j.ID, time.Now())
		return nil
	}
	pools := split(workers.PoolConfig{Types: []string{r.jobType("latency")}, Concurrency: r.cfg.Workers}, r.cfg.Processes)
	stop, err := r.startPools(ctx, s, pools, handler, len(pools) > 1)
	if err != nil {
		return err
	}
	defer stop()
	// A first job creates the queue; then the workers wait, idle.
	if _, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: r.jobType("latency")}); err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	for started.count() == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	time.Sleep(200 * time.Millisecond)

	// Open loop: job i is submitted at start + i/rate whether or not earlier
	// submits have returned, so a slow submit does not lower the rate.
	type submitted struct {
		id       string
		returned time.Time
		took     time.Duration
		err      error
	}
	results := make([]submitted, n)
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(r.cfg.Rate)
	begin := time.Now()
	for i := 0; i < n; i++ {
		if d := time.Until(begin.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t0 := time.Now()
			j, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: r.jobType("latency")})
			t1 := time.Now()
			results[i] = submitted{id: j.ID, returned: t1, took: t1.Sub(t0), err: err}
		}(i)
	}
	// The rate the submits went out at, open loop: not waiting for the
	// last one to return.
	achieved := float64(n) / time.Since(begin).Seconds()
	if n > 1 {
		achieved = float64(n-1) / time.Since(begin).Seconds()
	}
	wg.Wait()
	if err := started.wait(ctx, r.cfg.Stall, "started"); err != nil {
		return err
	}
	var startLat, submitLat []time.Duration
	early := 0
	for _, res := range results {
		if res.err != nil {
			return fmt.Errorf("submit: %w", res.err)
		}
		submitLat = append(submitLat, res.took)
		t, _ := started.get(res.id)
		// A handler may start before its submit call has returned (the
		// append is durable before the ack is read): that is no wait at all.
		d := t.Sub(res.returned)
		if d < 0 {
			early++
			d = 0
		}
		startLat = append(startLat, d)
	}
	in := ""
	if r.cfg.Processes > 1 {
		in = fmt.Sprintf(" in %d processes", min(r.cfg.Processes, r.cfg.Workers))
	}
	note := fmt.Sprintf("%d jobs at %d/s (%.0f/s achieved), %d idle workers%s; %d started before their submit returned",
		n, r.cfg.Rate, achieved, r.cfg.Workers, in, early)
	p50, p90, p99, mx := percentiles(startLat)
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p50_ms", Value: p50, Unit: "ms", Target: startP50Target, Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p90_ms", Value: p90, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p99_ms", Value: p99, Unit: "ms", Target: startP99Target, Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_max_ms", Value: mx, Unit: "ms", Note: note})
	p50, p90, p99, mx = percentiles(submitLat)
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p50_ms", Value: p50, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p90_ms", Value: p90, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p99_ms", Value: p99, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_max_ms", Value: mx, Unit: "ms", Note: note})
	return nil
}

// cancelLatency cancels running jobs one at a time, every 20 ms, once every
// handler has run long enough to be past the pool's cancel-watch delay (a
// job canceled sooner is found by its watcher when it starts).
func (r *Runner) cancelLatency(ctx context.Context, s *server.Server, fsync string) error {
	n := min(r.cfg.CancelJobs, r.cfg.Workers)
	running := newStamps(n)
	stopped := newStamps(n)
	handler := func(ctx context.Context, j *workers.Job) error {
		running.stamp(j.ID, time.Now())
		<-ctx.Done()
		stopped.stamp(j.ID, time.Now())
		return context.Cause(ctx)
	}
	stop, err := r.startPools(ctx, s, []workers.PoolConfig{{Types: []string{r.jobType("cancel")}, Concurrency: n}}, handler, false)
	if err != nil {
		return err
	}
	defer stop()
	var ids []string
	for _, res := range s.Machine.SubmitMany(ctx, jobs(n, statemachine.SubmitParams{Type: r.jobType("cancel")})) {
		if res.Err != nil {
			return fmt.Errorf("submit: %w", res.Err)
		}
		ids = append(ids, res.Job.ID)
	}
	if err := running.wait(ctx, r.cfg.Stall, "running"); err != nil {
		return err
	}
	time.Sleep(4 * workers.CancelWatchDelayDefault)
	returned := map[string]time.Time{}
	for _, id := range ids {
		if _, err := s.Machine.Cancel(ctx, id, "bench"); err != nil {
			return fmt.Errorf("cancel: %w", err)
		}
		returned[id] = time.Now()
		time.Sleep(20 * time.Millisecond)
	}
	if err := stopped.wait(ctx, r.cfg.Stall, "stopped after cancel"); err != nil {
		return err
	}
	var lat []time.Duration
	early := 0
	for id, t := range returned {
		done, _ := stopped.get(id)
		d := done.Sub(t)
		if d < 0 {
			early++
			d = 0
		}
		lat = append(lat, d)
	}
	handlers := "handlers"
	if early == 1 {
		handlers = "handler"
	}
	note := fmt.Sprintf("%d running jobs canceled one at a time; %d %s stopped before their cancel call returned", n, early, handlers)
	p50, p90, p99, mx := percentiles(lat)
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_p50_ms", Value: p50, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_p90_ms", Value: p90, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_p99_ms", Value: p99, Unit: "ms", Note: note})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_max_ms", Value: mx, Unit: "ms", Note: note})
	return nil
}
