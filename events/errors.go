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
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("event log closed")
)

// ConflictError says which sequence the writer expected and which one the
// job's history had.
type ConflictError struct {
	JobID    string
	Expected uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("append to job %s: expected last sequence %d: %v", e.JobID, e.Expected, ErrConflict)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }
