package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// TestSmokeRunsEveryScenario keeps the harness working; it asserts nothing
// about speed.
func TestSmokeRunsEveryScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every scenario")
	}
	var out bytes.Buffer
	cfg := Smoke()
	// Smaller still than the CLI's smoke run: the test suite runs with -race.
	cfg.Jobs, cfg.LatencyJobs, cfg.BacklogLarge, cfg.OpsJobs = 100, 50, 200, 100
	cfg.Fsyncs = []string{natsserver.FsyncInterval}
	figures, err := Run(context.Background(), cfg, &out)
	require.NoError(t, err, out.String())
	seen := map[string]bool{}
	for _, f := range figures {
		seen[f.Scenario] = true
	}
	for _, s := range Scenarios {
		require.True(t, seen[s], "scenario %s printed no figure", s)
	}
	text := out.String()
	require.Contains(t, text, "bench scenario=e2e fsync=interval metric=jobs_per_s_batch value=")
	// The CPU a job cost, for each submit mode: no target, never zero (a
	// run of 100 jobs takes milliseconds of CPU).
	for _, mode := range []string{ModeBatch, ModeOneAtATime} {
		var cpu *Figure
		for i, f := range figures {
			if f.Scenario == ScenarioE2E && f.Metric == "cpu_us_per_job_"+mode {
				cpu = &figures[i]
			}
		}
		require.NotNil(t, cpu, "no cpu_us_per_job_%s", mode)
		require.Positive(t, cpu.Value)
		require.Zero(t, cpu.Target)
	}
	require.Contains(t, text, "cpu_us_per_job_batch: CPU time (user+sys) from the first submit to the last success, per job; whole process")
	// Its sizes are not the targets' sizes: nothing is scored.
	require.NotContains(t, text, "target=")
	require.NotContains(t, text, "MISSED")
	require.Contains(t, text, "no targets: they are for the default sizes")
	require.Contains(t, text, "ceiling=appends_batched ratio_to_ceiling=")
	require.Contains(t, text, "SCENARIO")
	require.Contains(t, text, "NOTES\n")
	require.Regexp(t, `latency interval start_p50_ms, start_p90_ms, [^\n]*: \d+ jobs at`, text, "rows sharing a note name it once")
}

func TestJSONFigures(t *testing.T) {
	var out bytes.Buffer
	r := &Runner{cfg: validConfig(t, Config{JSON: true}), out: &out, ceiling: map[string]float64{"always/" + CeilingBatched: 20_000}}
	r.add(Figure{Scenario: ScenarioE2E, Fsync: "always", Metric: "jobs_per_s_batch", Value: 7_000, Unit: "jobs/s",
		Target: 14_000, Higher: true, CeilingMetric: CeilingBatched})
	r.add(Figure{Scenario: ScenarioLatency, Fsync: "always", Metric: "start_p99_ms", Value: 2, Unit: "ms", Target: 4})
	require.Contains(t, out.String(), `"target_op":">="`, "not HTML-escaped")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2)
	var e2e, lat map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &e2e))
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &lat))
	require.Equal(t, map[string]any{"scenario": "e2e", "fsync": "always", "metric": "jobs_per_s_batch", "value": 7000.0,
		"unit": "jobs/s", "target": 14000.0, "target_op": ">=", "gap_pct": -50.0, "met": false,
		"ceiling_metric": CeilingBatched, "ratio_to_ceiling": 0.35}, e2e)
	require.Equal(t, 100.0, lat["gap_pct"])
	require.Equal(t, true, lat["met"])
}

func validConfig(t *testing.T, cfg Config) Config {
	t.Helper()
	require.NoError(t, cfg.validate())
	return cfg
}

func TestTextFigure(t *testing.T) {
	var out bytes.Buffer
	r := &Runner{cfg: validConfig(t, Config{}), out: &out, ceiling: map[string]float64{}}
	r.add(Figure{Scenario: ScenarioE2E, Fsync: "always", Metric: "jobs_per_s_one_at_a_time", Value: 2_310, Target: 3_000, Higher: true})
	require.Equal(t, "bench scenario=e2e fsync=always metric=jobs_per_s_one_at_a_time value=2310 target=3000 target_op=>= gap=-23%\n", out.String())
}

