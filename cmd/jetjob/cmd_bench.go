package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/jetjob/jetjob/internal/bench"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/workers"
)

// workersMax is the most handlers bench runs: the e2e and latency
// scenarios run them in one pool.
const workersMax = workers.ConcurrencyMax

// jobsMax and producersMax bound --n and --producers: the bench holds each
// job's submit, and each producer's goroutine, in memory, and a larger one
// ended the process with a Go runtime's out-of-memory dump.
const (
	jobsMax      = 10_000_000
	producersMax = 10_000
)

// benchNotes end bench's -h: what each scenario measures, and what a run
// prints, which the flags' lines do not say.
var benchNotes = fmt.Sprintf(`Scenarios, each on a fresh embedded server in a fresh temporary data directory (or on --server):
  ceiling  the raw JetStream rates of this machine: appends one at a time, pipelined and in
           atomic batches, and work-queue fetch+ack; the other figures are also given as a
           ratio to them, so that runs on different machines compare
  e2e      jobs/s from the first submit to the last success: --n no-op jobs submitted in
           batches of %d, then one at a time by --producers, run by --workers meanwhile
  latency  start latency (submit returned to handler started) and submit latency at --rate
           jobs/s with idle workers, and cancel latency of running jobs: p50, p90, p99, max
  backlog  submit rate while a backlog of %d and of %d pending jobs grows (--huge: %d),
           then the rate at which --workers drain it
  tags     throughput with 1 tag set and with %d, over %d pools with overlapping tag sets
  ops      bulk cancel of %d pending jobs, projection rebuild, and hang detection of %d dead
           jobs (that one not with --server)
  memory   the process's memory holding %d pending jobs (on Linux; not with --server)
Each also gives the process's peak RSS (on Linux). ceiling, e2e and latency run
once per --fsync setting; the others on the first. At the default sizes a figure that the
benchmark issue sets a target for prints it and the gap (docs/BENCHMARKS.md).
Output: a line per figure as it is measured (bench scenario=... metric=... value=...), then a
table and what each figure measured; -o json: a JSON object per figure, and no table.
Exit codes: 0 ok, 1 a scenario failed or the run was interrupted, 2 bad usage.
`, bench.SubmitBatch, bench.BacklogSmallDefault, bench.BacklogLargeDefault, bench.BacklogHuge,
	bench.TagSetsDefault, bench.TagPools, bench.OpsJobsDefault, bench.HangJobsDefault, bench.BacklogLargeDefault)

