package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// latencyScenario: start latency (submit returned -> handler started) and
// submit latency at a fixed rate with idle workers waiting; then cancel
// latency (cancel returned -> handler context done) for running jobs.
func (r *Runner) latencyScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	return r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
		n := max(r.cfg.Jobs/10, 100)
		var mu sync.Mutex
		started := map[string]time.Time{}
		all := make(chan struct{})
		handler := func(_ context.Context, j *workers.Job) error {
			mu.Lock()
			started[j.ID] = time.Now()
			if len(started) == n+1 {
				close(all)
			}
			mu.Unlock()
			return nil
		}
		stop, err := r.startPools(ctx, s, []workers.PoolConfig{{Types: []string{"lat"}, Concurrency: r.cfg.Workers}}, handler)
		if err != nil {
			return err
		}
		defer stop()
		// A first job registers the queue; then the pool idles.
		if _, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "lat"}); err != nil {
			return err
		}
		returned := make(map[string]time.Time, n)
		var submitLat []time.Duration
		tick := time.NewTicker(time.Second / time.Duration(r.cfg.Rate))
		for i := 0; i < n; i++ {
			<-tick.C
			t0 := time.Now()
			j, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "lat"})
			if err != nil {
				tick.Stop()
				return err
			}
			t1 := time.Now()
			submitLat = append(submitLat, t1.Sub(t0))
			returned[j.ID] = t1
		}
		tick.Stop()
		select {
		case <-all:
		case <-time.After(time.Minute):
			return fmt.Errorf("latency jobs did not all start")
		}
		var startLat []time.Duration
		mu.Lock()
		for id, t1 := range returned {
			startLat = append(startLat, max(started[id].Sub(t1), 0))
		}
		mu.Unlock()
		p50, p90, p99, mx := percentiles(startLat)
		note := fmt.Sprintf("%d jobs at %d/s", n, r.cfg.Rate)
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p50_ms", Value: p50, Unit: "ms", Target: 1.4, Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p90_ms", Value: p90, Unit: "ms", Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_p99_ms", Value: p99, Unit: "ms", Target: 4, Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "start_max_ms", Value: mx, Unit: "ms", Note: note})
		p50, p90, p99, mx = percentiles(submitLat)
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p50_ms", Value: p50, Unit: "ms", Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p90_ms", Value: p90, Unit: "ms", Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_p99_ms", Value: p99, Unit: "ms", Note: note})
		r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "submit_max_ms", Value: mx, Unit: "ms", Note: note})
		if err := r.cancelLatency(ctx, s, fsync); err != nil {
			return err
		}
		r.rss(ScenarioLatency)
		return nil
	})
}

func (r *Runner) cancelLatency(ctx context.Context, s *server.Server, fsync string) error {
	n := min(50, r.cfg.Workers)
	var mu sync.Mutex
	done := map[string]time.Time{}
	running := make(chan string, n)
	handler := func(ctx context.Context, j *workers.Job) error {
		running <- j.ID
		<-ctx.Done()
		mu.Lock()
		done[j.ID] = time.Now()
		mu.Unlock()
		return context.Cause(ctx)
	}
	stop, err := r.startPools(ctx, s, []workers.PoolConfig{{Types: []string{"cancel"}, Concurrency: n}}, handler)
	if err != nil {
		return err
	}
	defer stop()
	for i := 0; i < n; i++ {
		if _, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "cancel"}); err != nil {
			return err
		}
	}
	returned := map[string]time.Time{}
	for i := 0; i < n; i++ {
		id := <-running
		if _, err := s.Machine.Cancel(ctx, id, "bench"); err != nil {
			return err
		}
		returned[id] = time.Now()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(done)
		mu.Unlock()
		if k == n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d canceled handlers stopped", k, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var lat []time.Duration
	mu.Lock()
	for id, t := range returned {
		lat = append(lat, max(done[id].Sub(t), 0))
	}
	mu.Unlock()
	p50, _, p99, mx := percentiles(lat)
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_p50_ms", Value: p50, Unit: "ms"})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_p99_ms", Value: p99, Unit: "ms"})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: fsync, Metric: "cancel_max_ms", Value: mx, Unit: "ms"})
	return nil
}

