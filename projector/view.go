package projector

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// View is the current state of a job as dashboards and the CLI see it. It is
// stored as JSON, one key per job ID; every field is present (null when
// unset) so that readers need not know which are optional, except
// canceled_by, result, backoff, cancel_requested_at, errors_omitted,
// result_omitted and truncated, which are left out when empty.
type View struct {
	ID          string             `json:"id"`
	Type        string             `json:"type"`
	Tags        map[string]string  `json:"tags"`
	Meta        map[string]string  `json:"meta"`
	State       statemachine.State `json:"state"`
	Priority    int                `json:"priority"`
	Attempt     int                `json:"attempt"`
	MaxAttempts int                `json:"max_attempts"`
	WorkerID    string             `json:"worker_id"`
	// Lease fences the running attempt: the stream sequence of its acquired
	// event, 0 when no attempt holds the job.
	Lease     uint64 `json:"lease"`
	Error     string `json:"error"`
	ErrorCode string `json:"error_code"`
	// Errors are the errors of the last ViewErrorsLimit failed attempts;
	// ErrorsOmitted counts the earlier ones, which the history keeps.
	Errors        []statemachine.AttemptError `json:"errors"`
	ErrorsOmitted int                         `json:"errors_omitted,omitempty"`
	CancelReason  string                      `json:"cancel_reason"`
	// CanceledBy is who finished the cancel: operator, worker or timeout.
	CanceledBy  string          `json:"canceled_by,omitempty"`
	Key         string          `json:"key"`
	PayloadSize int             `json:"payload_size"`
	Result      json.RawMessage `json:"result,omitempty"`
	// ResultOmitted: the result did not fit in a view (one NATS message,
	// with the job's other fields); the history keeps it (Machine.Load,
	// jetjob history).
	ResultOmitted bool `json:"result_omitted,omitempty"`
	// Truncated: even without its result and errors the view did not fit;
	// it has no tags or meta, and its texts are cut short. The history
	// keeps them all.
	Truncated bool            `json:"truncated,omitempty"`
	Backoff   *events.Backoff `json:"backoff,omitempty"`
	RunAt     *time.Time      `json:"run_at"`
	CreatedAt time.Time       `json:"created_at"`
	StartedAt *time.Time      `json:"started_at"`
	// UpdatedAt is the later of LastEventAt and HeartbeatAt.
	UpdatedAt         time.Time  `json:"updated_at"`
	CompletedAt       *time.Time `json:"completed_at"`
	CanceledAt        *time.Time `json:"canceled_at"`
	CancelRequestedAt *time.Time `json:"cancel_requested_at,omitempty"`
	// HeartbeatAt is the last beat of the attempt holding the job, when it
	// is later than the job's last event.
	HeartbeatAt *time.Time `json:"heartbeat_at"`
	// LastEventAt is the time of the job's last event.
	LastEventAt time.Time `json:"last_event_at"`
	// Version is the stream sequence of the last message in the job's
	// history (the expected sequence of its next append).
	Version uint64 `json:"version"`
	// Events counts the events folded, Quarantined the messages skipped.
	Events      int `json:"events"`
	Quarantined int `json:"quarantined"`
}

// ViewErrorsLimit is how many attempts' errors a view shows, the last ones:
// a view is one NATS message, and a job may fail up to
// statemachine.MaxAttemptsLimit times with errors of up to
// statemachine.ErrorTextLimit each.
const ViewErrorsLimit = 20

// isView reports whether v, stored under key, is a view a projector wrote:
// each names the job of its key, at the version of a history (1 or more:
// a history starts with its submit). A value that decodes as a view but is
// not one, written into the bucket by something else, is no job's view:
// projected on, an event would be applied to a made-up state, and listed,
// a bulk cancel would cancel the job it names.
func isView(key string, v View) bool { return v.ID == key && v.Version > 0 }