// runBench runs `jetjob bench`: the scenarios of internal/bench on fresh
// embedded servers (or an external NATS), a line per figure as it comes and
// a table at the end.
func runBench(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("bench", "[--server URL] [--n JOBS] [--scenario NAME]... [--fsync always|interval]... [-o json] [--workers N] [--producers N] [--rate JOBS/S] [--cpuprofile FILE] [--smoke] [--huge] [--processes N]", false)
	natsURL := fs.String("server", "", "measure on this NATS server instead of fresh embedded ones")
	auth := authFlags(fs, "the NATS of --server")
	output := fs.String("o", "text", "output format: text (a line per figure and a table) or json (an object per figure)")
	n := fs.Int("n", bench.JobsDefault, "jobs per e2e run; the ceiling sends n/4 messages per figure (at least 1,000), the tags scenario runs n/2 jobs")
	producers := fs.Int("producers", bench.ProducersDefault, "producers submitting one at a time")
	workers := fs.Int("workers", bench.WorkersDefault, "concurrent no-op handlers")
	processes := fs.Int("processes", 1, "e2e and start latency: the workers split over this many pools, each with its own connection and log as a jetjob worker process has (1: one pool on the server's own)")
	rate := fs.Int("rate", bench.RateDefault, fmt.Sprintf("submit rate of the latency scenario, jobs/s: it submits %d jobs for each fsync setting (%d with --smoke), so each takes %d/rate seconds", bench.LatencyJobsDefault, bench.Smoke().LatencyJobs, bench.LatencyJobsDefault))
	var scenarios, fsyncs strs
	fs.Var(&scenarios, "scenario", "scenario to run, repeatable: "+strings.Join(bench.Scenarios, ", ")+" (default all)")
	fs.Var(&fsyncs, "fsync", "durability setting to measure, repeatable: always, interval (default both)")
	smoke := fs.Bool("smoke", false, "every scenario with a few hundred jobs, for CI: that it works, not how fast")
	huge := fs.Bool("huge", false, fmt.Sprintf("backlog and memory scenarios with %d pending jobs instead of %d (the backlog one: about 4 GiB of memory)", bench.BacklogHuge, bench.BacklogLargeDefault))
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run (server included) to this file")
	fs.notes = benchNotes
	// A bad flag gets one error line; the usage is for -h only.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.parseFlagsOnly(args)
	if errors.Is(err, errHelp) {
		usage()
	}
	if err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return usageErr("-o %s, expected text or json", quoteShort(*output))
	}
	for _, s := range scenarios {
		if !slices.Contains(bench.Scenarios, s) {
			return usageErr("--scenario %s, expected one of %s", quoteShort(s), strings.Join(bench.Scenarios, ", "))
		}
	}
	for _, f := range fsyncs {
		if f != natsserver.FsyncAlways && f != natsserver.FsyncInterval {
			return usageErr("--fsync %s, expected %s or %s", quoteShort(f), natsserver.FsyncAlways, natsserver.FsyncInterval)
		}
	}
	var distinct strs
	for _, f := range fsyncs {
		if !slices.Contains(distinct, f) {
			distinct = append(distinct, f)
		}
	}
	fsyncs = distinct
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["server"] {
		if err := checkServerURL(*natsURL); err != nil {
			return err
		}
		if len(fsyncs) > 0 {
			return usageErr("--fsync sets the embedded servers' durability; with --server the NATS server's own sync_interval decides: drop --fsync")
		}
	} else if given := auth.onCommandLine(); len(given) > 0 {
		// Their variables, set for the CLI's commands, are no reason to
		// refuse a run on embedded servers.
		return usageErr("%s: for the NATS of --server only; the embedded servers take no credentials, TLS settings or JetStream domain, expected no %s",
			strings.Join(given, ", "), strings.Join(given, " or "))
	}
	// A flag that no scenario of the run reads is a mistake, not a no-op.
	runs := func(names ...string) bool {
		return len(scenarios) == 0 || slices.ContainsFunc(names, func(n string) bool { return slices.Contains(scenarios, n) })
	}
	for _, f := range []struct {
		flag      string
		scenarios []string
	}{
		{"huge", []string{bench.ScenarioBacklog, bench.ScenarioMemory}},
		{"rate", []string{bench.ScenarioLatency}},
		{"processes", []string{bench.ScenarioE2E, bench.ScenarioLatency}},
		{"n", []string{bench.ScenarioCeiling, bench.ScenarioE2E, bench.ScenarioTags}},
		{"workers", []string{bench.ScenarioE2E, bench.ScenarioLatency, bench.ScenarioBacklog, bench.ScenarioTags}},
		// The others submit in batches, from one producer.
		{"producers", []string{bench.ScenarioE2E}},
	} {
		if set[f.flag] && !runs(f.scenarios...) {
			return usageErr("--%s is for the %s scenario, which this run does not include", f.flag, strings.Join(f.scenarios, " or "))
		}
	}
	if *smoke && *huge {
		return usageErr("--huge runs the backlog with %d pending jobs and --smoke with a few hundred: give one of them", bench.BacklogHuge)
	}
	if set["server"] && len(scenarios) > 0 && !slices.ContainsFunc(scenarios, func(s string) bool { return s != bench.ScenarioMemory }) {
		return usageErr("the memory scenario does not run with --server: it measures the embedded server holding the backlog")
	}
	for name, v := range map[string]int{"n": *n, "producers": *producers, "workers": *workers, "rate": *rate, "processes": *processes} {
		if v <= 0 {
			return usageErr("--%s %d, expected a positive number", name, v)
		}
	}
	if *n > jobsMax {
		return usageErr("--n %d, expected at most %d (the bench holds every job in memory)", *n, jobsMax)
	}
	if *producers > producersMax {
		return usageErr("--producers %d, expected at most %d", *producers, producersMax)
	}
	if *workers > workersMax {
		return usageErr("--workers %d, expected at most %d (one pool's most)", *workers, workersMax)
	}
	// Against the workers the run will have: --smoke has fewer than the
	// default unless --workers is given.
	runWorkers, with := *workers, ""
	if *smoke && !set["workers"] {
		runWorkers, with = bench.Smoke().Workers, " with --smoke"
	}
	if *processes > runWorkers {
		return usageErr("--processes %d, expected at most --workers (%d%s): each process runs at least one", *processes, runWorkers, with)
	}

	cfg := bench.Config{}
	if *smoke {
		cfg = bench.Smoke()
	}
	// Flags given explicitly override the smoke sizes.
	if !*smoke || set["n"] {
		cfg.Jobs = *n
	}
	if !*smoke || set["producers"] {
		cfg.Producers = *producers
	}
	if !*smoke || set["workers"] {
		cfg.Workers = *workers
	}
	if !*smoke || set["rate"] {
		cfg.Rate = *rate
	}
	if *huge {
		cfg.BacklogLarge = bench.BacklogHuge
	}
	// Output nobody reads any more (piped into head, which exited) stops
	// the run as a Ctrl-C does, which removes what it made: SIGPIPE killed
	// the process at its next line, its data directories left in TMPDIR
	// and, with --server, its queues on that server.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	if *output == "json" {
		out = rawOut(out) // as writeJSON writes
	}
	out = &stopOnWriteError{w: out, stop: stopRun}
	cfg.Processes = *processes
	if set["server"] {
		if cfg.NATSOptions, err = auth.options(); err != nil {
			return err
		}
		cfg.JSDomain = auth.jsDomain
	}
	cfg.Scenarios, cfg.Fsyncs, cfg.NATSURL, cfg.JSON = scenarios, fsyncs, *natsURL, *output == "json"
	cfg.Progress = os.Stderr
	if set["server"] {
		// A subject that NATS refuses this user ends the run and is named,
		// instead of a request timing out 35 s later.
		cfg.NATSErrors = natsErrorHandler(ctx, nil)
	}
	// After a Ctrl-C the run cleans up an external server; a second one
	// leaves that undone.
	cleanup, endCleanup := context.WithCancel(context.Background())
	defer endCleanup()
	cfg.Cleanup = cleanup
	stopWatching := context.AfterFunc(ctx, func() {
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		go func() {
			defer signal.Stop(again)
			select {
			case <-again:
				endCleanup()
			case <-cleanup.Done():
			}
		}()
	})
	defer stopWatching()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			// A path that cannot be written is bad input, as --file's is.
			return usageErr("--cpuprofile %s: cannot create it: %v", clipPath(*cpuProfile), pathless(err))
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	_, err = bench.Run(ctx, cfg, out)
	var writeErr writeError
	if errors.As(context.Cause(ctx), &writeErr) {
		return fmt.Errorf("write output: %w; the run stopped", writeErr.err)
	}
	if refused, ok := refusedConnect(*natsURL, err); ok {
		return refused
	}
	if err != nil && ctx.Err() != nil {
		// What was in flight when it stopped is the bench's own, and gone.
		return errors.New("interrupted; the figures printed above were measured before it")
	}
	return err
}

// writeError is why a run stopped whose output could not be written.
type writeError struct{ err error }

func (e writeError) Error() string { return "write output: " + e.err.Error() }

// stopOnWriteError stops the run at the first output it cannot write.
type stopOnWriteError struct {
	w    io.Writer
	stop context.CancelCauseFunc
}

func (s *stopOnWriteError) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		s.stop(writeError{err})
	}
	return n, err
}
