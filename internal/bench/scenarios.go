package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// smallDrainRuns: the small backlog drains in a sixth of a second, so that
// one run's rate moves by a third with the machine; its figures are the
// median of this many runs, each on a fresh server as the large one is.
const smallDrainRuns = 3

// backlogScenario: the submit rate while a backlog grows (batch submits, no
// workers), then the rate at which the workers drain it, for a small and a
// large backlog, on the default durability.
func (r *Runner) backlogScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	var drains []float64
	for _, size := range []int{r.cfg.BacklogSmall, r.cfg.BacklogLarge} {
		runs := 1
		if size == r.cfg.BacklogSmall {
			runs = smallDrainRuns
		}
		r.progress("backlog, fsync %s, %d pending jobs drained by %d workers", fsync, size, r.cfg.Workers)
		var submits, drained []float64
		for range runs {
			submit, drain, err := r.backlogRun(ctx, fsync, size)
			if err != nil {
				return err
			}
			submits, drained = append(submits, submit), append(drained, drain)
		}
		note := ""
		if runs > 1 {
			note = fmt.Sprintf("; the median of %d runs", runs)
		}
		r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: fmt.Sprintf("submit_per_s_backlog_%d", size),
			Value: median(submits), Unit: "jobs/s", CeilingMetric: CeilingBatched1k,
			Note: fmt.Sprintf("batches of %d, no workers%s", SubmitBatch, note)})
		drains = append(drains, median(drained))
		r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: fmt.Sprintf("drain_per_s_backlog_%d", size),
			Value: median(drained), Unit: "jobs/s", CeilingMetric: CeilingFetchAckAsync, Note: fmt.Sprintf("%d workers%s", r.cfg.Workers, note)})
	}
	r.add(Figure{Scenario: ScenarioBacklog, Fsync: fsync, Metric: "drain_large_over_small_pct", Value: drains[1] / drains[0] * 100,
		Unit: "%", Target: 80, Higher: true, Note: fmt.Sprintf("%d vs %d pending", r.cfg.BacklogLarge, r.cfg.BacklogSmall)})
	return nil
}

// backlogRun submits size jobs with no workers, then drains them, on a
// fresh server: the two rates.
func (r *Runner) backlogRun(ctx context.Context, fsync string, size int) (submit, drain float64, err error) {
	err = r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
		// On a shared server the queue may hold other jobs already.
		before, err := workers.Queued(ctx, s.JS)
		if err != nil {
			return err
		}
		counter := newSuccessCounter(size)
		start := time.Now()
		if err := submitAll(ctx, s.Machine, jobs(size, statemachine.SubmitParams{Type: r.jobType("drain")}), r.cfg.Producers, ModeBatch, counter.expect); err != nil {
			return err
		}
		submit = float64(size) / time.Since(start).Seconds()
		// The drain starts from a backlog that is all enqueued.
		if err := waitQueued(ctx, s, before+uint64(size), r.cfg.Stall); err != nil {
			return err
		}
		stop, err := r.startPools(ctx, s, counter.pools([]workers.PoolConfig{{Types: []string{r.jobType("drain")}, Concurrency: r.cfg.Workers}}), noop, false)
		if err != nil {
			return err
		}
		defer stop()
		start = time.Now()
		if err := counter.wait(ctx, r.cfg.Stall); err != nil {
			return err
		}
		drain = float64(size) / time.Since(start).Seconds()
		return nil
	})
	return submit, drain, err
}

