package maintenance

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Purger defaults.
const (
	RetainFinishedDefault = 7 * 24 * time.Hour
	PurgeEveryDefault     = time.Minute
)

// PurgerConfig configures a Purger. A zero field takes its default; a
// negative one is refused with ErrInvalidConfig, except QueueIdleAfter's,
// which keeps every queue.
type PurgerConfig struct {
	// OlderThan: finished jobs that completed longer ago are purged. Default RetainFinishedDefault.
	OlderThan time.Duration
	// Every is the pause between background passes. Default
	// PurgeEveryDefault. After a pass that took longer than a tenth of it
	// to find its jobs, the pause is ten times that.
	Every time.Duration
	// QueueIdleAfter: background passes remove the queues (one per job
	// type, tag set and priority) that hold no job and have not been used
	// for this long (workers.Leftovers.ForgetIdleQueues), looking at most
	// every quarter of it. Default workers.QueueIdleAfterDefault; negative
	// keeps every queue.
	QueueIdleAfter time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *PurgerConfig) validate() error {
	// QueueIdleAfter's negative alone keeps every queue; theirs are refused.
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "retention", &c.OlderThan, RetainFinishedDefault),
		config.Default(ErrInvalidConfig, "pause between passes", &c.Every, PurgeEveryDefault),
	); err != nil {
		return err
	}
	if c.QueueIdleAfter == 0 {
		c.QueueIdleAfter = workers.QueueIdleAfterDefault
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Purger deletes finished jobs past their retention: events, view, logs,
// heartbeat and any queue or timer message left behind, together. Nothing
// unfinished is ever purged: the decision is taken on the job folded from
// its log, and a finished job never changes.
type Purger struct {
	cfg    PurgerConfig
	reader *projector.Reader
	m      *statemachine.Machine
	hb     *events.Heartbeats
	logs   *workers.Logs
	left   *workers.Leftovers
	leader *Leadership
	logger *zap.Logger
	// fullPass: the next pass finds its jobs in the views, not at the head
	// of the log (see Purge); passes counts the passes.
	fullPass atomic.Bool
	passes   atomic.Int64
	// lastScan is how long the last pass took to find its jobs.
	lastScan atomic.Int64
	// queuesSwept is when a background pass last looked for idle queues.
	queuesSwept time.Time
	// passBudget bounds how long a background pass purges (Every): the
	// jobs left go to the next pass, and the idle queues are removed
	// between them, not after a backlog of hours of purges.
	passBudget time.Duration

	svc ledService
}

// NewPurger returns a purger; Start runs it in the background, taking turns
// by leader, Purge on demand. Leader may be nil for a purger that is never
// started.
func NewPurger(reader *projector.Reader, m *statemachine.Machine, hb *events.Heartbeats, logs *workers.Logs, left *workers.Leftovers, leader *Leadership, cfg PurgerConfig) (*Purger, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if reader == nil || m == nil || hb == nil || logs == nil || left == nil {
		return nil, fmt.Errorf("%w: reader, machine, heartbeats, logs and leftovers are required", ErrInvalidConfig)
	}
	p := &Purger{cfg: cfg, reader: reader, m: m, hb: hb, logs: logs, left: left, leader: leader, logger: logging.OrNop(cfg.Logger, "purger"),
		passBudget: cfg.Every}
	p.fullPass.Store(true)
	return p, nil
}

// PurgeResult lists the purged job IDs.
type PurgeResult struct {
	Purged []string `json:"purged"`
	// DryRun: Purged lists what WouldPurge found; nothing was purged.
	DryRun bool `json:"dry_run,omitempty"`
}

// finishedStates checks a purge's arguments: an age of 0 or more, and
// finished states (none means all of them).
func finishedStates(olderThan time.Duration, states []statemachine.State) ([]statemachine.State, error) {
	if olderThan < 0 {
		// The cutoff would be in the future: every finished job would go.
		return nil, fmt.Errorf("%w: purge of jobs finished %s ago: expected an age of 0 or more", statemachine.ErrInvalid, olderThan)
	}
	if len(states) == 0 {
		return []statemachine.State{statemachine.StateSucceeded, statemachine.StateFailed, statemachine.StateCanceled}, nil
	}
	for _, s := range states {
		if !s.Finished() {
			return nil, fmt.Errorf("%w: purge of %s jobs: only finished jobs (succeeded, failed, canceled) are purged", statemachine.ErrInvalid, s)
		}
	}
	return states, nil
}

// WouldPurge lists, and purges none of, the jobs that Purge with the same
// arguments would purge now: those whose views say they finished, in one
// of the states, more than olderThan ago. (Purge checks each job's history
// again before it purges it.) Like Purge, it reads the views as they are.
func (p *Purger) WouldPurge(ctx context.Context, olderThan time.Duration, states []statemachine.State) (PurgeResult, error) {
	res := PurgeResult{Purged: []string{}, DryRun: true}
	states, err := finishedStates(olderThan, states)
	if err != nil {
		return res, err
	}
	ids, err := p.finishedViews(ctx, p.cfg.Now().Add(-olderThan), states)
	if err != nil {
		return res, err
	}
	res.Purged = append(res.Purged, ids...)
	return res, nil
}

// Purge deletes the finished jobs (of the given states, all finished states
// when none) that completed more than olderThan ago.
//
// It finds them in the views as they are, without waiting for the views to
// show what the log holds (as CancelPending does): a job finished a moment
// before may be left for a later purge. To include it, wait first with
// projector.CaughtUp, as `jetjob purge` does.
//
// A purger's first pass, the first after it took the leadership, the pass
// after one that failed, and every tenth pass list every
// finished view: a purge cut short (here, by another server, or by a
// `jetjob purge` killed half way) may have left a view whose history is
// gone. Every other pass takes its jobs from the head of the log, the jobs
// with an event stored before the cutoff, so that it costs what is to
// purge rather than what is kept (a week of jobs, by default).
func (p *Purger) Purge(ctx context.Context, olderThan time.Duration, states []statemachine.State) (PurgeResult, error) {
	res, _, err := p.purge(ctx, olderThan, states, 0)
	return res, err
}

// purge is Purge that purges for at most budget once it found its jobs
// (0: no limit), starting at least purgeWidth of them, and reports whether
// it left jobs for that reason.
func (p *Purger) purge(ctx context.Context, olderThan time.Duration, states []statemachine.State, budget time.Duration) (_ PurgeResult, more bool, err error) {
	res := PurgeResult{Purged: []string{}}
	if states, err = finishedStates(olderThan, states); err != nil {
		return res, false, err
	}
	cutoff := p.cfg.Now().Add(-olderThan)
	// Taken before any history is purged: a job submitted again under a
	// purged job's key (the same ID) can only write views, lines and beats
	// after its history is gone, so after these marks.
	marks, err := takeMarks(ctx, p.reader, p.logs, p.hb)
	if err != nil {
		return res, false, fmt.Errorf("purge: %w", err)
	}
	full := p.fullPass.Load() || p.passes.Add(1)%purgeFullEvery == 0
	var ids []string
	began := time.Now()
	if full {
		ids, err = p.finishedViews(ctx, cutoff, states)
	} else if ids, err = p.m.Log().JobsStoredBefore(ctx, cutoff); err != nil {
		err = fmt.Errorf("purge: %w", err)
	}
	p.lastScan.Store(int64(time.Since(began)))
	if err != nil {
		return res, false, err
	}
	var feedUntil time.Time
	if budget != 0 {
		// From here: a listing longer than the budget (a large store, a
		// short --purge-every) must not leave every pass purging nothing.
		feedUntil = time.Now().Add(budget)
	}
	res.Purged, more, err = p.purgeAll(ctx, ids, cutoff, states, marks, feedUntil)
	if err != nil {
		// A job may have lost its history but not yet its view, which only
		// the views show.
		p.fullPass.Store(true)
		return res, more, err
	}
	if full && !more {
		p.fullPass.Store(false)
	}
	return res, more, nil
}

// finishedViews lists the jobs whose views say they finished before cutoff,
// in one of the states.
func (p *Purger) finishedViews(ctx context.Context, cutoff time.Time, states []statemachine.State) ([]string, error) {
	page, err := p.reader.List(ctx, projector.Filter{States: states})
	if err != nil {
		return nil, fmt.Errorf("purge: list finished jobs: %w", err)
	}
	var ids []string
	for _, v := range page.Views {
		if v.CompletedAt != nil && !v.CompletedAt.After(cutoff) {
			ids = append(ids, v.ID)
		}
	}
	return ids, nil
}

// purgeFullEvery: every this many passes, a pass lists the finished views
// (every tenth in Purge's doc).
const purgeFullEvery = 10

// purgeWidth is how many jobs a pass purges at once: each takes several
// round trips, one after another.
const purgeWidth = 16

// purgeAll purges the jobs that qualify, purgeWidth at a time, and returns
// those it purged, in the order given; it stops at the first error, and
// starts no job after feedUntil (zero: no limit) but the first purgeWidth,
// reporting then that it left some.
func (p *Purger) purgeAll(ctx context.Context, ids []string, cutoff time.Time, states []statemachine.State, marks purgeMarks, feedUntil time.Time) (_ []string, more bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		purged = make([]bool, len(ids))
		next   = make(chan int)
		wg     sync.WaitGroup
		once   sync.Once
		first  error
	)
	for range min(purgeWidth, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ok, err := p.purgeJob(ctx, ids[i], cutoff, states, marks)
				if err != nil {
					once.Do(func() { first = err; cancel() })
					continue
				}
				purged[i] = ok
			}
		}()
	}
