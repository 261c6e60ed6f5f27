package events

import (
	"encoding/json"
	"fmt"
	"strconv"
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
	// given is the value New encoded into Data, so that a writer folding
	// the event it just appended need not decode it again (DataAs): about
	// 4% of the CPU a job cost. Never stored or sent; an event read from
	// the log has none.
	given any
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
	return Event{ID: id.String(), JobID: jobID, Type: eventType, Time: time.Now().UTC(), Data: raw, given: data}, nil
}

// Encode writes the versioned envelope.
func Encode(e Event) ([]byte, error) {
	if b, ok := encodePlain(e); ok {
		return b, nil
	}
	return json.Marshal(envelope{V: EnvelopeVersion, Event: e})
}

// encodePlain lays out without reflection an envelope whose strings need no
// escaping and whose data is none or New's (so compact and escaped as
// encoding/json writes it): the bytes json.Marshal writes
// (FuzzEncodePlainAgrees), for a fraction of its CPU, on every append.
func encodePlain(e Event) ([]byte, bool) {
	if len(e.Data) > 0 && e.given == nil {
		return nil, false
	}
	if !needsNoEscape(e.ID) || !needsNoEscape(e.JobID) || !needsNoEscape(e.Type) {
		return nil, false
	}
	at, err := e.Time.MarshalJSON()
	if err != nil {
		return nil, false
	}
	b := make([]byte, 0, 64+len(e.ID)+len(e.JobID)+len(e.Type)+len(at)+len(e.Data))
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, EnvelopeVersion, 10)
	for _, f := range []struct{ key, value string }{{`,"id":"`, e.ID}, {`,"job":"`, e.JobID}, {`,"type":"`, e.Type}} {
		b = append(append(append(b, f.key...), f.value...), '"')
	}
	b = append(append(b, `,"time":`...), at...)
	if len(e.Data) > 0 {
		b = append(append(b, `,"data":`...), e.Data...)
	}
	return append(b, '}'), true
}

// needsNoEscape reports a string encoding/json writes as it is: printable
// ASCII but for the quote, the backslash and what it escapes for HTML.
func needsNoEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
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

// DataAs returns the event's data as a T: the value New was given if it was
// a T, shared as given (maps, slices and times as they were), else decoded
// from Data. So an event from New must not have its Data changed, and a T
// given to New must survive encoding/json unchanged (no monotonic clock
// readings, no empty maps standing for none) for the two to agree.
func DataAs[T any](e Event) (T, error) {
	if d, ok := e.given.(T); ok {
		return d, nil
	}
	var d T
	return d, e.DecodeData(&d)
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