// ViewOf renders a folded job and its last heartbeat (nil when none). It is
// a pure function of its arguments, so a view rebuilt from the log is
// byte-identical to the one projected live. The beat counts only while the
// attempt that sent it still holds the job and only if it is later than the
// job's last event.
func ViewOf(j statemachine.Job, beat *events.Beat) View {
	v := View{
		ID: j.ID, Type: j.Type, Tags: nonNil(j.Tags), Meta: nonNil(j.Meta), State: j.State,
		Priority: j.Priority, Attempt: j.Attempt, MaxAttempts: j.MaxAttempts, WorkerID: j.WorkerID,
		Lease: j.Lease, Error: j.Error, ErrorCode: j.ErrorCode, Errors: j.Errors, CancelReason: j.CancelReason,
		CanceledBy: j.CanceledBy, Key: j.Key, PayloadSize: j.PayloadSize, Result: j.Result, RunAt: j.RunAt,
		CreatedAt: j.CreatedAt, StartedAt: j.StartedAt, UpdatedAt: j.UpdatedAt, CompletedAt: j.CompletedAt,
		CanceledAt: j.CanceledAt, CancelRequestedAt: j.CancelRequestedAt, LastEventAt: j.UpdatedAt,
		Version: j.Version, Events: j.Events, Quarantined: j.Quarantined,
	}
	if v.Errors == nil {
		// A stored view decodes [] and null differently; one spelling keeps
		// the round trip through the bucket exact.
		v.Errors = []statemachine.AttemptError{}
	}
	if n := len(v.Errors) - ViewErrorsLimit; n > 0 {
		v.Errors, v.ErrorsOmitted = v.Errors[n:], n
	}
	if j.Backoff != (events.Backoff{}) {
		b := j.Backoff
		v.Backoff = &b
	}
	if beatCounts(j, beat) {
		at := beat.At.UTC()
		v.HeartbeatAt = &at
		v.UpdatedAt = at
	}
	return v
}

// fit returns the view and its encoding, within limit bytes: a view is one
// NATS message, and a job's result and errors, each within a message of its
// own, may not fit in one together. What does not fit is left out, the
// result first, then the errors (ErrorsOmitted counts them all), then the
// tags and meta, with the texts cut short (Truncated); never the fields
// that say where the job is. The history keeps it all. It is pure, so a
// rebuilt view equals the projected one.
func fit(v View, limit int) (View, []byte, error) {
	data, err := v.MarshalJSON() // as json.Marshal would, without its second pass over the bytes
	if err != nil || len(data) <= limit {
		return v, data, err
	}
	if len(v.Result) > 0 {
		v.Result, v.ResultOmitted = nil, true
		if data, err = v.MarshalJSON(); err != nil || len(data) <= limit {
			return v, data, err
		}
	}
	if len(v.Errors) > 0 {
		v.Errors, v.ErrorsOmitted = []statemachine.AttemptError{}, v.ErrorsOmitted+len(v.Errors)
		if data, err = v.MarshalJSON(); err != nil || len(data) <= limit {
			return v, data, err
		}
	}
	// Only a server with a small max_payload, or a log written before the
	// text an event holds was bounded, gets here: the view keeps where the
	// job is, and its texts cut short, without its tags and meta.
	v.Truncated = true
	v.Tags, v.Meta = map[string]string{}, map[string]string{}
	for _, text := range []*string{&v.Error, &v.ErrorCode, &v.CancelReason, &v.WorkerID, &v.Key} {
		*text = statemachine.ClipText(*text, truncatedTextLimit)
	}
	if data, err = v.MarshalJSON(); err != nil || len(data) <= limit {
		return v, data, err
	}
	return v, nil, fmt.Errorf("%w: %d bytes cut short, the limit is %d", ErrViewTooLarge, len(data), limit)
}

// truncatedTextLimit is what a truncated view keeps of each text: what the
// server takes in a message is far more than a view of such texts, unless
// its max_payload is set below about 16 KiB.
const truncatedTextLimit = 256

// beatCounts says whether a beat moves the job's updated_at.
func beatCounts(j statemachine.Job, beat *events.Beat) bool {
	return beat != nil && j.Lease != 0 && beat.Lease == j.Lease &&
		(j.State == statemachine.StateRunning || j.State == statemachine.StateCanceling) &&
		beat.At.After(j.UpdatedAt)
}

// Job restores the fold that the view was rendered from, so that the next
// event can be applied to it, or a command decided on it, without reading the
// job's history again. Only the payload itself is not kept (its size is), nor
// the errors ErrorsOmitted counts, nor a result the view left out.
func (v View) Job() statemachine.Job {
	// None is nil in the fold, and {} or [] in a view (ViewOf's, and so
	// every stored one): restored as the fold has it, so that the job
	// equals Machine.Load's, and encodes as it does, empty fields left out.
	j := statemachine.Job{
		ID: v.ID, Type: v.Type, Tags: nilIfEmpty(v.Tags), Meta: nilIfEmpty(v.Meta), PayloadSize: v.PayloadSize, Priority: v.Priority,
		MaxAttempts: v.MaxAttempts, Key: v.Key, State: v.State, Attempt: v.Attempt, Lease: v.Lease,
		WorkerID: v.WorkerID, RunAt: v.RunAt, Error: v.Error, ErrorCode: v.ErrorCode,
		CancelReason: v.CancelReason, CanceledBy: v.CanceledBy, Result: v.Result, CreatedAt: v.CreatedAt, StartedAt: v.StartedAt,
		UpdatedAt: v.LastEventAt, CompletedAt: v.CompletedAt, CanceledAt: v.CanceledAt,
		CancelRequestedAt: v.CancelRequestedAt, Version: v.Version, Events: v.Events, Quarantined: v.Quarantined,
	}
	if len(v.Errors) > 0 {
		// Clipped: the fold appends to Errors, and must not write into an
		// array another copy of this view shares.
		j.Errors = slices.Clip(v.Errors)
	}
	if v.Backoff != nil {
		j.Backoff = *v.Backoff
	}
	return j
}

// partial says the view leaves out some of its fold, so that View.Job
// cannot restore it: the next event is applied to the history folded
// again.
func (v View) partial() bool { return v.ErrorsOmitted > 0 || v.ResultOmitted || v.Truncated }

// beat is the heartbeat the view shows. Only the lease and time of a beat
// enter a view, so this is all ViewOf needs to render the view again after
// one more event.
func (v View) beat() *events.Beat {
	if v.HeartbeatAt == nil {
		return nil
	}
	return &events.Beat{JobID: v.ID, Lease: v.Lease, At: *v.HeartbeatAt}
}

func nilIfEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Filter selects views. Several States match any; all Tags, Meta and MetaNot
// must hold.
type Filter struct {
	States []statemachine.State
	Type   string
	// Tags: the job's tags include each of these k=v.
	Tags map[string]string
	// Meta: the job's metadata includes each of these k=v.
	Meta map[string]string
	// MetaNot: for each k=v, the job has meta k and its value is not v, as
	// in "every job built from a template version other than v2". A job
	// without k does not match, as in SQL's meta->>'k' <> 'v': a bulk cancel
	// by template version must not take the jobs that have none.
	MetaNot map[string]string
	// Limit caps a List page; 0 means no limit. Watch does not use it.
	Limit int
	// After continues a List after this job ID (a Page's Next). Watch
	// does not use it.
	After string
}

// Validate says what in the filter could never match a job (a state that
// does not exist, a type or a key no job can have, a negative limit), with
// an error matching statemachine.ErrInvalid; List, Watch and bulk cancels
// refuse such a filter rather than return nothing.
func (f Filter) Validate() error {
	for _, s := range f.States {
		if _, err := statemachine.ParseState(string(s)); err != nil {
			return fmt.Errorf("filter: %w", err)
		}
	}
	if f.Type != "" {
		if err := statemachine.ValidateToken("type", f.Type); err != nil {
			return fmt.Errorf("filter: %w", err)
		}
	}
	// What no job can have is refused, as its submit would be, rather
	// than matching nothing.
	for what, labels := range map[string]map[string]string{"tag": f.Tags, "meta": f.Meta, "meta-not": f.MetaNot} {
		if err := statemachine.ValidateLabels(what, labels); err != nil {
			return fmt.Errorf("filter: %w", err)
		}
	}
	if f.Limit < 0 {
		return fmt.Errorf("filter: %w: limit %d, expected 0 (no limit) or more", statemachine.ErrInvalid, f.Limit)
	}
	if f.After != "" {
		if err := events.ValidateJobID(f.After); err != nil {
			return fmt.Errorf("filter: %w: after: %w", statemachine.ErrInvalid, err)
		}
	}
	return nil
}

// Matches reports whether the view passes the filter (Limit and After are
// List's paging, not part of the match).
func (f Filter) Matches(v View) bool {
	if len(f.States) > 0 {
		ok := false
		for _, s := range f.States {
			if v.State == s {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if f.Type != "" && v.Type != f.Type {
		return false
	}
	for k, want := range f.Tags {
		if got, ok := v.Tags[k]; !ok || got != want {
			return false
		}
	}
	for k, want := range f.Meta {
		if got, ok := v.Meta[k]; !ok || got != want {
			return false
		}
	}
	for k, not := range f.MetaNot {
		if got, ok := v.Meta[k]; !ok || got == not {
			return false
		}
	}
	return true
}
