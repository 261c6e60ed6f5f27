package statemachine_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// A job read back from its JSON is the job written, every field of it:
// queue messages carry jobs so.
func TestJobRoundTripsThroughJSON(t *testing.T) {
	at := func(s int) *time.Time { v := time.Date(2026, 11, 30, 21, 0, s, 5, time.UTC); return &v }
	full := statemachine.Job{
		ID: "01a22e56-02df-7cdb-8e06-cc8889d7836b", Type: "render",
		Tags: map[string]string{"gpu": "true"}, Meta: map[string]string{"by": "ci"},
		Payload: []byte(`{"frame":1}`), PayloadSize: 11, Priority: 3, MaxAttempts: 5, Key: "frame-1",
		Backoff: events.Backoff{Base: time.Second, Cap: time.Minute},
		State:   statemachine.StateRunning, Attempt: 2, Lease: 40, WorkerID: "w-1", RunAt: at(1),
		Error: "boom", ErrorCode: "oom",
		Errors:       []statemachine.AttemptError{{Attempt: 1, Error: "boom", Code: "oom", WorkerID: "w-0", At: *at(2)}},
		CancelReason: "why", CanceledBy: events.CanceledByWorker, Result: json.RawMessage(`{"ok":true}`),
		CreatedAt: *at(3), StartedAt: at(4), UpdatedAt: *at(5), CompletedAt: at(6), CanceledAt: at(7),
		CancelRequestedAt: at(8), Version: 41, Events: 7, Quarantined: 1,
	}
	for name, job := range map[string]statemachine.Job{"every field set": full, "a new job": {
		ID: full.ID, Type: "noop", State: statemachine.StatePending, MaxAttempts: 3,
		CreatedAt: full.CreatedAt, UpdatedAt: full.CreatedAt, Version: 1, Events: 1,
	}} {
		t.Run(name, func(t *testing.T) {
			data, err := json.Marshal(job)
			require.NoError(t, err)
			var got statemachine.Job
			require.NoError(t, json.Unmarshal(data, &got))
			require.Equal(t, job, got)
		})
	}
}

// Queue messages written before zero fields were left out still decode.
func TestJobWrittenWithEveryFieldDecodes(t *testing.T) {
	written := `{"ID":"01a22e56-02df-7cdb-8e06-cc8889d7836b","Type":"noop","Tags":null,"Meta":null,"Payload":null,` +
		`"PayloadSize":0,"Priority":0,"MaxAttempts":3,"Key":"","Backoff":{},"State":"pending","Attempt":0,"Lease":0,` +
		`"WorkerID":"","RunAt":null,"Error":"","ErrorCode":"","Errors":null,"CancelReason":"","CanceledBy":"","Result":null,` +
		`"CreatedAt":"2026-11-30T21:21:58.495842889Z","StartedAt":null,"UpdatedAt":"2026-11-30T21:21:58.495842889Z",` +
		`"CompletedAt":null,"CanceledAt":null,"CancelRequestedAt":null,"Version":18,"Events":1,"Quarantined":0}`
	var got statemachine.Job
	require.NoError(t, json.Unmarshal([]byte(written), &got))
	created := time.Date(2026, 11, 30, 21, 21, 58, 495842889, time.UTC)
	require.Equal(t, statemachine.Job{ID: "01a22e56-02df-7cdb-8e06-cc8889d7836b", Type: "noop", MaxAttempts: 3,
		State: statemachine.StatePending, CreatedAt: created, UpdatedAt: created, Version: 18, Events: 1,
		Result: json.RawMessage("null")}, got) // as it always read: a raw message keeps the null
}