// A target is for the sizes it was set at: a scenario run at others prints
// its figures unscored, and the notes say so.
func TestTargetsOnlyAtTheirSizes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		scored []string
	}{
		{"defaults", Config{}, []string{ScenarioE2E, ScenarioLatency, ScenarioBacklog, ScenarioTags, ScenarioOps}},
		{"fewer jobs", Config{Jobs: 333}, []string{ScenarioLatency, ScenarioBacklog, ScenarioOps}},
		{"fewer workers", Config{Workers: 7}, []string{ScenarioOps}},
		{"another rate", Config{Rate: 50}, []string{ScenarioE2E, ScenarioBacklog, ScenarioTags, ScenarioOps}},
		// The drain target is for 100,000 pending: --huge's 1,000,000 was
		// scored against it, where the memory scenario's was not.
		{"huge backlog", Config{BacklogLarge: BacklogHuge}, []string{ScenarioE2E, ScenarioLatency, ScenarioTags, ScenarioOps}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			r := &Runner{cfg: validConfig(t, tc.cfg), out: &out, ceiling: map[string]float64{}}
			for _, s := range []string{ScenarioE2E, ScenarioLatency, ScenarioBacklog, ScenarioTags, ScenarioOps} {
				r.add(Figure{Scenario: s, Metric: "m", Value: 1, Target: 2, Higher: true})
			}
			var scored []string
			for _, f := range r.figures {
				if f.Target != 0 {
					scored = append(scored, f.Scenario)
				}
			}
			require.Equal(t, tc.scored, scored)
			r.table()
			if len(scored) < 5 {
				require.Contains(t, out.String(), "no targets for ")
			} else {
				require.NotContains(t, out.String(), "no targets")
			}
		})
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	p50, p90, p99, top := percentiles(ds)
	require.Equal(t, []float64{50, 90, 99, 100}, []float64{p50, p90, p99, top})
}

func TestConfigRefusesUnknownScenario(t *testing.T) {
	_, err := Run(context.Background(), Config{Scenarios: []string{"nope"}}, &bytes.Buffer{})
	require.ErrorContains(t, err, `unknown scenario "nope"`)
	_, err = Run(context.Background(), Config{Fsyncs: []string{"never"}}, &bytes.Buffer{})
	require.ErrorContains(t, err, `fsync "never"`)
}

func benchServer(b testing.TB, fsync string) *server.Server {
	b.Helper()
	s, err := server.Start(context.Background(), server.Options{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Fsync: fsync})
	require.NoError(b, err)
	b.Cleanup(s.Stop)
	return s
}

var fsyncs = []string{natsserver.FsyncAlways, natsserver.FsyncInterval}

// BenchmarkSubmitAcquireSucceed runs b.N no-op jobs through a pool of 100
// while they are submitted in batches: the whole hot path, end to end.
func BenchmarkSubmitAcquireSucceed(b *testing.B) {
	for _, fsync := range fsyncs {
		b.Run("fsync="+fsync, func(b *testing.B) {
			s := benchServer(b, fsync)
			r := &Runner{cfg: Config{Producers: ProducersDefault, Stall: StallDefault}, ceiling: map[string]float64{}}
			params := jobs(b.N, statemachine.SubmitParams{Type: "noop"})
			b.ResetTimer()
			got, err := r.throughput(context.Background(), s, params,
				[]workers.PoolConfig{{Types: []string{"noop"}, Concurrency: WorkersDefault}}, ModeBatch, false)
			require.NoError(b, err)
			b.ReportMetric(got.rate, "jobs/s")
			b.ReportMetric(got.cpuPerJob, "cpu-µs/job")
		})
	}
}