// median of a few rates.
func median(vs []float64) float64 {
	vs = slices.Clone(vs)
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

// waitQueued waits until the work queue holds n messages.
func waitQueued(ctx context.Context, s *server.Server, n uint64, stall time.Duration) error {
	last, since := uint64(0), time.Now()
	for {
		queued, err := workers.Queued(ctx, s.JS)
		if err != nil {
			return err
		}
		if queued >= n {
			return nil
		}
		if queued != last {
			last, since = queued, time.Now()
		} else if time.Since(since) > stall {
			return fmt.Errorf("stalled: %d of %d jobs enqueued", last, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tagKeys: tag sets are the non-empty subsets of these keys (all with value
// "1"), so that 1,000 distinct sets fit and pools can overlap on them.
const tagKeys = 10

func tagSet(bits int) map[string]string {
	tags := map[string]string{}
	for k := 0; k < tagKeys; k++ {
		if bits&(1<<k) != 0 {
			tags["k"+strconv.Itoa(k)] = "1"
		}
	}
	return tags
}

// tagPools are TagPools pools with overlapping tag sets: two hold every key,
// each other one lacks one key, so a job's tag set is served by the pools
// that hold all of its keys.
func (r *Runner) tagPools() []workers.PoolConfig {
	var out []workers.PoolConfig
	per := max(r.cfg.Workers/TagPools, 1)
	for i := 0; i < TagPools; i++ {
		bits := 1<<tagKeys - 1
		if i >= 2 {
			bits &^= 1 << (i % tagKeys)
		}
		out = append(out, workers.PoolConfig{Types: []string{r.jobType("tags")}, Tags: tagSet(bits), Concurrency: per})
	}
	return out
}

// tagsScenario: throughput of the same overlapping pools with every job in
// one tag set, then spread over many distinct tag sets. Each case runs twice
// on one server: cold, when every tag set is new (its queue's consumer is
// created and every pool that serves it binds to it while jobs flow), then
// warm, with new pools and the tag sets known, as a long-running system
// sees them. The target is on the warm ratio; the cold one is printed too.
// tagsWarmRuns: a warm run lasts two to four seconds, and one run's rate
// moved by a quarter with the machine (the ratio over 37-70% in eight runs
// of one build); the warm figures are the median of this many runs.
const tagsWarmRuns = 3

func (r *Runner) tagsScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	// At least two jobs, so that the many-tag-sets case has two sets to
	// compare with one.
	n := max(r.cfg.Jobs/2, 2)
	rates := map[string][]float64{}
	// Job i is in tag set (i mod sets)+1, so fewer jobs than sets use only
	// as many sets as jobs.
	for _, sets := range []int{1, max(min(r.cfg.TagSets, 1<<tagKeys-1, n), 2)} {
		r.progress("tags, fsync %s, %d jobs over %d tag sets, %d pools, cold then warm", fsync, n, sets, TagPools)
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			params := make([]statemachine.SubmitParams, n)
			for i := range params {
				// The sets are spread evenly over the submits, as jobs of
				// many tenants.
				params[i] = statemachine.SubmitParams{Type: r.jobType("tags"), Tags: tagSet(i%sets + 1)}
			}
			for _, phase := range []string{"cold", "warm"} {
				runs, note := 1, ""
				if phase == "warm" {
					runs, note = tagsWarmRuns, fmt.Sprintf("; warm: the median of %d runs", tagsWarmRuns)
				}
				var got []float64
				for range runs {
					run, err := r.throughput(ctx, s, params, r.tagPools(), ModeBatch, false)
					if err != nil {
						return fmt.Errorf("%d tag sets, %s: %w", sets, phase, err)
					}
					got = append(got, run.rate)
				}
				rate := median(got)
				rates[phase] = append(rates[phase], rate)
				r.add(Figure{Scenario: ScenarioTags, Fsync: fsync, Metric: fmt.Sprintf("jobs_per_s_%d_tagsets_%s", sets, phase), Value: rate,
					Unit: "jobs/s", Note: fmt.Sprintf("%d jobs, batch submit, %d pools of %d%s", n, TagPools, max(r.cfg.Workers/TagPools, 1), note)})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	r.add(Figure{Scenario: ScenarioTags, Fsync: fsync, Metric: "many_over_one_tagset_pct", Value: rates["warm"][1] / rates["warm"][0] * 100,
		Unit: "%", Target: 50, Higher: true, Note: "warm: the tag sets known"})
	r.add(Figure{Scenario: ScenarioTags, Fsync: fsync, Metric: "many_over_one_tagset_cold_pct", Value: rates["cold"][1] / rates["cold"][0] * 100,
		Unit: "%", Note: "cold: every tag set new"})
	return nil
}

// opsScenario: bulk cancel of pending jobs, projection rebuild, and hang
// detection of dead jobs, on the default durability.
func (r *Runner) opsScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	hangAfter, every := time.Second, 250*time.Millisecond
	opts := server.Options{HangAfter: hangAfter, DetectEvery: every}
	r.progress("ops, fsync %s: bulk cancel of %d, rebuild, hang detection of %d", fsync, r.cfg.OpsJobs, r.cfg.HangJobs)
	return r.withServer(ctx, fsync, opts, func(s *server.Server) error {
		n := r.cfg.OpsJobs
		opsType := r.jobType("ops")
		params := jobs(n, statemachine.SubmitParams{Type: opsType, Meta: map[string]string{"template_version": "v1"}})
		if err := submitAll(ctx, s.Machine, params, r.cfg.Producers, ModeBatch, nil); err != nil {
			return err
		}
		pending := projector.Filter{Type: opsType, States: []statemachine.State{statemachine.StatePending}}
		if err := waitListed(ctx, s.Reader, pending, n, r.cfg.Stall); err != nil {
			return err
		}
		start := time.Now()
		res, err := maintenance.CancelPending(ctx, s.Reader, s.Machine, projector.Filter{Type: opsType}, maintenance.BulkCancelOptions{Reason: "bench"})
		if err != nil {
			return fmt.Errorf("bulk cancel: %w", err)
		}
		if len(res.Canceled) != n {
			return fmt.Errorf("bulk cancel canceled %d of %d (skipped %d)", len(res.Canceled), n, len(res.Skipped))
		}
		r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "bulk_cancel_jobs_per_s", Value: float64(n) / time.Since(start).Seconds(),
			Unit: "jobs/s", Target: 5000, Higher: true, CeilingMetric: CeilingBatched, Note: fmt.Sprintf("%d pending jobs", n)})

		// A second projector rebuilds the views from the whole log while the
		// server's own keeps running, as an operator's rebuild would. On a
		// shared server it rebuilds a bucket of its own, empty at first and
		// removed afterwards: the operator's views are not the bench's to
		// rewrite.
		rcfg := projector.Config{Durable: "bench_rebuild", HeartbeatDurable: "bench_rebuild_hb", Logger: r.logger}
		if r.cfg.NATSURL != "" {
			rcfg.Bucket = "bench_views_" + r.run
			defer func() { _ = s.JS.DeleteKeyValue(context.WithoutCancel(ctx), rcfg.Bucket) }()
		}
		other, err := projector.New(s.JS, s.Log, s.Heartbeat, rcfg)
		if err != nil {
			return fmt.Errorf("new projector: %w", err)
		}
		stats, err := other.Rebuild(ctx)
		if err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "rebuild_events_per_s", Value: stats.EventsPerSec, Unit: "events/s",
			Target: 50_000, Higher: true, Note: fmt.Sprintf("%d events of %d jobs in %.2fs; %s", stats.Events, stats.Jobs, stats.Seconds, viewsWritten(stats.Written, stats.Jobs))})

		if r.cfg.NATSURL != "" {
			// That server's detector holds the lead with its own hang-after;
			// one of the bench's, with a hang-after of a second, would fail
			// the server's own running jobs.
			r.progress("ops: hang detection skipped on an external server")
			return nil
		}
		return r.hangDetection(ctx, s, fsync, hangAfter, every)
	})
}

// viewsWritten says how many of a rebuild's views differed from the log: on
// the embedded server most are current, and on --server, where the rebuild
// fills a bucket of its own, none is.
func viewsWritten(written, jobs int) string {
	if written == jobs && jobs > 0 {
		return "every view written, none was current"
	}
	return fmt.Sprintf("%d views written, the others were current", written)
}

// hangDetection: jobs acquired by a worker that then says nothing, until the
// detector has failed them all.
func (r *Runner) hangDetection(ctx context.Context, s *server.Server, fsync string, hangAfter, every time.Duration) error {
	dead := r.cfg.HangJobs
	var snapshots []statemachine.Job
	for _, res := range s.Machine.SubmitMany(ctx, jobs(dead, statemachine.SubmitParams{Type: r.jobType("dead"), MaxAttempts: 1})) {
		if res.Err != nil {
			return fmt.Errorf("submit: %w", res.Err)
		}
		snapshots = append(snapshots, res.Job)
	}
	// Acquired concurrently, as a crowd of workers would, then abandoned.
	errs := make(chan error, len(snapshots))
	sem := make(chan struct{}, 256)
	for _, j := range snapshots {
		sem <- struct{}{}
		go func(j statemachine.Job) {
			defer func() { <-sem }()
			_, err := s.Machine.AcquireFrom(ctx, j, "dead-worker")
			errs <- err
		}(j)
	}
	for range snapshots {
		if err := <-errs; err != nil {
			return fmt.Errorf("acquire: %w", err)
		}
	}
	acquired := time.Now()
	failed := projector.Filter{Type: r.jobType("dead"), States: []statemachine.State{statemachine.StateFailed}}
	if err := waitListed(ctx, s.Reader, failed, dead, r.cfg.Stall+hangAfter); err != nil {
		return err
	}
	// Eligible: the last acquire is hangAfter old.
	took := time.Since(acquired) - hangAfter
	r.add(Figure{Scenario: ScenarioOps, Fsync: fsync, Metric: "hang_detect_all_failed_s", Value: took.Seconds(), Unit: "s",
		Note: fmt.Sprintf("%d dead jobs, from all eligible (hang-after %s) to all failed; passes every %s, at most %d jobs each",
			dead, hangAfter, every, maintenance.MaxPerPassDefault)})
	return nil
}

// waitListed waits until the views show n jobs matching the filter.
func waitListed(ctx context.Context, reader *projector.Reader, f projector.Filter, n int, stall time.Duration) error {
	last, since := -1, time.Now()
	for {
		page, err := reader.List(ctx, f)
		if err != nil {
			return fmt.Errorf("list views: %w", err)
		}
		got := len(page.Views)
		if got >= n {
			return nil
		}
		if got != last {
			last, since = got, time.Now()
		} else if time.Since(since) > stall {
			return fmt.Errorf("stalled: %d of %d jobs listed", got, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// memoryTarget: the most server RSS with 100,000 pending jobs, MiB.
const memoryTarget = 512

// memoryScenario: the process's memory while it holds a large backlog of
// pending jobs, enqueued and projected.
func (r *Runner) memoryScenario(ctx context.Context) error {
	fsync := r.cfg.Fsyncs[0]
	n := r.cfg.BacklogLarge
	r.progress("memory, fsync %s, %d pending jobs", fsync, n)
	return r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
		// A batch's jobs at a time: the figure is the server's, and a list
		// of every job the bench submits would add a client's 11 MB to it.
		for i := 0; i < n; i += SubmitBatch {
			batch := jobs(min(SubmitBatch, n-i), statemachine.SubmitParams{Type: r.jobType("memory")})
			if err := submitAll(ctx, s.Machine, batch, r.cfg.Producers, ModeBatch, nil); err != nil {
				return err
			}
		}
		if err := waitQueued(ctx, s, uint64(n), r.cfg.Stall); err != nil {
			return err
		}
		if err := waitProjected(ctx, s, r.cfg.Stall); err != nil {
			return err
		}
		note := "whole process: embedded server, projector, enqueuer and the client that submitted"
		// The target is for the backlog; at another size (--smoke,
		// --huge) there is none to compare with.
		target := 0.0
		if n == BacklogLargeDefault {
			target = memoryTarget
		}
		r.add(Figure{Scenario: ScenarioMemory, Fsync: fsync, Metric: fmt.Sprintf("peak_rss_mib_%d_pending", n), Value: peakRSS(),
			Unit: "MiB", Target: target, Note: note})
		settle()
		r.add(Figure{Scenario: ScenarioMemory, Fsync: fsync, Metric: fmt.Sprintf("rss_mib_%d_pending_idle", n), Value: rss(),
			Unit: "MiB", Target: target, Note: note + ", after a GC, idle"})
		return nil
	})
}

// waitProjected waits until the log's consumers (projector, enqueuer) have
// nothing left to process.
func waitProjected(ctx context.Context, s *server.Server, within time.Duration) error {
	return waitCaughtUp(ctx, s.JS, s.Log.Stream(), within, 0)
}

// waitCaughtUp waits until the log's consumers (projector, enqueuer) have
// nothing left; another tool's consumer on the log is not waited for. With a
// stall, it gives up once they have not moved for that long: a consumer that
// no running process pulls from (the bench's own server stopped, no jetjob
// server on that NATS) holds its unacknowledged messages for its AckWait.
func waitCaughtUp(ctx context.Context, js jetstream.JetStream, stream string, within, stall time.Duration) error {
	deadline := time.Now().Add(within)
	last, since := uint64(0), time.Now()
	for {
		var behind uint64
		for _, name := range []string{projector.DurableDefault, workers.EnqueuerDurableDefault} {
			cons, err := js.Consumer(ctx, stream, name)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("log consumer %s: %w", name, err)
			}
			info := cons.CachedInfo()
			behind += info.NumPending + uint64(info.NumAckPending)
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("log consumers still %d messages behind after %s", behind, within)
		}
		if behind != last {
			last, since = behind, time.Now()
		} else if stall > 0 && time.Since(since) > stall {
			return fmt.Errorf("log consumers %d messages behind, none processed in %s", behind, stall)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
