package maintenance

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

// BulkCancelConcurrencyDefault is how many cancels are in flight at once; the
// event log coalesces them into atomic batches.
const BulkCancelConcurrencyDefault = 512

// BulkCancelViewsWaitDefault bounds how long a bulk cancel waits for the
// views to show every event the log held when it was called.
const BulkCancelViewsWaitDefault = 10 * time.Second

// Skipped is a job that matched but was not canceled, and why.
type Skipped struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// BulkCancelResult lists what a bulk cancel did, each list in job ID order.
type BulkCancelResult struct {
	Canceled []string  `json:"canceled"`
	Skipped  []Skipped `json:"skipped"`
	// DryRun: Canceled lists what would have been canceled; nothing was.
	DryRun bool `json:"dry_run,omitempty"`
	// ViewsBehind: the views had not shown every job the log held when
	// the cancel began, within BulkCancelOptions.ViewsWait (is a server
	// running?), or their projector's consumer (projector.DurableDefault)
	// could not be read; a job submitted just before may be left pending.
	ViewsBehind bool `json:"views_behind,omitempty"`
	// Failed counts the skipped jobs whose cancel failed (NATS gone, the
	// caller's ctx ended) rather than being refused by the job's state:
	// those may or may not be canceled, and CancelPending returns an error
	// with the result when there are any.
	Failed int `json:"failed,omitempty"`
	// NotTried counts the matching jobs left alone because ctx ended
	// before their turn.
	NotTried int `json:"not_tried,omitempty"`
}

// BulkCancelOptions tunes CancelPending.
type BulkCancelOptions struct {
	// Reason is recorded with each cancel (the jobs' CancelReason); at most
	// statemachine.CancelReasonLimit bytes of one line. Default none.
	Reason string
	// DryRun lists what would be canceled and changes nothing.
	DryRun bool
	// Concurrency: how many cancels are in flight at once. Default
	// BulkCancelConcurrencyDefault; a negative is refused.
	Concurrency int
	// ViewsWait bounds the wait for the views to show every job the log
	// held when the cancel began (default BulkCancelViewsWaitDefault;
	// negative: no wait, for a caller that waited itself).
	ViewsWait time.Duration
}

// CancelPending cancels every pending or scheduled job that matches the
// filter and that no worker has taken yet (f.States may narrow it to one of
// the two; another state is refused): a job
// waiting for a retry, or handed back by a worker, is skipped, since its
// earlier attempt may have done part of the work. Each
// cancel is appended with the job's expected sequence, so a job acquired in
// the meantime is skipped, not canceled; a failure on one job is reported
// and does not stop the others. f.Limit caps the jobs it tries to cancel
// (0: no cap); the jobs it skips because a worker took them before do not
// count against it. A zero filter matches every job: it cancels every
// pending job (the CLI asks for --all to do that). It decides on the
// views, once they show every event the log held when it was called, so
// that a job submitted just before is not missed (see ViewsWait).
// When some cancels failed (Failed), or ctx ended before every job was
// tried (NotTried), it returns the result together with an error, so that
// a caller who checks only the error does not take them for canceled.
func CancelPending(ctx context.Context, r *projector.Reader, m *statemachine.Machine, f projector.Filter, opts BulkCancelOptions) (BulkCancelResult, error) {
	if r == nil || m == nil {
		return BulkCancelResult{}, fmt.Errorf("%w: bulk cancel: reader and machine are required", ErrInvalidConfig)
	}
	// Checked before anything is dropped: a misspelt state left out would
	// widen the cancel to every pending job.
	if err := f.Validate(); err != nil {
		return BulkCancelResult{}, err
	}
	for _, s := range f.States {
		if s != statemachine.StatePending && s != statemachine.StateScheduled {
			return BulkCancelResult{}, fmt.Errorf("%w: bulk cancel of %s jobs, expected pending or scheduled", statemachine.ErrInvalid, s)
		}
	}
	if err := statemachine.ValidateCancelReason(opts.Reason); err != nil {
		return BulkCancelResult{}, err
	}
	if err := config.Default(ErrInvalidConfig, "concurrency", &opts.Concurrency, BulkCancelConcurrencyDefault); err != nil {
		return BulkCancelResult{}, fmt.Errorf("bulk cancel: %w", err)
	}
	if len(f.States) == 0 {
		f.States = []statemachine.State{statemachine.StatePending, statemachine.StateScheduled}
	}
	res := BulkCancelResult{Canceled: []string{}, Skipped: []Skipped{}, DryRun: opts.DryRun}
	if opts.ViewsWait >= 0 {
		wctx, cancel := context.WithTimeout(ctx, cmp.Or(opts.ViewsWait, BulkCancelViewsWaitDefault))
		// Not an error: a projector of another consumer name, or one made
		// again, is not waited for, and the cancel goes on as it would
		// once the wait was over.
		caught, err := r.CaughtUp(wctx, m.Log().Stream())
		cancel()
		if ctx.Err() != nil {
			return res, fmt.Errorf("bulk cancel: %w", ctx.Err())
		}
		res.ViewsBehind = err != nil || !caught
	}
	var mu sync.Mutex
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	// One pass over the views: a paged listing would read the bucket once
	// per page. The limit counts the jobs tried, not the ones skipped.
	limit := f.Limit
	f.Limit = 0
	page, err := r.List(ctx, f)
	if err != nil {
		return res, fmt.Errorf("bulk cancel: list pending jobs: %w", err)
	}
	tried := 0
	var firstErr error
	for i, v := range page.Views {
		if limit > 0 && tried == limit {
			break
		}
		if ctx.Err() != nil {
			// Each cancel left would fail on the ended ctx and be listed
			// as skipped: not tried is what happened to them.
			res.NotTried = len(page.Views) - i
			if limit > 0 {
				res.NotTried = min(res.NotTried, limit-tried)
			}
			break
		}
		if v.StartedAt != nil {
			// The decider refuses it too; skipped here so a dry run agrees.
			res.Skipped = append(res.Skipped, Skipped{ID: v.ID, Reason: skipTakenBefore})
			continue
		}
		tried++
		if opts.DryRun {
			res.Canceled = append(res.Canceled, v.ID)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(v projector.View) {
			defer func() { <-sem; wg.Done() }()
			_, err := m.CancelPendingFrom(ctx, v.Job(), opts.Reason)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Skipped = append(res.Skipped, Skipped{ID: v.ID, Reason: skipReason(err)})
				if !refusedByState(err) {
					res.Failed++
					firstErr = cmp.Or(firstErr, err)
				}
				return
			}
			res.Canceled = append(res.Canceled, v.ID)
		}(v)
	}
	wg.Wait()
	// In ID order, as the views were listed and as a dry run lists them,
	// not in the order the cancels finished.
	slices.Sort(res.Canceled)
	slices.SortFunc(res.Skipped, func(a, b Skipped) int { return strings.Compare(a.ID, b.ID) })
	switch {
	case res.NotTried > 0:
		return res, fmt.Errorf("bulk cancel stopped: %d canceled, %d failed (they may be canceled), %d not tried: %w", len(res.Canceled), res.Failed, res.NotTried, ctx.Err())
	case res.Failed > 0:
		return res, fmt.Errorf("bulk cancel: %d of %d cancels failed, those jobs may or may not be canceled (each is listed as skipped with its error): %w", res.Failed, tried, firstErr)
	}
	return res, nil
}

// refusedByState reports whether a cancel was refused because of the job
// (taken, moved on, gone), not because it could not be made.
func refusedByState(err error) bool {
	var conflict *statemachine.ConflictError
	var illegal *statemachine.IllegalTransitionError
	return errors.Is(err, statemachine.ErrTakenBefore) || errors.As(err, &conflict) || errors.As(err, &illegal) || errors.Is(err, statemachine.ErrNotFound)
}

// skipTakenBefore is the reason given for a job that waits for a retry or
// was handed back: a worker ran it, so it may have done part of its work.
const skipTakenBefore = "a worker took it before (cancel it by ID)"

func skipReason(err error) string {
	var conflict *statemachine.ConflictError
	var illegal *statemachine.IllegalTransitionError
	switch {
	case errors.Is(err, statemachine.ErrTakenBefore):
		return skipTakenBefore
	case errors.As(err, &conflict):
		return fmt.Sprintf("changed meanwhile, now %s", conflict.Job.State)
	case errors.As(err, &illegal):
		return fmt.Sprintf("now %s", illegal.State)
	}
	return err.Error()
}
