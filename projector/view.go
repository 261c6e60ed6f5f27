package projector

import (
	"encoding/json"
	"time"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// View is the current state of a job as dashboards and the CLI see it.
type View struct {
	ID                string                      `json:"id"`
	Type              string                      `json:"type"`
	Tags              map[string]string           `json:"tags"`
	Meta              map[string]string           `json:"meta"`
	State             statemachine.State          `json:"state"`
	Priority          int                         `json:"priority"`
	Attempt           int                         `json:"attempt"`
	MaxAttempts       int                         `json:"max_attempts"`
	WorkerID          string                      `json:"worker_id"`
	Lease             uint64                      `json:"lease,omitempty"`
	Error             string                      `json:"error"`
	ErrorCode         string                      `json:"error_code"`
	Errors            []statemachine.AttemptError `json:"errors,omitempty"`
	CancelReason      string                      `json:"cancel_reason,omitempty"`
	Key               string                      `json:"key,omitempty"`
	PayloadSize       int                         `json:"payload_size"`
	Result            json.RawMessage             `json:"result,omitempty"`
	Backoff           *events.Backoff             `json:"backoff,omitempty"`
	RunAt             *time.Time                  `json:"run_at,omitempty"`
	CreatedAt         time.Time                   `json:"created_at"`
	StartedAt         *time.Time                  `json:"started_at"`
	UpdatedAt         time.Time                   `json:"updated_at"`
	CompletedAt       *time.Time                  `json:"completed_at"`
	CanceledAt        *time.Time                  `json:"canceled_at"`
	CancelRequestedAt *time.Time                  `json:"cancel_requested_at,omitempty"`
	HeartbeatAt       *time.Time                  `json:"heartbeat_at,omitempty"`
	// LastEventAt is the time of the job's last event; UpdatedAt is the later
	// of it and the running attempt's last heartbeat.
	LastEventAt time.Time `json:"last_event_at"`
	// Version is the stream sequence of the job's last event.
	Version     uint64 `json:"version"`
	Events      int    `json:"events"`
	Quarantined int    `json:"quarantined,omitempty"`
}

// ViewOf renders a folded job and its last heartbeat (nil when none). A beat
// counts only while the attempt that sent it still holds the job.
func ViewOf(j statemachine.Job, beat *events.Beat) View {
	v := View{
		ID: j.ID, Type: j.Type, Tags: nonNil(j.Tags), Meta: nonNil(j.Meta), State: j.State,
		Priority: j.Priority, Attempt: j.Attempt, MaxAttempts: j.MaxAttempts, WorkerID: j.WorkerID,
		Lease: j.Lease, Error: j.Error, ErrorCode: j.ErrorCode, Errors: j.Errors, CancelReason: j.CancelReason,
		Key: j.Key, PayloadSize: j.PayloadSize, Result: j.Result, RunAt: j.RunAt,
		CreatedAt: j.CreatedAt, StartedAt: j.StartedAt, UpdatedAt: j.UpdatedAt, CompletedAt: j.CompletedAt,
		CanceledAt: j.CanceledAt, CancelRequestedAt: j.CancelRequestedAt, LastEventAt: j.UpdatedAt,
		Version: j.Version, Events: j.Events, Quarantined: j.Quarantined,
	}
	if j.Backoff != (events.Backoff{}) {
		b := j.Backoff
		v.Backoff = &b
	}
	v.applyBeat(beat)
	return v
}

// applyBeat sets the heartbeat of the attempt holding the job.
func (v *View) applyBeat(beat *events.Beat) bool {
	if beat == nil || v.Lease == 0 || beat.Lease != v.Lease ||
		(v.State != statemachine.StateRunning && v.State != statemachine.StateCanceling) {
		return false
	}
	if v.HeartbeatAt != nil && !beat.At.After(*v.HeartbeatAt) {
		return false
	}
	at := beat.At.UTC()
	v.HeartbeatAt = &at
	if at.After(v.UpdatedAt) {
		v.UpdatedAt = at
	}
	return true
}

// Job restores the fold that the view was rendered from, so that the next
// event can be applied to it, or a command decided on it, without reading the
// job's history again. Only the payload itself is not kept (its size is).
func (v View) Job() statemachine.Job {
	j := statemachine.Job{
		ID: v.ID, Type: v.Type, Tags: v.Tags, Meta: v.Meta, PayloadSize: v.PayloadSize, Priority: v.Priority,
		MaxAttempts: v.MaxAttempts, Key: v.Key, State: v.State, Attempt: v.Attempt, Lease: v.Lease,
		WorkerID: v.WorkerID, RunAt: v.RunAt, Error: v.Error, ErrorCode: v.ErrorCode, Errors: v.Errors,
		CancelReason: v.CancelReason, Result: v.Result, CreatedAt: v.CreatedAt, StartedAt: v.StartedAt,
		UpdatedAt: v.LastEventAt, CompletedAt: v.CompletedAt, CanceledAt: v.CanceledAt,
		CancelRequestedAt: v.CancelRequestedAt, Version: v.Version, Events: v.Events, Quarantined: v.Quarantined,
	}
	if v.Backoff != nil {
		j.Backoff = *v.Backoff
	}
	return j
}

// beat is the heartbeat the view carries, to carry it over a new event.
func (v View) beat() *events.Beat {
	if v.HeartbeatAt == nil {
		return nil
	}
	return &events.Beat{JobID: v.ID, Lease: v.Lease, At: *v.HeartbeatAt}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Matches reports whether the view passes the filter.
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
		if v.Meta[k] == not {
			return false
		}
	}
	return true
}

// Filter selects views. Several States match any; all Tags, Meta and MetaNot
// must hold (MetaNot: the meta key is missing or has another value).
type Filter struct {
	States  []statemachine.State
	Type    string
	Tags    map[string]string
	Meta    map[string]string
	MetaNot map[string]string
	// Limit caps a List page; 0 means no limit.
	Limit int
	// After continues a List after this job ID (a Page's Next).
	After string
}
