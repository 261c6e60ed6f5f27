package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Submit modes of the e2e scenario.
const (
	ModeBatch      = "batch"
	ModeOneAtATime = "one_at_a_time"
)

// e2eTargets are the targets, jobs/s, by durability and submit mode.
var e2eTargets = map[string]map[string]float64{
	natsserver.FsyncAlways:   {ModeBatch: 14_000, ModeOneAtATime: 3_000},
	natsserver.FsyncInterval: {ModeBatch: 18_000, ModeOneAtATime: 10_500},
}

// e2eCeiling: the raw append figure each submit mode is compared with.
var e2eCeiling = map[string]string{ModeBatch: CeilingBatched, ModeOneAtATime: CeilingPipelined}

// successCounter counts the successes of the run's own jobs as their pools
// record them (workers.PoolConfig.OnResult, called once the job.succeeded
// event is stored): a job is done when its success is durable, not when its
// handler returns. It counts only the jobs it was told of (expect), so that
// other jobs finishing on a shared server do not end a run early; a success
// may be recorded before its submit returns, so one seen first waits for
// its expect. It reads nothing from the server: River's harness counts its
// client's completions in process the same way, and a subscription to the
// log cost about 6% of the process's CPU.
type successCounter struct {
	mu     sync.Mutex
	want   int
	done   int
	wanted map[string]bool
	early  map[string]bool
	n      atomic.Int64
	all    chan struct{}
}

func newSuccessCounter(want int) *successCounter {
	return &successCounter{want: want, wanted: map[string]bool{}, early: map[string]bool{}, all: make(chan struct{})}
}

// recorded is the OnResult of the run's pools.
func (c *successCounter) recorded(r workers.Result) {
	if r.Job.State == statemachine.StateSucceeded {
		c.succeeded(r.Job.ID)
	}
}

// pools returns the configs with the counter hearing their results.
func (c *successCounter) pools(cfgs []workers.PoolConfig) []workers.PoolConfig {
	out := make([]workers.PoolConfig, len(cfgs))
	for i, cfg := range cfgs {
		cfg.OnResult = c.recorded
		out[i] = cfg
	}
	return out
}

func (c *successCounter) succeeded(id string) { c.meet(id, c.early, c.wanted) }

// expect makes a submitted job one of those counted.
func (c *successCounter) expect(id string) { c.meet(id, c.wanted, c.early) }

// meet counts a job once both its success and its submit's return are
// known: the first to come waits in its own map for the other.
func (c *successCounter) meet(id string, mine, other map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !other[id] {
		mine[id] = true
		return
	}
	delete(other, id)
	c.count()
}

func (c *successCounter) count() {
	c.done++
	c.n.Store(int64(c.done))
	if c.done == c.want {
		close(c.all)
	}
}

// wait returns when every job succeeded, or fails when none succeeded for
// the stall duration: a broken run fails in a minute, not in an hour.
func (c *successCounter) wait(ctx context.Context, stall time.Duration) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last, since := int64(-1), time.Now()
	for {
		select {
		case <-c.all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			if n := c.n.Load(); n != last {
				last, since = n, now
			} else if now.Sub(since) > stall {
				return fmt.Errorf("stalled: %d of %d jobs succeeded, none in the last %s", n, c.want, stall)
			}
		}
	}
}

func noop(context.Context, *workers.Job) error { return nil }

// startPools starts the pools; the returned func stops them. Pools share the
// server's connection and log unless apart is set: each then has its own, as
// a worker process has (appends relayed to the server where it batches).
func (r *Runner) startPools(ctx context.Context, s *server.Server, cfgs []workers.PoolConfig, h workers.Handler, apart bool) (func(), error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for _, cfg := range cfgs {
		cfg.Logger = r.logger
		js, m := s.JS, s.Machine
		if apart {
			var err error
			var closeProcess func()
			if js, m, closeProcess, err = r.workerProcess(ctx, s); err != nil {
				stop()
				return nil, err
			}
			stops = append(stops, closeProcess)
		}
		p, err := workers.NewPool(js, m, cfg, h)
		if err != nil {
			stop()
			return nil, fmt.Errorf("new pool: %w", err)
		}
		if err := p.Start(ctx); err != nil {
			stop()
			return nil, fmt.Errorf("start pool: %w", err)
		}
		stops = append(stops, func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_ = p.Stop(sctx)
			cancel()
		})
	}
	return stop, nil
}

// workerProcess is what `jetjob worker` sets up: a connection and a log of
// its own, relaying appends and following the server's record of how it
// takes them.
func (r *Runner) workerProcess(ctx context.Context, s *server.Server) (jetstream.JetStream, *statemachine.Machine, func(), error) {
	opts := []nats.Option{nats.Name("jetjob-bench-worker"), r.natsErrors()}
	if r.cfg.NATSURL != "" {
		opts = append(opts, r.cfg.NATSOptions...)
	}
	nc, err := nats.Connect(s.URL, opts...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect a worker: %w", err)
	}
	js, err := jetStream(nc, r.cfg.JSDomain)
	if err == nil {
		var lg *events.Log
		if lg, err = events.Attach(js, events.Config{Relay: true, Logger: r.logger}); err == nil {
			if err = lg.Follow(ctx); err == nil {
				var m *statemachine.Machine
				if m, err = statemachine.New(lg, statemachine.Config{Logger: r.logger}); err == nil {
					return js, m, func() { lg.Close(); nc.Close() }, nil
				}
			}
			lg.Close()
		}
	}
	nc.Close()
	return nil, nil, nil, fmt.Errorf("set up a worker: %w", err)
}