// backlogScenario: submit rate while a backlog grows, then drain rate, for a
// small and a large backlog.
func (r *Runner) backlogScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	var drains []float64
	for _, size := range []int{r.cfg.BacklogSmall, r.cfg.BacklogLarge} {
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			params := make([]statemachine.SubmitParams, size)
			for i := range params {
				params[i] = statemachine.SubmitParams{Type: "drain"}
			}
			start := time.Now()
			if err := submitAll(ctx, s.Machine, params, r.cfg.Producers, true); err != nil {
				return err
			}
			r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: fmt.Sprintf("submit_per_s_backlog_%d", size),
				Value: float64(size) / time.Since(start).Seconds(), Unit: "jobs/s"})
			counter, err := countSuccesses(s, size)
			if err != nil {
				return err
			}
			stop, err := r.startPools(ctx, s, []workers.PoolConfig{{Types: []string{"drain"}, Concurrency: r.cfg.Workers}}, noop)
			if err != nil {
				return err
			}
			defer stop()
			start = time.Now()
			if err := counter.wait(ctx, 30*time.Minute); err != nil {
				return err
			}
			rate := float64(size) / time.Since(start).Seconds()
			drains = append(drains, rate)
			r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: fmt.Sprintf("drain_per_s_backlog_%d", size), Value: rate, Unit: "jobs/s"})
			return nil
		})
		if err != nil {
			return err
		}
	}
	r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: "drain_large_over_small_pct", Value: drains[1] / drains[0] * 100,
		Unit: "%", Target: 80, Higher: true})
	r.rss(ScenarioBacklog)
	return nil
}

// tagsScenario: throughput with one tag set, and with many distinct tag sets
// served by 32 pools with overlapping tag sets.
func (r *Runner) tagsScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	const keys = 10
	allTags := map[string]string{}
	for k := 0; k < keys; k++ {
		allTags[fmt.Sprint("k", k)] = "1"
	}
	pools := func() []workers.PoolConfig {
		var out []workers.PoolConfig
		per := max(r.cfg.Workers/32, 1)
		for i := 0; i < 32; i++ {
			tags := map[string]string{}
			for k, v := range allTags {
				tags[k] = v
			}
			if i >= 2 { // all but two pools lack one key: overlapping, not equal
				delete(tags, fmt.Sprint("k", i%keys))
			}
			out = append(out, workers.PoolConfig{Types: []string{"tags"}, Tags: tags, Concurrency: per})
		}
		return out
	}
	var rates []float64
	for _, sets := range []int{1, min(r.cfg.TagSets, 1<<keys)} {
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			n := r.cfg.Jobs / 2
			params := make([]statemachine.SubmitParams, n)
			for i := range params {
				set := (i % sets) + 1
				tags := map[string]string{}
				for k := 0; k < keys; k++ {
					if set&(1<<k) != 0 {
						tags[fmt.Sprint("k", k)] = "1"
					}
				}
				params[i] = statemachine.SubmitParams{Type: "tags", Tags: tags}
			}
			rate, err := r.throughput(ctx, s, params, pools(), true)
			if err != nil {
				return err
			}
			rates = append(rates, rate)
			r.add(Figure{Scenario: ScenarioTags, Fsync: fsync, Metric: fmt.Sprintf("jobs_per_s_%d_tagsets", sets), Value: rate, Unit: "jobs/s"})
			return nil
		})
		if err != nil {
			return err
		}
	}
	r.add(Figure{Scenario: ScenarioTags, Fsync: fsync, Metric: "many_over_one_tagset_pct", Value: rates[1] / rates[0] * 100,
		Unit: "%", Target: 50, Higher: true})
	r.rss(ScenarioTags)
	return nil
}

