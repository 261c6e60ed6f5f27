package statemachine

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jetjob/jetjob/events"
)

// AttemptError is the error of one failed attempt.
type AttemptError struct {
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
	Code    string `json:"code,omitempty"`
	// WorkerID is the worker that held the attempt.
	WorkerID string    `json:"worker_id,omitempty"`
	At       time.Time `json:"at"`
}

// Job is the fold of a job's events: everything known about it now.
//
// A queue message carries a pending job as JSON, decoded by the worker that
// takes it. Its zero fields are left out, which halves a new job's message
// and its decoding; a message written with every field decodes the same.
type Job struct {
	ID          string            `json:",omitzero"`
	Type        string            `json:",omitzero"`
	Tags        map[string]string `json:",omitzero"`
	Meta        map[string]string `json:",omitzero"`
	Payload     []byte            `json:",omitzero"`
	PayloadSize int               `json:",omitzero"`
	Priority    int               `json:",omitzero"`
	MaxAttempts int               `json:",omitzero"`
	Key         string            `json:",omitzero"`
	Backoff     events.Backoff    `json:",omitzero"`

	State    State  `json:",omitzero"`
	Attempt  int    `json:",omitzero"`
	Lease    uint64 `json:",omitzero"`
	WorkerID string `json:",omitzero"`
	// RunAt is when the job was last due to run: its submit's run-at, or
	// its last retry's. A finished job keeps it.
	RunAt     *time.Time     `json:",omitzero"`
	Error     string         `json:",omitzero"`
	ErrorCode string         `json:",omitzero"`
	Errors    []AttemptError `json:",omitzero"`
	// CancelReason is the reason the cancel was asked for with; when no
	// reason was given, the one recorded by whoever finished the cancel.
	CancelReason string `json:",omitzero"`
	// CanceledBy is who finished the cancel: events.CanceledByOperator (a
	// job no worker held), CanceledByWorker or CanceledByTimeout.
	CanceledBy string          `json:",omitzero"`
	Result     json.RawMessage `json:",omitzero"`

	CreatedAt   time.Time  `json:",omitzero"`
	StartedAt   *time.Time `json:",omitzero"`
	UpdatedAt   time.Time  `json:",omitzero"`
	CompletedAt *time.Time `json:",omitzero"`
	CanceledAt  *time.Time `json:",omitzero"`
	// CancelRequestedAt is when a cancel of the running job was asked for.
	CancelRequestedAt *time.Time `json:",omitzero"`

	// Version is the stream sequence of the last message in the job's
	// history, the expected sequence of its next append.
	Version uint64 `json:",omitzero"`
	// Events counts the events folded; Quarantined the messages skipped.
	Events      int `json:",omitzero"`
	Quarantined int `json:",omitzero"`
}

// QuarantinedRecord is a message in a job's history that the fold skipped.
type QuarantinedRecord struct {
	Record events.Record
	Reason error
}

// Fold folds a job's history. Messages that are not valid events, or that
// record a transition the table does not allow, are skipped and returned.
func Fold(recs []events.Record) (Job, []QuarantinedRecord) {
	job := Job{State: StateNew}
	var bad []QuarantinedRecord
	for _, rec := range recs {
		if err := job.Apply(rec); err != nil {
			bad = append(bad, QuarantinedRecord{Record: rec, Reason: err})
		}
	}
	return job, bad
}

func ptr(t time.Time) *time.Time { return &t }

// utc is t in UTC, as writers give it: a time another publisher gave with a
// zone of +24:00 reads, but cannot be written back into a view.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	return ptr(t.UTC())
}

// Apply folds one more record into the job. A record that cannot be applied
// leaves the job unchanged but for its version and its Quarantined count,
// and returns why.
func (j *Job) Apply(rec events.Record) error {
	if rec.Seq > j.Version {
		j.Version = rec.Seq
	}
	if err := j.apply(rec); err != nil {
		j.Quarantined++
		return err
	}
	j.Events++
	return nil
}

// checkSubmitted refuses a submit no Machine would have appended, which
// another publisher put on the log: one whose type cannot name a queue, or
// whose priority or attempts the queue and the retries cannot serve. Only
// rules every version of Submit has kept are checked, so that no job
// submitted earlier is skipped.
func checkSubmitted(d events.Submitted) error {
	if err := ValidateToken("type", d.Type); err != nil {
		return fmt.Errorf("%w: submitted: %w", events.ErrMalformed, err)
	}
	for k := range d.Tags {
		if err := ValidateToken("tag key", k); err != nil {
			return fmt.Errorf("%w: submitted: %w", events.ErrMalformed, err)
		}
	}
	if d.Priority < PriorityMin || d.Priority > PriorityMax {
		return fmt.Errorf("%w: submitted: priority %d, expected %d-%d", events.ErrMalformed, d.Priority, PriorityMin, PriorityMax)
	}
	if d.MaxAttempts < 0 {
		return fmt.Errorf("%w: submitted: max attempts %d, expected at least 1", events.ErrMalformed, d.MaxAttempts)
	}
	return nil
}

func (j *Job) apply(rec events.Record) error {
	if rec.Err != nil {
		return rec.Err
	}
	if j.ID != "" && rec.JobID != j.ID {
		return fmt.Errorf("%w: event for job %s in job %s's history", events.ErrMalformed, rec.JobID, j.ID)
	}
	move := func(tr Transition) error {
		dst, err := Next(rec.JobID, j.State, tr)
		if err != nil {
			return err
		}
		j.State = dst
		j.UpdatedAt = rec.Time
		return nil
	}
	fenced := func(lease uint64) error {
		if lease != j.Lease {
			return &LeaseLostError{JobID: rec.JobID, Lease: lease, Job: *j}
		}
		return nil
	}
	switch rec.Type {
	case events.TypeSubmitted:
		d, err := events.DataAs[events.Submitted](rec.Event)
		if err != nil {
			return err
		}
		if err := checkSubmitted(d); err != nil {
			return err
		}
		tr := TransitionSubmit
		if d.RunAt != nil && d.RunAt.After(rec.Time) {
			tr = TransitionSchedule
		}
		if err := move(tr); err != nil {
			return err
		}
		j.ID, j.Type, j.Tags, j.Meta, j.Payload, j.PayloadSize = rec.JobID, d.Type, d.Tags, d.Meta, d.Payload, len(d.Payload)
		j.Priority, j.MaxAttempts, j.Key, j.RunAt = d.Priority, d.MaxAttempts, d.Key, utc(d.RunAt)
		if d.Backoff != nil {
			j.Backoff = *d.Backoff
		}
		j.CreatedAt = rec.Time
	case events.TypePromoted:
		return move(TransitionPromote)
	case events.TypeAcquired:
		d, err := events.DataAs[events.Acquired](rec.Event)
		if err != nil {
			return err
		}
		if _, err := Next(rec.JobID, j.State, TransitionAcquire); err != nil {
			return err // said before the attempt: the state is the news
		}
		// Every version numbers an acquire after the attempts used (a
		// hand-back gives its attempt back): another publisher's attempt
		// -3 would have the job run past its max attempts.
		if d.Attempt != j.Attempt+1 {
			return fmt.Errorf("%w: acquired: attempt %d, expected %d", events.ErrMalformed, d.Attempt, j.Attempt+1)
		}
		if err := move(TransitionAcquire); err != nil {
			return err
		}
		j.Attempt, j.WorkerID, j.Lease = d.Attempt, d.WorkerID, rec.Seq
		j.StartedAt = ptr(rec.Time)
	case events.TypeCancelRequested:
		var d events.CancelRequested
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		if err := move(TransitionRequestCancel); err != nil {
			return err
		}
		j.CancelReason = d.Reason
		j.CancelRequestedAt = ptr(rec.Time)
	case events.TypeCanceled:
		var d events.Canceled
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		tr := TransitionCancel
		if j.State == StateCanceling {
			tr = TransitionAcknowledgeCancel
			if d.By == events.CanceledByWorker {
				if err := fenced(d.Lease); err != nil {
					return err
				}
			}
		}
		if err := move(tr); err != nil {
			return err
		}
		// The operator's reason stays: a cancel the server finished after
		// the grace records its own code, which canceled_by already says.
		if j.CancelReason == "" {
			j.CancelReason = d.Reason
		}
		j.CanceledBy = d.By
		j.CanceledAt, j.CompletedAt = ptr(rec.Time), ptr(rec.Time)
	case events.TypeSucceeded:
		var d events.Succeeded
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		if err := fenced(d.Lease); err != nil {
			return err
		}
		if err := move(TransitionSucceed); err != nil {
			return err
		}
		j.Result, j.Error, j.ErrorCode = d.Result, "", ""
		j.CompletedAt = ptr(rec.Time)
	case events.TypeAttemptFailed:
		var d events.AttemptFailed
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		if err := fenced(d.Lease); err != nil {
			return err
		}
		if err := move(TransitionRetry); err != nil {
			return err
		}
		j.failed(d.Attempt, d.Error, d.Code, rec.Time)
		j.RunAt = ptr(d.RetryAt.UTC())
		// The worker goes with the attempt's error: a job waiting for its
		// next attempt is held by no one.
		j.WorkerID = ""
	case events.TypeFailed:
		var d events.Failed
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		if err := fenced(d.Lease); err != nil {
			return err
		}
		if err := move(TransitionFail); err != nil {
			return err
		}
		j.failed(d.Attempt, d.Error, d.Code, rec.Time)
		j.CompletedAt = ptr(rec.Time)
	case events.TypeReleased:
		var d events.Released
		if err := rec.DecodeData(&d); err != nil {
			return err
		}
		if err := fenced(d.Lease); err != nil {
			return err
		}
		if err := move(TransitionRelease); err != nil {
			return err
		}
		// A handed-back attempt does not count against max attempts.
		j.Attempt--
		j.Lease, j.WorkerID = 0, ""
	default:
		return fmt.Errorf("%w %q", events.ErrUnknownType, rec.Type)
	}
	return nil
}

func (j *Job) failed(attempt int, msg, code string, at time.Time) {
	j.Error, j.ErrorCode = msg, code
	j.Errors = append(j.Errors, AttemptError{Attempt: attempt, Error: msg, Code: code, WorkerID: j.WorkerID, At: at})
	j.Lease = 0
}

// Runnable reports whether a worker may acquire the job now.
func (j *Job) Runnable() bool { return j.State == StatePending }
