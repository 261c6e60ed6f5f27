package maintenance

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

// BulkCancelConcurrencyDefault is how many cancels are in flight at once; the
// event log coalesces them into atomic batches.
const BulkCancelConcurrencyDefault = 64

// Skipped is a job that matched but was not canceled, and why.
type Skipped struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// BulkCancelResult lists what a bulk cancel did.
type BulkCancelResult struct {
	Canceled []string  `json:"canceled"`
	Skipped  []Skipped `json:"skipped"`
}

// BulkCancelOptions tunes CancelPending.
type BulkCancelOptions struct {
	Reason string
	// DryRun lists what would be canceled and changes nothing.
	DryRun bool
	// Concurrency: see BulkCancelConcurrencyDefault.
	Concurrency int
}

// CancelPending cancels every pending or scheduled job that matches the
// filter (its States are ignored) and that no worker has taken yet. Each
// cancel is appended with the job's expected sequence, so a job acquired in
// the meantime is skipped, not canceled; a failure on one job is reported
// and does not stop the others.
func CancelPending(ctx context.Context, r *projector.Reader, m *statemachine.Machine, f projector.Filter, opts BulkCancelOptions) (BulkCancelResult, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = BulkCancelConcurrencyDefault
	}
	f.States = []statemachine.State{statemachine.StatePending, statemachine.StateScheduled}
	limit := f.Limit
	f.Limit = 1000
	res := BulkCancelResult{Canceled: []string{}, Skipped: []Skipped{}}
	var mu sync.Mutex
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	seen := 0
	for {
		page, err := r.List(ctx, f)
		if err != nil {
			wg.Wait()
			return res, fmt.Errorf("bulk cancel: list pending jobs: %w", err)
		}
		for _, v := range page.Views {
			if limit > 0 && seen >= limit {
				break
			}
			seen++
			if opts.DryRun {
				res.Canceled = append(res.Canceled, v.ID)
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func(id string) {
				defer func() { <-sem; wg.Done() }()
				_, err := m.CancelPending(ctx, id, opts.Reason)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					res.Skipped = append(res.Skipped, Skipped{ID: id, Reason: skipReason(err)})
					return
				}
				res.Canceled = append(res.Canceled, id)
			}(v.ID)
		}
		if page.Next == "" || (limit > 0 && seen >= limit) {
			break
		}
		f.After = page.Next
	}
	wg.Wait()
	return res, nil
}

func skipReason(err error) string {
	var conflict *statemachine.ConflictError
	var illegal *statemachine.IllegalTransitionError
	switch {
	case errors.As(err, &conflict):
		return fmt.Sprintf("changed meanwhile, now %s", conflict.Job.State)
	case errors.As(err, &illegal):
		return fmt.Sprintf("now %s", illegal.State)
	}
	return err.Error()
}