// BenchmarkAcquire acquires pending jobs from their snapshots (as a worker
// does from a queue message), from many goroutines at once so that the log
// coalesces the appends, as a pool's slots do.
func BenchmarkAcquire(b *testing.B) {
	for _, fsync := range fsyncs {
		for _, par := range []int{1, 100} {
			b.Run(fmt.Sprintf("fsync=%s/concurrent=%d", fsync, par), func(b *testing.B) {
				s := benchServer(b, fsync)
				ctx := context.Background()
				var pending []statemachine.Job
				for lo := 0; lo < b.N; lo += SubmitBatch {
					for _, res := range s.Machine.SubmitMany(ctx, jobs(min(SubmitBatch, b.N-lo), statemachine.SubmitParams{Type: "t"})) {
						require.NoError(b, res.Err)
						pending = append(pending, res.Job)
					}
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range par {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := next.Add(1) - 1; i < int64(len(pending)); i = next.Add(1) - 1 {
							if _, err := s.Machine.AcquireFrom(ctx, pending[i], "w"); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acquires/s")
			})
		}
	}
}

// BenchmarkSubmit submits one job at a time from 8 producers.
func BenchmarkSubmit(b *testing.B) {
	for _, fsync := range fsyncs {
		b.Run("fsync="+fsync, func(b *testing.B) {
			s := benchServer(b, fsync)
			b.ResetTimer()
			err := submitAll(context.Background(), s.Machine, jobs(b.N, statemachine.SubmitParams{Type: "t"}), ProducersDefault, ModeOneAtATime, nil)
			require.NoError(b, err)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
		})
	}
}

// The e2e and start latency workers run as separate processes would, each
// pool on its own connection and log, both where the log batches (relayed)
// and where it streams.
func TestE2EWithWorkersInProcesses(t *testing.T) {
	var out bytes.Buffer
	cfg := Smoke()
	cfg.Jobs, cfg.LatencyJobs, cfg.Processes, cfg.Scenarios = 100, 50, 3, []string{ScenarioE2E, ScenarioLatency}
	_, err := Run(context.Background(), cfg, &out)
	require.NoError(t, err, out.String())
	require.Contains(t, out.String(), "20 workers in 3 processes")
	require.Contains(t, out.String(), "20 idle workers in 3 processes")
}

func TestSplitDividesTheWorkers(t *testing.T) {
	cfg := workers.PoolConfig{Concurrency: 10}
	var got []int
	for _, p := range split(cfg, 4) {
		got = append(got, p.Concurrency)
	}
	require.Equal(t, []int{3, 3, 2, 2}, got)
	require.Len(t, split(cfg, 20), 10, "a pool runs at least one job")
	require.Len(t, split(cfg, 0), 1)
}

// A run on a server cut short cancels its jobs left unfinished and removes
// its queues: no worker of that server would ever take them.
func TestAnInterruptedRunOnAServerLeavesNothingBehind(t *testing.T) {
	ctx, s := startServer(t)

	runCtx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	cfg := Config{NATSURL: s.URL, Scenarios: []string{ScenarioBacklog}, BacklogSmall: 50, BacklogLarge: 3000, Workers: 2, Producers: 2}
	var out bytes.Buffer
	ran := make(chan error, 1)
	go func() { _, err := Run(runCtx, cfg, &out); ran <- err }()

	unfinished := func() []string {
		page, err := s.Reader.List(ctx, projector.Filter{States: []statemachine.State{
			statemachine.StatePending, statemachine.StateScheduled, statemachine.StateRunning, statemachine.StateCanceling}})
		require.NoError(t, err)
		var ids []string
		for _, v := range page.Views {
			if strings.HasPrefix(v.Type, "bench_") {
				ids = append(ids, v.ID)
			}
		}
		return ids
	}
	// Interrupted once the large backlog is there, mostly pending.
	natstest.Eventually(t, time.Minute, func() bool { return len(unfinished()) >= 1000 }, "the backlog")
	interrupt()
	require.ErrorIs(t, <-ran, context.Canceled)

	require.Zero(t, len(unfinished()), "jobs of the run left unfinished")
	require.Zero(t, benchQueuesLeft(ctx, t, s), "queues of the run left on the server")
}

// A consumer of another tool on the log, never caught up, does not keep a
// run from removing its queues (a review finding: it waited 30 s, then left
// them).
func TestARunBesideAnotherConsumerOfTheLogRemovesItsQueues(t *testing.T) {
	ctx, s := startServer(t)
	_, err := s.JS.CreateOrUpdateConsumer(ctx, events.StreamDefault, jetstream.ConsumerConfig{
		Durable: "audit", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)

	var out, progress bytes.Buffer
	_, err = Run(ctx, Config{NATSURL: s.URL, Scenarios: []string{ScenarioE2E}, Jobs: 20, Workers: 2, Producers: 1, Progress: &progress}, &out)
	require.NoError(t, err)
	require.Zero(t, benchQueuesLeft(ctx, t, s))
	require.NotContains(t, progress.String(), "could not clean up")
}

// startServer starts a jetjob server, on an embedded NATS, for a run that
// measures on a running server (--server). The deadline bounds the start
// only: the returned ctx, for the test's own calls, has none (go test's
// -timeout catches a hang). Shared with the test, the 2 minutes were a
// timing assertion on the whole test, which a loaded machine overran:
// "list jobs: context deadline exceeded".
func startServer(t *testing.T) (context.Context, *server.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	return context.Background(), s
}

// benchQueuesLeft counts the bench's queue consumers on the server.
func benchQueuesLeft(ctx context.Context, t *testing.T, s *server.Server) int {
	t.Helper()
	left := 0
	for _, name := range workers.QueueStreams() {
		st, err := s.JS.Stream(ctx, name)
		require.NoError(t, err)
		for info := range st.ListConsumers(ctx).Info() {
			if strings.Contains(info.Config.FilterSubject, "bench_") {
				left++
			}
		}
	}
	return left
}

// A run on a NATS that a deployment uses leaves hang detection and purging
// to that deployment's servers, whose settings are not the bench's, even
// while none of them is up to lead: the bench's own detector published its
// hang-after of a second to that deployment's workers, and its purger
// deleted a finished job the deployment retains for 30 days.
func TestARunOnAServerLeavesItsMaintenanceToIt(t *testing.T) {
	env := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deployment, err := server.Start(ctx, server.Options{NATSURL: env.URL, HangAfter: 30 * time.Minute, RetainFinished: 720 * time.Hour})
	require.NoError(t, err)
	// A job canceled ten days ago: within the deployment's retention, past
	// the default one.
	tenDaysAgo, err := statemachine.New(deployment.Log, statemachine.Config{Now: func() time.Time { return time.Now().Add(-240 * time.Hour) }})
	require.NoError(t, err)
	old, _, err := tenDaysAgo.Submit(ctx, statemachine.SubmitParams{Type: "invoice"})
	require.NoError(t, err)
	_, err = tenDaysAgo.Cancel(ctx, old.ID, "customer request")
	require.NoError(t, err)
	natstest.Eventually(t, time.Minute, func() bool {
		v, err := deployment.Reader.Get(ctx, old.ID)
		return err == nil && v.State == statemachine.StateCanceled
	}, "the old job's view")
	// The deployment's servers are down (a restart, an upgrade) while the
	// bench runs.
	deployment.Stop()

	var out bytes.Buffer
	_, err = Run(ctx, Config{NATSURL: env.URL, Scenarios: []string{ScenarioOps}, OpsJobs: 20, HangJobs: 5, Producers: 1}, &out)
	require.NoError(t, err, out.String())

	lg, err := events.Attach(env.JS, events.Config{})
	require.NoError(t, err)
	defer lg.Close()
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	j, err := m.Load(ctx, old.ID)
	require.NoError(t, err, "the deployment's finished job was purged")
	require.Equal(t, statemachine.StateCanceled, j.State)
	settings, err := env.JS.KeyValue(ctx, events.SettingsBucketDefault)
	require.NoError(t, err)
	hangAfter, err := settings.Get(ctx, "hang_after")
	require.NoError(t, err)
	require.Equal(t, "30m0s", string(hangAfter.Value()), "the hang-after the deployment's workers follow")
}

// A run on a user's NATS measures its ceiling on streams of its own, and
// leaves that user's streams alone, whatever their names (one named
// BENCH_WQ was deleted with its messages).
func TestACeilingOnAServerLeavesTheUsersStreams(t *testing.T) {
	env := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	names := []string{"BENCH_WQ", "BENCH_CEILING"}
	for _, name := range names {
		_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"user." + name + ".>"}})
		require.NoError(t, err)
		_, err = env.JS.Publish(ctx, "user."+name+".order", []byte("kept"))
		require.NoError(t, err)
	}

	var out bytes.Buffer
	_, err := Run(ctx, Config{NATSURL: env.URL, Scenarios: []string{ScenarioCeiling}, Jobs: 100}, &out)
	require.NoError(t, err, out.String())

	var left []string
	for name := range env.JS.StreamNames(ctx).Name() {
		if strings.HasPrefix(name, "BENCH_") {
			left = append(left, name)
		}
	}
	require.ElementsMatch(t, names, left, "the user's streams, and none of the run's")
	for _, name := range names {
		st, err := env.JS.Stream(ctx, name)
		require.NoError(t, err)
		require.Equal(t, []string{"user." + name + ".>"}, st.CachedInfo().Config.Subjects)
		require.Equal(t, uint64(1), st.CachedInfo().State.Msgs)
	}
}

// A run on a server that nothing answers at says so at once, not after the
// 30 s a server's start waits out an election (silently, for the bench).
func TestARunOnAnUnreachableServerFailsAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	url := "nats://" + l.Addr().String()
	require.NoError(t, l.Close())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var out bytes.Buffer
	_, err = Run(ctx, Config{NATSURL: url, Scenarios: []string{ScenarioE2E}, Jobs: 10}, &out)
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "still trying after 10 s")
	require.Contains(t, err.Error(), "cannot reach NATS at "+url+" (is it running?)")
	require.Empty(t, out.String())
}

