package events

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// EnvelopeVersion is the version of the envelope written by this package.
const EnvelopeVersion = 1

// Event type names: past tense, stable strings that are stored forever.
const (
	TypeSubmitted       = "job.submitted"
	TypePromoted        = "job.promoted"
	TypeAcquired        = "job.acquired"
	TypeCancelRequested = "job.cancel_requested"
	TypeCanceled        = "job.canceled"
	TypeSucceeded       = "job.succeeded"
	TypeAttemptFailed   = "job.attempt_failed"
	TypeFailed          = "job.failed"
	TypeReleased        = "job.released"
)

// KnownTypes lists every event type this version can fold.
var KnownTypes = []string{
	TypeSubmitted, TypePromoted, TypeAcquired, TypeCancelRequested, TypeCanceled,
	TypeSucceeded, TypeAttemptFailed, TypeFailed, TypeReleased,
}

// Event is one state change of one job, as appended.
type Event struct {
	ID    string          `json:"id"`
	JobID string          `json:"job"`
	Type  string          `json:"type"`
	Time  time.Time       `json:"time"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// Record is an event as stored: the event with its stream sequence and the
// sequence its writer expected to follow.
type Record struct {
	Event
	Seq     uint64
	PrevSeq uint64
	// Err is set, and Event is partial, when the stored message is not an
	// event this version can read. Readers skip such records and report them.
	Err error
	// Raw is the stored message when Err is set, so it can be kept aside.
	Raw []byte
}

// OfJob is the record as read from jobID's subject: an event naming another
// job is not one of this job's, and is marked malformed (Err).
func (r Record) OfJob(jobID string) Record {
	if r.Err == nil && r.JobID != jobID {
		r.Err = fmt.Errorf("%w: event of job %q on the subject of job %s", ErrMalformed, r.JobID, jobID)
	}
	return r
}

type envelope struct {
	V int `json:"v"`
	Event
}

// New builds an event for a job, with a fresh time-ordered ID and the time now.
func New(jobID, eventType string, data any) (Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s data: %w", eventType, err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Event{}, fmt.Errorf("new event ID: %w", err)
	}
	return Event{ID: id.String(), JobID: jobID, Type: eventType, Time: time.Now().UTC(), Data: raw}, nil
}

// Encode writes the versioned envelope.
func Encode(e Event) ([]byte, error) {
	return json.Marshal(envelope{V: EnvelopeVersion, Event: e})
}

// Decode reads an envelope. It returns ErrMalformed for anything that is not
// a version-1 envelope with an ID, a job and a type, and ErrUnknownType for a
// well-formed event of a type this version does not know.
func Decode(b []byte) (Event, error) {
	env, ok := decodeWritten(b)
	if !ok {
		env = envelope{}
		if err := json.Unmarshal(b, &env); err != nil {
			return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	if env.V != EnvelopeVersion {
		return env.Event, fmt.Errorf("%w: envelope version %d, expected %d", ErrMalformed, env.V, EnvelopeVersion)
	}
	if env.ID == "" || env.JobID == "" || env.Type == "" {
		return env.Event, fmt.Errorf("%w: missing id, job or type", ErrMalformed)
	}
	// Writers give UTC; another publisher's zone is dropped, since a time
	// read with a zone of +24:00 cannot be written back (the fold copies
	// event times into views).
	env.Time = env.Time.UTC()
	for _, t := range KnownTypes {
		if t == env.Type {
			return env.Event, nil
		}
	}
	return env.Event, fmt.Errorf("%w %q", ErrUnknownType, env.Type)
}

// DecodeData reads an event's data into v.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrMalformed, e.Type, err)
	}
	return nil
}

// Backoff configures the delay before a failed attempt is retried.
type Backoff struct {
	Base time.Duration `json:"base,omitempty"`
	Cap  time.Duration `json:"cap,omitempty"`
}

// Submitted is the data of TypeSubmitted.
type Submitted struct {
	Type        string            `json:"type"`
	Tags        map[string]string `json:"tags,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
	Payload     []byte            `json:"payload,omitempty"`
	Priority    int               `json:"priority,omitempty"`
	MaxAttempts int               `json:"max_attempts"`
	RunAt       *time.Time        `json:"run_at,omitempty"`
	Key         string            `json:"key,omitempty"`
	Backoff     *Backoff          `json:"backoff,omitempty"`
}

// Promoted is the data of TypePromoted: a scheduled job became runnable.
type Promoted struct{}

// Acquired is the data of TypeAcquired.
type Acquired struct {
	WorkerID string `json:"worker_id"`
	Attempt  int    `json:"attempt"`
}

// CancelRequested is the data of TypeCancelRequested.
type CancelRequested struct {
	Reason string `json:"reason,omitempty"`
}

// Who finished a cancel.
const (
	CanceledByOperator = "operator"
	CanceledByWorker   = "worker"
	CanceledByTimeout  = "timeout"
)

// Canceled is the data of TypeCanceled.
type Canceled struct {
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"`
	Lease  uint64 `json:"lease,omitempty"`
}

// Succeeded is the data of TypeSucceeded.
type Succeeded struct {
	Lease  uint64          `json:"lease"`
	Result json.RawMessage `json:"result,omitempty"`
}

// AttemptFailed is the data of TypeAttemptFailed: the attempt failed and the
// job will be retried at RetryAt.
type AttemptFailed struct {
	Lease   uint64    `json:"lease"`
	Attempt int       `json:"attempt"`
	Error   string    `json:"error"`
	Code    string    `json:"code,omitempty"`
	RetryAt time.Time `json:"retry_at"`
}

// Failed is the data of TypeFailed: the job failed for good.
type Failed struct {
	Lease   uint64 `json:"lease"`
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
	Code    string `json:"code,omitempty"`
}

// Released is the data of TypeReleased: a worker handed the job back
// unfinished, without using up an attempt.
type Released struct {
	Lease  uint64 `json:"lease"`
	Reason string `json:"reason,omitempty"`
}