feed:
	for i := range ids {
		if i >= purgeWidth && !feedUntil.IsZero() && !time.Now().Before(feedUntil) {
			more = true
			break
		}
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	out := []string{}
	for i, ok := range purged {
		if ok {
			out = append(out, ids[i])
		}
	}
	return out, more, first
}

// purgeMarks bound what a pass deletes of the views, log lines and beats.
type purgeMarks struct{ view, logs, beats uint64 }

func takeMarks(ctx context.Context, reader *projector.Reader, logs *workers.Logs, hb *events.Heartbeats) (purgeMarks, error) {
	var marks purgeMarks
	if err := askAgain(ctx, func(ctx context.Context) (err error) { marks.view, err = reader.Mark(ctx); return err }); err != nil {
		return marks, err
	}
	if err := askAgain(ctx, func(ctx context.Context) (err error) { marks.logs, err = logs.Mark(ctx); return err }); err != nil {
		return marks, err
	}
	err := askAgain(ctx, func(ctx context.Context) (err error) { marks.beats, err = hb.Mark(ctx); return err })
	return marks, err
}

// forgetTraces deletes what a job leaves beside its history, up to marks:
// its log lines, its beats, and its view last, so that a crash half way
// leaves a view that is found again.
func forgetTraces(ctx context.Context, reader *projector.Reader, logs *workers.Logs, hb *events.Heartbeats, id string, marks purgeMarks) error {
	if err := askAgain(ctx, func(ctx context.Context) error { return logs.Forget(ctx, id, marks.logs) }); err != nil {
		return err
	}
	if err := askAgain(ctx, func(ctx context.Context) error { return hb.Forget(ctx, id, marks.beats) }); err != nil {
		return err
	}
	return askAgain(ctx, func(ctx context.Context) error { return reader.Forget(ctx, id, marks.view) })
}

// purgeTry bounds each try of a purge's request: one sent to a stream
// leader that has just died is never answered.
const purgeTry = 5 * time.Second

// askAgain makes one of a purge's requests, each safe to repeat (a mark
// reads, and every delete is bounded by a sequence), asking again while a
// NATS cluster elects a leader: `jetjob purge` on a 3-node cluster that
// lost one node failed half way ("forget view of job ...: context deadline
// exceeded") with the quorum still there.
func askAgain(ctx context.Context, fn func(context.Context) error) error {
	return provision.UntilAnswered(ctx, provision.ElectionWaitDefault, purgeTry, fn)
}

// purgeJob re-checks the job on its log, then deletes its queue leftovers and
// history first and the view last, so that a crash half way leaves a view
// the next pass finds.
// The history is purged only up to the version checked, and the rest up to
// the pass's marks, so that a job submitted again under the same key keeps
// all of its own.
func (p *Purger) purgeJob(ctx context.Context, id string, cutoff time.Time, states []statemachine.State, marks purgeMarks) (bool, error) {
	job, err := p.m.Load(ctx, id)
	switch {
	case errors.Is(err, events.ErrNotFound):
		// History already gone: only leftovers remain.
	case err != nil:
		return false, fmt.Errorf("purge job %s: %w", id, err)
	case !job.State.Finished() || job.CompletedAt == nil || job.CompletedAt.After(cutoff) || !slices.Contains(states, job.State):
		return false, nil
	default:
		// Before the history: while it exists, nothing can enqueue or arm a
		// timer under this ID again.
		if err := askAgain(ctx, func(ctx context.Context) error { return p.left.Forget(ctx, job) }); err != nil {
			return false, fmt.Errorf("purge job %s: %w", id, err)
		}
		if err := askAgain(ctx, func(ctx context.Context) error { return p.m.Log().Purge(ctx, id, job.Version) }); err != nil {
			return false, err
		}
	}
	if err := forgetTraces(ctx, p.reader, p.logs, p.hb, id, marks); err != nil {
		return false, err
	}
	return true, nil
}

// Start runs passes in the background while this server leads, until Stop;
// ctx is not used past the call. Safe to call twice, and again after Stop.
func (p *Purger) Start(ctx context.Context) error {
	if p.leader == nil {
		return fmt.Errorf("%w: a purger made without a leadership purges on demand only", ErrInvalidConfig)
	}
	p.svc.start(ctx, p.leader, p.cfg.Every, p.logger, func(ctx context.Context, fresh bool) (time.Duration, error) {
		if fresh {
			// The last leader may have been cut short in a purge.
			p.fullPass.Store(true)
		}
		_, err := p.runOnce(ctx)
		return time.Duration(p.lastScan.Load()), err
	})
	return nil
}

// Stop ends the passes and gives up the leadership. Safe to call twice.
func (p *Purger) Stop() { p.svc.stop() }

func (p *Purger) runOnce(ctx context.Context) (PurgeResult, error) {
	res, more, err := p.purge(ctx, p.cfg.OlderThan, nil, p.passBudget)
	if len(res.Purged) > 0 || more {
		p.logger.Info("purged finished jobs", zap.Int("jobs", len(res.Purged)), zap.Duration("older_than", p.cfg.OlderThan),
			zap.Bool("more_next_pass", more))
	}
	// Also after a pass that failed: a job that cannot be purged must not
	// keep the idle queues (each a consumer) from being removed.
	return res, errors.Join(err, p.sweepQueues(ctx))
}

// sweepQueues removes the idle queues, at most every quarter of
// QueueIdleAfter. Passes run one at a time, so queuesSwept needs no lock.
func (p *Purger) sweepQueues(ctx context.Context) error {
	now := p.cfg.Now()
	if p.cfg.QueueIdleAfter < 0 || now.Sub(p.queuesSwept) < p.cfg.QueueIdleAfter/4 {
		return nil
	}
	forgotten, err := p.left.ForgetIdleQueues(ctx, p.cfg.QueueIdleAfter, now)
	if len(forgotten) > 0 {
		p.logger.Info("removed idle queues", zap.Int("queues", len(forgotten)), zap.Duration("idle_after", p.cfg.QueueIdleAfter))
	}
	if err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	p.queuesSwept = now
	return nil
}