// A run on a NATS that holds no jetjob says, before it starts, that it makes
// jetjob's streams there, which stay; a run on one without JetStream says
// that it needs it, instead of "no responders".
func TestARunSaysWhatItNeedsOfTheNATS(t *testing.T) {
	env := natstest.StartStock(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := Config{NATSURL: env.URL, Scenarios: []string{ScenarioE2E}, Jobs: 10, Workers: 2, Producers: 1}
	for _, run := range []struct {
		name string
		said bool
	}{{"first run", true}, {"second run", false}} {
		var out, progress bytes.Buffer
		cfg.Progress = &progress
		_, err := Run(ctx, cfg, &out)
		require.NoError(t, err, out.String())
		lines := strings.Split(progress.String(), "\n")
		if run.said {
			require.Equal(t, "bench: no jetjob event log on the NATS at "+env.URL+": this run makes jetjob's streams and buckets there (JJ_*, KV_jj_*), and they stay, with the jobs it ran, until removed", lines[0], run.name)
		} else {
			require.NotContains(t, progress.String(), "no jetjob event log", run.name)
			// A NATS holding jetjob's log may be a deployment's: what the
			// run adds there, and how to tell it apart, is said first.
			require.Regexp(t, `^bench: the NATS at `+regexp.QuoteMeta(env.URL)+` holds a jetjob event log: this run's jobs \(types bench_<scenario>_[0-9a-f]{8}\) stay in it and in the views until purged; it runs, counts and cancels none of the others$`, lines[0], run.name)
		}
	}

	bare := natstest.StartStock(t, func(o *natsd.Options) { o.JetStream = false })
	_, err := Run(ctx, Config{NATSURL: bare.URL, Scenarios: []string{ScenarioE2E}, Jobs: 10}, io.Discard)
	require.ErrorContains(t, err, "NATS at "+bare.URL+": no JetStream there, which jetjob needs (nats-server -js)")
}

// A run on a NATS where no jetjob server runs ends once its figures are in:
// the messages its own projector held unacknowledged when its server
// stopped wait the consumer's AckWait, and nobody takes them before it.
// The cleanup waited them out, silently, for 15 s (30 s after a Ctrl-C)
// before it gave up.
func TestTheCleanupDoesNotWaitOnALogConsumerNobodyRuns(t *testing.T) {
	env := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := server.Start(ctx, server.Options{NATSURL: env.URL, NoMaintenance: true})
	require.NoError(t, err)
	s.Stop()
	// A job submitted once the server is gone, its event handed to a
	// projector that stopped before it acknowledged it.
	lg, err := events.Attach(env.JS, events.Config{})
	require.NoError(t, err)
	defer lg.Close()
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	_, _, err = m.Submit(ctx, statemachine.SubmitParams{Type: "bench_e2e_abcd1234"})
	require.NoError(t, err)
	cons, err := env.JS.Consumer(ctx, events.StreamDefault, projector.DurableDefault)
	require.NoError(t, err)
	batch, err := cons.Fetch(1)
	require.NoError(t, err)
	for range batch.Messages() {
	}
	require.NoError(t, batch.Error())
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, info.NumAckPending)

	for _, cutShort := range []bool{false, true} {
		var progress bytes.Buffer
		r := &Runner{cfg: validConfig(t, Config{NATSURL: env.URL, Progress: &progress}), run: "abcd1234", out: io.Discard, ceiling: map[string]float64{}}
		start := time.Now()
		r.cleanUpServer(ctx, cutShort)
		require.Less(t, time.Since(start), 10*time.Second, "cut short: %v", cutShort)
		require.NotContains(t, progress.String(), "could not clean up")
	}
}

