package maintenance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Purger defaults.
const (
	RetainFinishedDefault = 7 * 24 * time.Hour
	PurgeEveryDefault     = time.Minute
)

// PurgerConfig configures a Purger.
type PurgerConfig struct {
	// OlderThan: finished jobs that completed longer ago are purged. Default RetainFinishedDefault.
	OlderThan time.Duration
	// Every is the pause between background passes. Default PurgeEveryDefault.
	Every time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *PurgerConfig) validate() error {
	if c.OlderThan == 0 {
		c.OlderThan = RetainFinishedDefault
	}
	if c.OlderThan < 0 {
		return fmt.Errorf("%w: negative retention %s", ErrInvalidConfig, c.OlderThan)
	}
	if c.Every <= 0 {
		c.Every = PurgeEveryDefault
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

	svc ledService
}

// NewPurger returns a purger; Start runs it in the background, Purge on demand.
func NewPurger(reader *projector.Reader, m *statemachine.Machine, hb *events.Heartbeats, logs *workers.Logs, left *workers.Leftovers, leader *Leadership, cfg PurgerConfig) (*Purger, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Purger{cfg: cfg, reader: reader, m: m, hb: hb, logs: logs, left: left, leader: leader, logger: logging.OrNop(cfg.Logger, "purger")}, nil
}

// PurgeResult lists the purged job IDs.
type PurgeResult struct {
	Purged []string `json:"purged"`
}

// Purge deletes the finished jobs (of the given states, all finished states
// when none) that completed more than olderThan ago.
func (p *Purger) Purge(ctx context.Context, olderThan time.Duration, states []statemachine.State) (_ PurgeResult, err error) {
	res := PurgeResult{Purged: []string{}}
	if len(states) == 0 {
		states = []statemachine.State{statemachine.StateSucceeded, statemachine.StateFailed, statemachine.StateCanceled}
	}
	for _, s := range states {
		if !s.Finished() {
			return res, fmt.Errorf("%w: purge of %s jobs: only finished jobs (succeeded, failed, canceled) are purged", statemachine.ErrInvalid, s)
		}
	}
	cutoff := p.cfg.Now().Add(-olderThan)
	// Taken before any history is purged: a job submitted again under a
	// purged job's key (the same ID) can only write views, lines and beats
	// after its history is gone, so after these marks.
	var marks purgeMarks
	if marks.view, err = p.reader.Mark(ctx); err != nil {
		return res, fmt.Errorf("purge: %w", err)
	}
	if marks.logs, err = p.logs.Mark(ctx); err != nil {
		return res, fmt.Errorf("purge: %w", err)
	}
	if marks.beats, err = p.hb.Mark(ctx); err != nil {
		return res, fmt.Errorf("purge: %w", err)
	}
	page, err := p.reader.List(ctx, projector.Filter{States: states})
	if err != nil {
		return res, fmt.Errorf("purge: list finished jobs: %w", err)
	}
	for _, v := range page.Views {
		if v.CompletedAt == nil || v.CompletedAt.After(cutoff) {
			continue
		}
		ok, err := p.purgeJob(ctx, v.ID, cutoff, marks)
		if err != nil {
			return res, err
		}
		if ok {
			res.Purged = append(res.Purged, v.ID)
		}
	}
	return res, nil
}

// purgeMarks bound what a pass deletes of the views, log lines and beats.
type purgeMarks struct{ view, logs, beats uint64 }

// purgeJob re-checks the job on its log, then deletes its queue leftovers and
// history first and the view last, so that a crash half way leaves a view
// the next pass finds.
// The history is purged only up to the version checked, and the rest up to
// the pass's marks, so that a job submitted again under the same key keeps
// all of its own.
func (p *Purger) purgeJob(ctx context.Context, id string, cutoff time.Time, marks purgeMarks) (bool, error) {
	job, err := p.m.Load(ctx, id)
	switch {
	case errors.Is(err, events.ErrNotFound):
		// History already gone: only leftovers remain.
	case err != nil:
		return false, fmt.Errorf("purge job %s: %w", id, err)
	case !job.State.Finished() || job.CompletedAt == nil || job.CompletedAt.After(cutoff):
		return false, nil
	default:
		// Before the history: while it exists, nothing can enqueue or arm a
		// timer under this ID again.
		if err := p.left.Forget(ctx, job); err != nil {
			return false, fmt.Errorf("purge job %s: %w", id, err)
		}
		if err := p.m.Log().Purge(ctx, id, job.Version); err != nil {
			return false, err
		}
	}
	if err := p.logs.Forget(ctx, id, marks.logs); err != nil {
		return false, err
	}
	if err := p.hb.Forget(ctx, id, marks.beats); err != nil {
		return false, err
	}
	if err := p.reader.Forget(ctx, id, marks.view); err != nil {
		return false, err
	}
	return true, nil
}

// Start runs passes in the background while this server leads, until Stop;
// ctx is not used past the call. Safe to call twice, and again after Stop.
func (p *Purger) Start(ctx context.Context) error {
	p.svc.start(ctx, p.leader, p.cfg.Every, p.logger, func(ctx context.Context) error {
		_, err := p.runOnce(ctx)
		return err
	})
	return nil
}

// Stop ends the passes and gives up the leadership. Safe to call twice.
func (p *Purger) Stop() { p.svc.stop() }

func (p *Purger) runOnce(ctx context.Context) (PurgeResult, error) {
	res, err := p.Purge(ctx, p.cfg.OlderThan, nil)
	if len(res.Purged) > 0 {
		p.logger.Info("purged finished jobs", zap.Int("jobs", len(res.Purged)), zap.Duration("older_than", p.cfg.OlderThan))
	}
	return res, err
}
