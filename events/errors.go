package events

import (
	"errors"
	"fmt"
)

var (
	// ErrConflict: the job's history moved since the writer read it.
	ErrConflict = errors.New("conflict: the job's history changed since it was read")
	// ErrNotFound: the job has no events.
	ErrNotFound = errors.New("job not found")
	// ErrInvalidJobID: a job ID that cannot name a subject.
	ErrInvalidJobID = errors.New("invalid job ID")
	// ErrMalformed: a message on an event subject that is not an event.
	ErrMalformed = errors.New("malformed event")
	// ErrUnknownType: an event whose type this version does not know.
	ErrUnknownType = errors.New("unknown event type")
	// ErrUnavailable: a read found no events stream answering within the
	// publish timeout (JetStream starting, or no jetjob server ever set it
	// up), or its request went unanswered PublishRetries times (the server
	// gone). An append to a stream that does not answer ends in
	// ErrOutcomeUnknown instead (it may have been stored), or in ErrNoLog
	// when the stream is not there at all.
	ErrUnavailable = errors.New("the events stream does not answer: is JetStream up, and was a jetjob server started against this NATS?")
	// ErrNoLog: an append, or Follow, found no events stream on the NATS
	// it was sent to (a log attached where no jetjob server provisioned
	// one, or a NATS without JetStream); nothing was stored.
	ErrNoLog = errors.New("no events stream on this NATS: start a jetjob server against it, or open the log with events.Open")
	// ErrInvalidConfig: a Config a Log cannot run with, or a setting out of
	// range (a hang-after not above 0).
	ErrInvalidConfig = errors.New("invalid events config")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("event log closed")
	// ErrNotSent: the connection closed before an append was sent: it was
	// not stored, and appending it again is safe.
	ErrNotSent = errors.New("not sent: the connection to NATS is closed")
	// ErrBeatSuperseded: a later attempt of the job has beaten since; the
	// attempt whose beat was refused no longer holds the job.
	ErrBeatSuperseded = errors.New("a later attempt of the job beats")
	// ErrTooLarge: an event that, encoded, does not fit in one NATS message
	// with MessageRoom to spare; it was not sent.
	ErrTooLarge = errors.New("event too large for the NATS server's max_payload")
	// ErrPermission: NATS refused the connection's user the subject an
	// append publishes to (its permissions): nothing was stored. It wraps
	// the violation (nats.ErrPermissionViolation), which names the subject.
	// It is told once the append's tries are over; to hear it at once, see
	// the package's documentation.
	ErrPermission = errors.New("NATS refused this user the subject")
	// ErrOutcomeUnknown: an append was sent but its answer never came (the
	// caller's context ended, or acks were lost): it may have been stored.
	ErrOutcomeUnknown = errors.New("outcome unknown: the append may have been stored")
)

// OutcomeUnknownError names the job whose append may have been stored; read
// the job to know. It matches ErrOutcomeUnknown and unwraps to its cause
// (context.Canceled, context.DeadlineExceeded, a timeout).
type OutcomeUnknownError struct {
	JobID string
	Cause error
}

func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("append to job %s: %v; the append may have been stored: read the job to know", e.JobID, e.Cause)
}

// Is makes errors.Is(err, ErrOutcomeUnknown) true.
func (e *OutcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// Unwrap returns the cause.
func (e *OutcomeUnknownError) Unwrap() error { return e.Cause }

// ConflictError names the job and the last sequence the writer expected its
// history to have.
type ConflictError struct {
	JobID    string
	Expected uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("append to job %s: expected last sequence %d: %v", e.JobID, e.Expected, ErrConflict)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// TooLargeError gives an event's encoded size and the most the connection's
// server takes for one (its max_payload less MessageRoom). It matches
// ErrTooLarge.
type TooLargeError struct {
	JobID string
	Size  int
	Max   int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("append to job %s: the event is %d bytes encoded, over the %d the NATS server's max_payload leaves for one", e.JobID, e.Size, e.Max)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }
