package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// workerNotes end worker -h: what a script's author needs from it, the
// command's side of the contract, which the flags do not say.
var workerNotes = fmt.Sprintf(`CMD runs once per job, with the job's payload on its stdin and JETJOB_JOB_ID,
JETJOB_TYPE and JETJOB_ATTEMPT in its environment; each line of its stdout and
stderr becomes a line of the job's log (jetjob logs ID).
  exit 0      succeeds the job
  exit %d     fails the job without retry (EX_DATAERR), attempts left or not
  any other   fails the attempt ("exit status N"; a signal, "signal: NAME"),
              retried after a backoff while the job has attempts left
A cancel sends SIGTERM to the command's process group, then SIGKILL after
--grace; the job ends canceled whatever the exit. Ctrl-C takes no more jobs,
gives running commands --grace, then stops them and hands their jobs back.
`, workers.ExitNoRetry)

func runWorker(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("worker", "--type T [--tag k=v]... [--concurrency N] [--grace D] [--timeout D] [--id ID] [-v] [--] CMD [ARGS...]", true)
	fs.flagsEndAtCommand = true
	fs.Lookup("o").Usage = "not taken: a worker prints only its log, on stderr"
	fs.notes = workerNotes
	var types strs
	tags := labels{}
	fs.Var(&types, "type", "job type to serve (repeatable)")
	fs.Var(tags, "tag", "a tag this worker has, k=v (repeatable)")
	concurrency := fs.Int("concurrency", 1, fmt.Sprintf("jobs run at once, 1-%d", workers.ConcurrencyMax))
	grace := fs.String("grace", "10s", "after a cancel's SIGTERM, SIGKILL the command after this long; also the shutdown grace")
	timeout := fs.String("timeout", "0s", "stop a command still running after this long (SIGTERM, then SIGKILL after --grace) and fail its attempt with code timeout; 0 means no limit")
	id := fs.String("id", "", "worker ID (default host-pid-random)")
	verbose := fs.Bool("v", false, "debug logging")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if fs.json() {
		return usageErr("-o json: a worker prints only its log, on stderr; drop -o")
	}
	if len(pos) == 0 {
		return usageErr("no command given: jetjob worker --type T -- CMD [ARGS...]")
	}
	// A command that cannot run would fail every job it is given: refuse it
	// before connecting or taking any job.
	if err := workers.CheckCommand(pos); err != nil {
		return usageErr("%v", err)
	}
	if len(types) == 0 {
		return usageErr("--type is required, before the command (flags after it are the command's own)")
	}
	for i, t := range types {
		if err := statemachine.ValidateToken("type", t); err != nil {
			return err
		}
		if slices.Contains(types[:i], t) {
			return usageErr("--type %s given twice, expected each type once", t)
		}
	}
	if err := statemachine.ValidateLabels("tag", tags); err != nil {
		return err
	}
	if *id != "" {
		if err := statemachine.ValidateWorkerID(*id); err != nil {
			return usageErr("--id: %v", err)
		}
	}
	if *concurrency < 1 || *concurrency > workers.ConcurrencyMax {
		return usageErr("--concurrency %d, expected 1-%d", *concurrency, workers.ConcurrencyMax)
	}
	if d, err := time.ParseDuration(*grace); err == nil && d <= 0 {
		// The pool and the command handler read a zero grace as their
		// defaults (30 s and 10 s): --grace 0 gave a command ignoring
		// SIGTERM 10 s, outlived the worker's wait on a stop and left its
		// job running until the hang detector failed it. A negative one
		// is told the same, not "0 or more" as other durations are.
		return usageErr("--grace %s, expected a duration above 0 such as 10s", clip(*grace))
	}
	g, err := parseDurationFlag("grace", *grace)
	if err != nil {
		return err
	}
	jobTimeout, err := parseDurationFlag("timeout", *timeout)
	if err != nil {
		return err
	}
	if err := checkServerURL(fs.server); err != nil {
		return err
	}
	// SIGPIPE at its next line killed it mid-job, its jobs not handed
	// back, left running until failed as hung.
	defer outliveItsLog()()
	logger := logging.New(*verbose)
	defer func() { _ = logger.Sync() }()
	handler, err := workers.ExecHandler(workers.ExecConfig{Command: pos, Grace: g, Logger: logger})
	if err != nil {
		return err
	}

	nc, err := nats.Connect(fs.server, append([]nats.Option{nats.Name("jetjob-worker"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		natsErrors(ctx, logger), server.KeepReconnecting(logger, fs.server)}, fs.natsOpts...)...)
	if refused, ok := refusedConnect(fs.server, err); ok {
		return refused
	}
	if silent, ok := silentNATS(fs.auth, fs.server, err); ok {
		return silent
	}
	if err != nil {
		return fmt.Errorf("cannot reach the jetjob server at %s: %v", clip(server.RedactURL(fs.server)), err)
	}
	defer nc.Close()
	js, err := fs.auth.jetStream(nc)
	if err != nil {
		return err
	}
	lg, err := events.Attach(js, events.Config{Relay: true, Logger: logger})
	if err != nil {
		return err
	}
	defer lg.Close()
	if err := lg.Follow(ctx); err != nil {
		// Batched appends are right for every server, if slower on some.
		logger.Debug("could not read how the server takes appends; batching them", zap.Error(err))
	}
	m, err := statemachine.New(lg, statemachine.Config{Logger: logger})
	if err != nil {
		return err
	}
	pool, err := workers.NewPool(js, m, workers.PoolConfig{
		Types: types, Tags: tags, Concurrency: *concurrency, WorkerID: *id, ShutdownGrace: g, JobTimeout: jobTimeout, Logger: logger,
	}, handler)
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	tagText := "no tags"
	if len(tags) > 0 {
		tagText = "tags " + tags.String()
	}
	logger.Info(fmt.Sprintf("worker serving %v with %s, running %v; Ctrl-C stops it", []string(types), tagText, pos))
	if hang := pool.HangAfter(); g > hang/2 {
		logger.Warn(fmt.Sprintf("--grace %s is longer than half the server's hang-after (%s): a command that ignores SIGTERM may still run when its attempt is failed as hung and retried elsewhere", g, hang))
	}
	<-ctx.Done()
	// The stop waits the grace for running commands to finish, then stops
	// them: SIGTERM, and SIGKILL a grace later. It must outlast both, with
	// time to hand the jobs back after, or a command that ignores SIGTERM
	// leaves its job running until the hang detector fails it, an attempt
	// spent.
	stopFor := config.SumDurations(g, g, shutdownReserve)
	stopCtx, cancel := context.WithTimeout(context.Background(), stopFor)
	defer cancel()
	logger.Info(fmt.Sprintf("stopping: no more jobs are taken; running commands get %s to finish, then SIGTERM, then SIGKILL %s later, and their jobs are handed back; a second Ctrl-C stops at once", g, g))
	again := make(chan os.Signal, 1)
	signal.Notify(again, stopSignals()...)
	defer signal.Stop(again)
	go func() {
		select {
		case <-again:
			logger.Warn("stopping at once: running commands are sent SIGTERM now; a job not handed back within a few seconds is failed as hung after the server's hang-after")
			cancel()
		case <-stopCtx.Done():
		}
	}()
	return pool.Stop(stopCtx)
}

// shutdownReserve is the time a stopping worker keeps, past its commands'
// grace and SIGKILL, for handing their jobs back.
const shutdownReserve = 5 * time.Second