// opsScenario: bulk cancel, projection rebuild and hang detection.
func (r *Runner) opsScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	hangAfter := time.Second
	opts := server.Options{HangAfter: hangAfter, DetectEvery: 250 * time.Millisecond}
	return r.withServer(ctx, fsync, opts, func(s *server.Server) error {
		n := r.cfg.OpsJobs
		params := make([]statemachine.SubmitParams, n)
		for i := range params {
			params[i] = statemachine.SubmitParams{Type: "ops", Meta: map[string]string{"template_version": "v1"}}
		}
		if err := submitAll(ctx, s.Machine, params, r.cfg.Producers, true); err != nil {
			return err
		}
		if err := waitListed(ctx, s.Reader, projector.Filter{Type: "ops", States: []statemachine.State{statemachine.StatePending}}, n); err != nil {
			return err
		}
		start := time.Now()
		res, err := maintenance.CancelPending(ctx, s.Reader, s.Machine, projector.Filter{Type: "ops"}, maintenance.BulkCancelOptions{})
		if err != nil {
			return err
		}
		if len(res.Canceled) != n {
			return fmt.Errorf("bulk cancel canceled %d of %d (skipped %d)", len(res.Canceled), n, len(res.Skipped))
		}
		r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "bulk_cancel_jobs_per_s", Value: float64(n) / time.Since(start).Seconds(),
			Unit: "jobs/s", Target: 5000, Higher: true})

		other, err := projector.New(s.JS, s.Log, s.Heartbeat, projector.Config{Durable: "bench_rebuild", HeartbeatDurable: "bench_rebuild_hb"})
		if err != nil {
			return err
		}
		stats, err := other.Rebuild(ctx)
		if err != nil {
			return err
		}
		r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "rebuild_events_per_s", Value: stats.EventsPerSec, Unit: "events/s",
			Target: 50_000, Higher: true, Note: fmt.Sprintf("%d events, %d jobs", stats.Events, stats.Jobs)})

		// Hang detection: jobs acquired by a worker that then says nothing.
		dead := r.cfg.HangJobs
		for i := range params[:dead] {
			params[i] = statemachine.SubmitParams{Type: "dead", MaxAttempts: 1}
		}
		var ids []string
		for _, res := range s.Machine.SubmitMany(ctx, params[:dead]) {
			if res.Err != nil {
				return res.Err
			}
			if _, err := s.Machine.Acquire(ctx, res.Job.ID, "dead-worker"); err != nil {
				return err
			}
			ids = append(ids, res.Job.ID)
		}
		start = time.Now()
		if err := waitListed(ctx, s.Reader, projector.Filter{Type: "dead", States: []statemachine.State{statemachine.StateFailed}}, dead); err != nil {
			return err
		}
		r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "hang_detect_all_failed_s", Value: time.Since(start).Seconds(), Unit: "s",
			Note: fmt.Sprintf("%d dead jobs, hang-after %s, at most %d per pass", dead, hangAfter, maintenance.MaxPerPassDefault)})
		r.rss(ScenarioOps)
		return nil
	})
}

// waitListed waits until the views show n jobs matching the filter.
func waitListed(ctx context.Context, reader *projector.Reader, f projector.Filter, n int) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		page, err := reader.List(ctx, f)
		if err != nil {
			return err
		}
		if len(page.Views) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d jobs listed", len(page.Views), n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// memoryScenario: the server's resident memory holding a large backlog.
func (r *Runner) memoryScenario() {
	fsync := natsserver.FsyncInterval
	if r.cfg.NATSURL != "" {
		fsync = "external"
	}
	_ = r.withServer(context.Background(), fsync, server.Options{}, func(s *server.Server) error {
		peakRSS(true)
		n := r.cfg.BacklogLarge
		params := make([]statemachine.SubmitParams, n)
		for i := range params {
			params[i] = statemachine.SubmitParams{Type: "mem"}
		}
		if err := submitAll(context.Background(), s.Machine, params, r.cfg.Producers, true); err != nil {
			return err
		}
		r.add(Figure{Scenario: ScenarioMemory, Fsync: fsync, Metric: fmt.Sprintf("peak_rss_mib_%d_pending", n), Value: peakRSS(true),
			Unit: "MiB", Target: 512, Note: "server, projector, enqueuer and client in one process"})
		return nil
	})
}