// An embedded run whose TMPDIR cannot hold its data directories says that
// TMPDIR is the matter: it failed with "create data dir: stat /nonexistent:
// no such file or directory", naming neither TMPDIR nor what would do.
func TestARunWithAnUnusableTMPDIRSaysSo(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	t.Setenv("TMPDIR", missing)
	_, err := Run(context.Background(), Config{Scenarios: []string{ScenarioCeiling}, Jobs: 100, Fsyncs: []string{natsserver.FsyncInterval}}, io.Discard)
	require.EqualError(t, err, "scenario ceiling: cannot make a data directory for the embedded server in "+missing+
		" (TMPDIR): no such file or directory; set TMPDIR to a writable directory, or measure on a running server with --server")
}

// A run on a NATS whose account the connection lands in has no JetStream
// (the server has it, for other accounts) is refused as one without
// JetStream: it was taken for a NATS holding jetjob's log, and failed in
// its first scenario with "start server: look up stream JJ_EVENTS: ...
// JetStream not enabled for account".
func TestARunOnAnAccountWithoutJetStreamIsRefused(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "accounts.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`accounts {
  JOBS: { jetstream: enabled, users: [{user: jobs, password: jobs}] }
  OTHER: { users: [{user: other, password: other}] }
}
no_auth_user: other
`), 0o600))
	parsed, err := natsd.ProcessConfigFile(conf)
	require.NoError(t, err)
	env := natstest.StartStock(t, func(o *natsd.Options) {
		o.Accounts, o.Users, o.NoAuthUser = parsed.Accounts, parsed.Users, parsed.NoAuthUser
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var progress bytes.Buffer
	_, err = Run(ctx, Config{NATSURL: env.URL, Scenarios: []string{ScenarioE2E}, Jobs: 10, Progress: &progress}, io.Discard)
	require.ErrorContains(t, err, "NATS at "+env.URL+": no JetStream for this connection's account there, which jetjob needs")
	require.Empty(t, progress.String())
}

// A JetStream domain is an external NATS's: the embedded servers have none.
func TestADomainNeedsAnExternalNATS(t *testing.T) {
	cfg := Config{JSDomain: "hub"}
	require.ErrorContains(t, cfg.validate(), `JetStream domain "hub" without a NATS URL`)
	validConfig(t, Config{NATSURL: "nats://127.0.0.1:4222", JSDomain: "hub"})
}

// A run without the ceiling scenario (--scenario e2e alone) prints no
// ratios to it; its notes say why, and how to have them, where a newcomer
// read the empty column as a fault.
func TestNotesSayWhyNoRatioWithoutTheCeiling(t *testing.T) {
	for _, tc := range []struct {
		name      string
		scenarios []string
		ceiling   map[string]float64
		says      bool
	}{
		{"no ceiling in the run", []string{ScenarioE2E, ScenarioLatency}, map[string]float64{}, true},
		{"the ceiling ran", nil, map[string]float64{"always/" + CeilingBatched: 20_000}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			r := &Runner{cfg: validConfig(t, Config{Scenarios: tc.scenarios}), out: &out, ceiling: tc.ceiling}
			r.add(Figure{Scenario: ScenarioE2E, Fsync: "always", Metric: "jobs_per_s_batch", Value: 7_000, Unit: "jobs/s", CeilingMetric: CeilingBatched})
			r.add(Figure{Scenario: ScenarioLatency, Fsync: "always", Metric: "start_p50_ms", Value: 1, Unit: "ms"})
			r.table()
			const note = "no ratios to the ceiling: the ceiling scenario was not in this run (add --scenario ceiling)"
			if tc.says {
				require.Contains(t, out.String(), note)
			} else {
				require.NotContains(t, out.String(), "no ratios")
				require.Contains(t, out.String(), "0.35 x appends_batched")
			}
		})
	}
}

// Where the process's resident set cannot be read (no /proc/self/status:
// macOS, the BSDs), the run prints no memory figures, and says so, where it
// printed a peak RSS of 0 MiB for every scenario, and the memory scenario
// held 100,000 jobs to print two more zeros.
func TestNoMemoryFiguresWhereTheResidentSetCannotBeRead(t *testing.T) {
	saved := procSelfStatus
	procSelfStatus = filepath.Join(t.TempDir(), "no-such-status")
	t.Cleanup(func() { procSelfStatus = saved })
	var out, progress bytes.Buffer
	cfg := Smoke()
	cfg.Jobs, cfg.BacklogLarge = 100, 200
	cfg.Scenarios, cfg.Fsyncs, cfg.Progress = []string{ScenarioE2E, ScenarioMemory}, []string{natsserver.FsyncInterval}, &progress
	figures, err := Run(context.Background(), cfg, &out)
	require.NoError(t, err, out.String())
	for _, f := range figures {
		require.NotEqual(t, "MiB", f.Unit, "a memory figure: %+v", f)
		require.NotEqual(t, ScenarioMemory, f.Scenario, "a memory scenario figure: %+v", f)
	}
	require.NotContains(t, out.String(), "peak_rss_mib")
	require.Contains(t, out.String(), "no memory figures: the process's resident set is read from /proc/self/status (Linux), which this system does not have")
	require.Contains(t, progress.String(), "memory: skipped: the process's resident set is read from /proc/self/status (Linux), which this system does not have")
}

// On a server the ops scenario rebuilds into a bucket of its own, empty at
// first, so every view is written: its note said "N views written, the
// others were current" of a rebuild with no others.
func TestRebuildNoteOnAServerSaysEveryViewWasWritten(t *testing.T) {
	ctx, s := startServer(t)
	var out bytes.Buffer
	cfg := Config{NATSURL: s.URL, Scenarios: []string{ScenarioOps}, OpsJobs: 50, HangJobs: 10, Producers: 2}
	figures, err := Run(ctx, cfg, &out)
	require.NoError(t, err, out.String())
	var note string
	for _, f := range figures {
		if f.Metric == "rebuild_events_per_s" {
			note = f.Note
		}
	}
	require.NotEmpty(t, note, out.String())
	require.NotContains(t, note, "the others were current")
	require.Regexp(t, `; every view written, none was current$`, note)
}
