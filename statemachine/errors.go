package statemachine

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetjob/jetjob/events"
)

var (
	// ErrIllegalTransition: the job's state does not allow the transition.
	ErrIllegalTransition = errors.New("transition not allowed")
	// ErrConflict: the job's history kept moving; matches events.ErrConflict too.
	ErrConflict = events.ErrConflict
	// ErrNotFound: no such job; matches events.ErrNotFound.
	ErrNotFound = events.ErrNotFound
	// ErrLeaseLost: a worker reported for an attempt that is no longer the
	// job's current one (the job was canceled, declared dead or retried).
	// Never ErrConflict as well, even when the report raced the change that
	// fenced it: the attempt is over, and no retry records its report.
	ErrLeaseLost = errors.New("lease lost: the job is no longer held by this attempt")
	// ErrOutcomeUnknown: the command's event was sent but its answer never
	// came (the context ended, the acks were lost, or no stream answered):
	// it may have been stored. Matches
	// events.ErrOutcomeUnknown; errors.As with *events.OutcomeUnknownError
	// gives the job's ID, to read it.
	ErrOutcomeUnknown = events.ErrOutcomeUnknown
	// ErrNotSent: the connection to NATS closed before the command's event
	// was sent: nothing was stored, and the command may be sent again.
	// Matches events.ErrNotSent.
	ErrNotSent = events.ErrNotSent
	// ErrTakenBefore: CancelPending refuses a job that a worker took
	// before (it waits for a retry, or was handed back); Cancel cancels it.
	ErrTakenBefore = errors.New("a worker already took the job once")
	// ErrNotDue: a promote of a scheduled job whose run-at has not come,
	// or from a timer armed for another run-at than the job's.
	ErrNotDue = errors.New("the job's run-at has not come")
	// ErrInvalidConfig: a Config a Machine cannot run with.
	ErrInvalidConfig = errors.New("invalid statemachine config")
	// ErrInvalid: a command's input is invalid; a job ID that cannot name a
	// job matches it too, and events.ErrInvalidJobID, which says why.
	ErrInvalid = errors.New("invalid input")
	// ErrPayloadTooLarge: a payload over the configured limit; matches ErrInvalid.
	ErrPayloadTooLarge = fmt.Errorf("%w: payload too large", ErrInvalid)
)

// IllegalTransitionError names the job, its state and the refused transition.
type IllegalTransitionError struct {
	JobID      string
	State      State
	Transition Transition
}

func (e *IllegalTransitionError) Error() string {
	return fmt.Sprintf("job %s is %s: cannot %s", e.JobID, e.State, e.Transition)
}

// Is makes errors.Is(err, ErrIllegalTransition) true.
func (e *IllegalTransitionError) Is(target error) bool { return target == ErrIllegalTransition }

// NoSubmitError: a job ID whose history holds messages but no valid submit
// (junk some other publisher put on its subject, each quarantined) names
// no job. It matches ErrNotFound, as a history with nothing in it does.
type NoSubmitError struct {
	JobID    string
	Messages int // in the history, none a valid submit
}

func (e *NoSubmitError) Error() string {
	if e.Messages == 1 {
		return fmt.Sprintf("job %s not found: its history holds 1 message, not a valid submit (it is quarantined)", e.JobID)
	}
	return fmt.Sprintf("job %s not found: its history holds %d messages, none a valid submit (each is quarantined)", e.JobID, e.Messages)
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NoSubmitError) Is(target error) bool { return target == ErrNotFound }

// LeaseLostError names the lease a worker reported with and the job's state.
type LeaseLostError struct {
	JobID string
	Lease uint64
	Job   Job
}

func (e *LeaseLostError) Error() string {
	return fmt.Sprintf("job %s is %s (lease %d, attempt %d): report for lease %d refused: %v",
		e.JobID, e.Job.State, e.Job.Lease, e.Job.Attempt, e.Lease, ErrLeaseLost)
}

// Is makes errors.Is(err, ErrLeaseLost) true.
func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

// ConflictError: the command lost a race. Job is the job as it now is; Cause,
// when set, is why deciding again on it failed (for example an illegal
// transition).
type ConflictError struct {
	JobID string
	Job   Job
	Cause error
}

func (e *ConflictError) Error() string {
	if e.Cause != nil {
		// The causes name the job and its state themselves ("job X is
		// canceled: cannot cancel"); saying them twice reads as two errors.
		if cause := e.Cause.Error(); strings.Contains(cause, e.JobID) {
			return cause + " (it changed concurrently)"
		}
		return fmt.Sprintf("job %s changed concurrently and is now %s: %v", e.JobID, e.Job.State, e.Cause)
	}
	return fmt.Sprintf("job %s kept changing concurrently (now %s, version %d): %v", e.JobID, e.Job.State, e.Job.Version, ErrConflict)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Unwrap gives the cause.
func (e *ConflictError) Unwrap() error { return e.Cause }

// NotDueError names a scheduled job a promote came too early for, and its
// run-at. It matches ErrNotDue.
type NotDueError struct {
	JobID string
	RunAt time.Time
}

func (e *NotDueError) Error() string {
	return fmt.Sprintf("job %s runs at %s: not promoted", e.JobID, e.RunAt.Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrNotDue) true.
func (e *NotDueError) Is(target error) bool { return target == ErrNotDue }

// invalidJobIDError is events' refusal of a job ID, said in its words, that
// also matches ErrInvalid: a command's caller checks its input by that.
type invalidJobIDError struct{ err error }

func (e invalidJobIDError) Error() string        { return e.err.Error() }
func (e invalidJobIDError) Unwrap() error        { return e.err }
func (e invalidJobIDError) Is(target error) bool { return target == ErrInvalid }