// split divides cfg's concurrency over n pools, as evenly as it goes.
func split(cfg workers.PoolConfig, n int) []workers.PoolConfig {
	n = max(1, min(n, cfg.Concurrency))
	out := make([]workers.PoolConfig, n)
	for i := range out {
		out[i] = cfg
		out[i].Concurrency = cfg.Concurrency / n
		if i < cfg.Concurrency%n {
			out[i].Concurrency++
		}
	}
	return out
}

func jobs(n int, p statemachine.SubmitParams) []statemachine.SubmitParams {
	out := make([]statemachine.SubmitParams, n)
	for i := range out {
		out[i] = p
	}
	return out
}

// submitAll submits the jobs one at a time from producers goroutines, or in
// batches of SubmitBatch through SubmitMany, and returns when every submit
// has returned. submitted, when set, is told each job's ID as its submit
// returns.
func submitAll(ctx context.Context, m *statemachine.Machine, params []statemachine.SubmitParams, producers int, mode string, submitted func(id string)) error {
	if submitted == nil {
		submitted = func(string) {}
	}
	if mode == ModeBatch {
		for i := 0; i < len(params); i += SubmitBatch {
			for _, res := range m.SubmitMany(ctx, params[i:min(i+SubmitBatch, len(params))]) {
				if res.Err != nil {
					return fmt.Errorf("submit many: %w", res.Err)
				}
				submitted(res.Job.ID)
			}
		}
		return nil
	}
	var next atomic.Int64
	errs := make(chan error, producers)
	var wg sync.WaitGroup
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(params) || ctx.Err() != nil {
					return
				}
				j, _, err := m.Submit(ctx, params[i])
				if err != nil {
					errs <- fmt.Errorf("submit: %w", err)
					return
				}
				submitted(j.ID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// run is what one throughput run measured.
type run struct {
	// rate is jobs/s from the first submit to the last success.
	rate float64
	// cpuPerJob is the process's CPU time (user and system, every thread:
	// the embedded server, projector, enqueuer, producers and workers) over
	// the same span, per job, in µs.
	cpuPerJob float64
}

// throughput runs the jobs through fresh pools with a no-op handler while
// they are being submitted, and measures them from the first submit to the
// last success.
func (r *Runner) throughput(ctx context.Context, s *server.Server, params []statemachine.SubmitParams, pools []workers.PoolConfig, mode string, apart bool) (run, error) {
	counter := newSuccessCounter(len(params))
	stop, err := r.startPools(ctx, s, counter.pools(pools), noop, apart)
	if err != nil {
		return run{}, err
	}
	defer stop()
	cpu0, start := processCPU(), time.Now()
	if err := submitAll(ctx, s.Machine, params, r.cfg.Producers, mode, counter.expect); err != nil {
		return run{}, err
	}
	if err := counter.wait(ctx, r.cfg.Stall); err != nil {
		return run{}, err
	}
	took, cpu := time.Since(start), processCPU()-cpu0
	n := float64(len(params))
	return run{rate: n / took.Seconds(), cpuPerJob: float64(cpu.Microseconds()) / n}, nil
}

// e2eScenario: N no-op jobs submitted in batches and one at a time, run by W
// workers while they are submitted, for each durability setting.
func (r *Runner) e2eScenario(ctx context.Context) error {
	for _, fsync := range r.cfg.Fsyncs {
		for _, mode := range []string{ModeBatch, ModeOneAtATime} {
			r.progress("e2e, fsync %s, %d jobs submitted %s, %d workers", fsync, r.cfg.Jobs, mode, r.cfg.Workers)
			err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
				pools := split(workers.PoolConfig{Types: []string{r.jobType("noop")}, Concurrency: r.cfg.Workers}, r.cfg.Processes)
				apart := len(pools) > 1
				got, err := r.throughput(ctx, s, jobs(r.cfg.Jobs, statemachine.SubmitParams{Type: r.jobType("noop")}), pools, mode, apart)
				if err != nil {
					return fmt.Errorf("%s, fsync %s: %w", mode, fsync, err)
				}
				note := fmt.Sprintf("%d jobs, %d workers", r.cfg.Jobs, r.cfg.Workers)
				if apart {
					note += fmt.Sprintf(" in %d processes", len(pools))
				}
				if mode == ModeOneAtATime {
					note += fmt.Sprintf(", %d producers", r.cfg.Producers)
				}
				r.add(Figure{Scenario: ScenarioE2E, Fsync: fsync, Metric: "jobs_per_s_" + mode, Value: got.rate, Unit: "jobs/s",
					Target: e2eTargets[fsync][mode], Higher: true, CeilingMetric: e2eCeiling[mode], Note: note})
				// What bounds the fsync interval figures is the CPU on 2
				// cores, and the CPU a job costs moves far less with the
				// machine's other load than its rate does: this is the
				// figure to compare two builds by.
				cpuNote := "CPU time (user+sys) from the first submit to the last success, per job; " + r.processNote()
				r.add(Figure{Scenario: ScenarioE2E, Fsync: fsync, Metric: "cpu_us_per_job_" + mode, Value: got.cpuPerJob, Unit: "µs/job", Note: cpuNote})
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}
