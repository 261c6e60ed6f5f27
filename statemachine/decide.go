package statemachine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jetjob/jetjob/events"
)

// The deciders below are pure: given the job as it is and the time, they
// return the one event to append, or why the command is refused.

func decideSubmit(jobID string, p SubmitParams, now time.Time) (events.Event, error) {
	// Copies, and none for empty ones, as a decoded event would have: the
	// machine folds this value (events.DataAs), and the job it returns
	// must not share the caller's maps.
	d := events.Submitted{
		Type: p.Type, Tags: cloneLabels(p.Tags), Meta: cloneLabels(p.Meta),
		Priority: p.Priority, MaxAttempts: p.MaxAttempts, Key: p.Key,
	}
	if len(p.Payload) > 0 {
		d.Payload = bytes.Clone(p.Payload)
	}
	runAt := p.RunAt
	if p.Delay > 0 {
		if p.Delay >= RunAtLimit.Sub(now) {
			return events.Event{}, delayTooLong(p.Delay)
		}
		t := now.Add(p.Delay)
		runAt = &t
	}
	if runAt != nil && runAt.After(now) {
		t := runAt.UTC()
		d.RunAt = &t
	}
	if p.Backoff.Base > 0 || p.Backoff.Cap > 0 {
		d.Backoff = &events.Backoff{Base: p.Backoff.Base, Cap: p.Backoff.Cap}
	}
	return newEvent(jobID, events.TypeSubmitted, d, now)
}

func cloneLabels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func newEvent(jobID, typ string, data any, now time.Time) (events.Event, error) {
	ev, err := events.New(jobID, typ, data)
	ev.Time = now.UTC()
	return ev, err
}

func decideCancel(j Job, reason string, now time.Time) (events.Event, error) {
	if err := ValidateCancelReason(reason); err != nil {
		return events.Event{}, err
	}
	switch j.State {
	case StatePending, StateScheduled:
		return newEvent(j.ID, events.TypeCanceled, events.Canceled{Reason: reason, By: events.CanceledByOperator}, now)
	case StateRunning:
		return newEvent(j.ID, events.TypeCancelRequested, events.CancelRequested{Reason: reason}, now)
	}
	return events.Event{}, &IllegalTransitionError{JobID: j.ID, State: j.State, Transition: TransitionCancel}
}

// decidePendingCancel cancels only jobs that no worker has taken yet: a job
// waiting for a retry, or handed back by a worker, may have done part of its
// work, which a cancel would leave behind unnoticed (seed 001 cancels only
// jobs with no worker).
func decidePendingCancel(j Job, reason string, now time.Time) (events.Event, error) {
	if j.State != StatePending && j.State != StateScheduled {
		return events.Event{}, &IllegalTransitionError{JobID: j.ID, State: j.State, Transition: TransitionCancel}
	}
	if j.StartedAt != nil {
		return events.Event{}, fmt.Errorf("cancel job %s: %w", j.ID, ErrTakenBefore)
	}
	return decideCancel(j, reason, now)
}

// PromoteEarlyTolerance: a promote with no timer's run-at to compare is
// refused when the job's run-at is further ahead than this, which allows for
// the clocks of the NATS server (whose timers fire) and of this process to
// differ a little.
const PromoteEarlyTolerance = 2 * time.Second

// decidePromote makes a scheduled job pending when its time came. due is the
// run-at the firing timer was armed for: a timer armed for another one (an
// earlier schedule's, delivered again or replayed) is stale and does not
// promote the job, whose own timer is still to fire. Without due, the job's
// run-at itself must have come.
func decidePromote(j Job, due *time.Time, now time.Time) (events.Event, error) {
	if _, err := Next(j.ID, j.State, TransitionPromote); err != nil {
		return events.Event{}, err
	}
	if j.RunAt != nil {
		if due != nil && !due.Equal(*j.RunAt) {
			return events.Event{}, &NotDueError{JobID: j.ID, RunAt: *j.RunAt}
		}
		if due == nil && j.RunAt.After(now.Add(PromoteEarlyTolerance)) {
			return events.Event{}, &NotDueError{JobID: j.ID, RunAt: *j.RunAt}
		}
	}
	return newEvent(j.ID, events.TypePromoted, events.Promoted{}, now)
}

func decideAcquire(j Job, workerID string, now time.Time) (events.Event, error) {
	if err := ValidateWorkerID(workerID); err != nil {
		return events.Event{}, err
	}
	if _, err := Next(j.ID, j.State, TransitionAcquire); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeAcquired, events.Acquired{WorkerID: workerID, Attempt: j.Attempt + 1}, now)
}

// checkLease refuses a report from an attempt that no longer holds the job.
func checkLease(j Job, lease uint64) error {
	if lease == 0 || j.Lease != lease || (j.State != StateRunning && j.State != StateCanceling) {
		return &LeaseLostError{JobID: j.ID, Lease: lease, Job: j}
	}
	return nil
}

func decideSucceed(j Job, lease uint64, result json.RawMessage, now time.Time) (events.Event, error) {
	if err := checkLease(j, lease); err != nil {
		return events.Event{}, err
	}
	if _, err := Next(j.ID, j.State, TransitionSucceed); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeSucceeded, events.Succeeded{Lease: lease, Result: result}, now)
}

// Limits of the text a job's view shows, which is one NATS message: an
// attempt's error and its code are cut past them (a worker's report is
// never refused for its length, nor is a hand-back's reason, cut past
// CancelReasonLimit), a cancel reason over its limit is refused, and a
// worker ID must fit in its own.
const (
	ErrorTextLimit    = 4 << 10
	ErrorCodeLimit    = 128
	CancelReasonLimit = 1 << 10
	WorkerIDLimit     = 128
)

// ClipText keeps the first limit bytes of text, cut at a character, and
// says how much was left out.
func ClipText(text string, limit int) string {
	limit = max(limit, 0)
	if len(text) <= limit {
		return text
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(text[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d more bytes cut)", text[:cut], len(text)-cut)
}

// ValidateCancelReason checks that a cancel reason is one line of UTF-8
// text within CancelReasonLimit bytes.
func ValidateCancelReason(reason string) error {
	if len(reason) > CancelReasonLimit {
		return fmt.Errorf("%w: cancel reason is %d bytes, expected at most %d", ErrInvalid, len(reason), CancelReasonLimit)
	}
	// As the CLI refuses them: a reason is shown on one line of `get`
	// and `ls`, and an escape code in it would reach a terminal.
	if !utf8.ValidString(reason) || strings.ContainsFunc(reason, unicode.IsControl) {
		return fmt.Errorf("%w: cancel reason has a control character or is not UTF-8, expected one line of text", ErrInvalid)
	}
	return nil
}

// ValidateWorkerID checks that id is fit to name a worker in events and
// listings: one line of UTF-8 text, at most WorkerIDLimit bytes.
func ValidateWorkerID(id string) error {
	if id == "" || len(id) > WorkerIDLimit || !utf8.ValidString(id) || strings.ContainsFunc(id, unicode.IsControl) {
		return fmt.Errorf("%w: worker ID %s, expected 1-%d bytes of one-line UTF-8 text", ErrInvalid, QuoteShort(id), WorkerIDLimit)
	}
	return nil
}

// FailParams describes a failed attempt.
type FailParams struct {
	// Error is the attempt's error; past ErrorTextLimit bytes it is cut.
	Error string
	// Code classifies the error; past ErrorCodeLimit bytes it is cut.
	Code string
	// NoRetry fails the job for good even with attempts left.
	NoRetry bool
}

func decideFail(j Job, lease uint64, p FailParams, cfg BackoffConfig, now time.Time) (events.Event, error) {
	if err := checkLease(j, lease); err != nil {
		return events.Event{}, err
	}
	p.Error, p.Code = ClipText(p.Error, ErrorTextLimit), ClipText(p.Code, ErrorCodeLimit)
	if !p.NoRetry && j.Attempt < j.MaxAttempts {
		if _, err := Next(j.ID, j.State, TransitionRetry); err != nil {
			return events.Event{}, err
		}
		retryAt := now.Add(RetryDelay(j, cfg))
		return newEvent(j.ID, events.TypeAttemptFailed, events.AttemptFailed{
			Lease: lease, Attempt: j.Attempt, Error: p.Error, Code: p.Code, RetryAt: retryAt.UTC(),
		}, now)
	}
	if _, err := Next(j.ID, j.State, TransitionFail); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeFailed, events.Failed{Lease: lease, Attempt: j.Attempt, Error: p.Error, Code: p.Code}, now)
}

// RetryDelay is the backoff after the job's current attempt: base doubled
// per attempt, capped, with equal jitter (half fixed, half random), so that
// retries spread out. A delay is at least the one before while the doubled
// base stays under the cap; from the attempt whose doubled base reaches the
// cap on, each delay is anywhere from half the cap to the cap, and can be
// shorter than the one before.
func RetryDelay(j Job, defaults BackoffConfig) time.Duration {
	base, limit := j.Backoff.Base, j.Backoff.Cap
	if base <= 0 {
		base = defaults.Base
	}
	if limit <= 0 {
		limit = defaults.Cap
	}
	if base <= 0 {
		base = BackoffBaseDefault
	}
	if limit <= 0 {
		limit = BackoffCapDefault
	}
	d := base
	for i := 1; i < j.Attempt && d < limit; i++ {
		if d > limit/2 {
			// Doubling would pass the cap, or overflow with a cap near the
			// largest duration.
			d = limit
			break
		}
		d *= 2
	}
	if d > limit {
		d = limit
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

func decideAcknowledgeCancel(j Job, lease uint64, now time.Time) (events.Event, error) {
	if err := checkLease(j, lease); err != nil {
		return events.Event{}, err
	}
	if _, err := Next(j.ID, j.State, TransitionAcknowledgeCancel); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeCanceled, events.Canceled{Reason: j.CancelReason, By: events.CanceledByWorker, Lease: lease}, now)
}

func decideTerminateCanceling(j Job, reason string, now time.Time) (events.Event, error) {
	if _, err := Next(j.ID, j.State, TransitionAcknowledgeCancel); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeCanceled, events.Canceled{Reason: ClipText(reason, CancelReasonLimit), By: events.CanceledByTimeout}, now)
}

func decideRelease(j Job, lease uint64, reason string, now time.Time) (events.Event, error) {
	if err := checkLease(j, lease); err != nil {
		return events.Event{}, err
	}
	if _, err := Next(j.ID, j.State, TransitionRelease); err != nil {
		return events.Event{}, err
	}
	return newEvent(j.ID, events.TypeReleased, events.Released{Lease: lease, Reason: ClipText(reason, CancelReasonLimit)}, now)
}
