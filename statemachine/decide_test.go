package statemachine

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// given builds a history: each entry is an event type and its data; the
// stream sequence is the entry's position, and each expects the one before.
func given(t *testing.T, evs ...any) []events.Record {
	t.Helper()
	var recs []events.Record
	for i := 0; i < len(evs); i += 2 {
		typ := evs[i].(string)
		raw, err := json.Marshal(evs[i+1])
		require.NoError(t, err)
		seq := uint64(len(recs) + 1)
		recs = append(recs, events.Record{
			Event:   events.Event{ID: typ + string(rune('a'+seq)), JobID: "job1", Type: typ, Time: t0.Add(time.Duration(seq) * time.Second), Data: raw},
			Seq:     seq,
			PrevSeq: seq - 1,
		})
	}
	return recs
}

func fold(t *testing.T, recs []events.Record) Job {
	t.Helper()
	j, bad := Fold(recs)
	require.Empty(t, bad)
	return j
}

var (
	submitted = []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 2}}
	acquired1 = []any{events.TypeAcquired, events.Acquired{WorkerID: "w1", Attempt: 1}}
)

func hist(parts ...[]any) []any {
	var out []any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestDecide(t *testing.T) {
	cancelReq := []any{events.TypeCancelRequested, events.CancelRequested{Reason: "r"}}
	canceled := []any{events.TypeCanceled, events.Canceled{By: events.CanceledByOperator}}
	succeeded := []any{events.TypeSucceeded, events.Succeeded{Lease: 2}}
	failed := []any{events.TypeFailed, events.Failed{Lease: 2, Attempt: 1, Error: "x"}}
	runAt := t0.Add(time.Hour)
	scheduled := []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 1, RunAt: &runAt}}
	bo := BackoffConfig{Base: time.Second, Cap: time.Minute}
	for _, tc := range []struct {
		name    string
		given   []any
		when    func(j Job) (events.Event, error)
		then    string
		illegal bool
		lost    bool
	}{
		{"cancel pending", submitted, func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, events.TypeCanceled, false, false},
		{"cancel scheduled", scheduled, func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, events.TypeCanceled, false, false},
		{"cancel running asks the worker", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, events.TypeCancelRequested, false, false},
		{"cancel canceled", hist(submitted, canceled), func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, "", true, false},
		{"cancel canceling", hist(submitted, acquired1, cancelReq), func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, "", true, false},
		{"cancel succeeded", hist(submitted, acquired1, succeeded), func(j Job) (events.Event, error) { return decideCancel(j, "r", t0) }, "", true, false},
		{"bulk cancel skips running", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decidePendingCancel(j, "r", t0) }, "", true, false},
		{"acquire pending", submitted, func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, events.TypeAcquired, false, false},
		{"acquire canceled (seed 000)", hist(submitted, canceled), func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, "", true, false},
		{"acquire succeeded", hist(submitted, acquired1, succeeded), func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, "", true, false},
		{"acquire failed", hist(submitted, acquired1, failed), func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, "", true, false},
		{"acquire running", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, "", true, false},
		{"acquire scheduled", scheduled, func(j Job) (events.Event, error) { return decideAcquire(j, "w", t0) }, "", true, false},
		{"promote scheduled", scheduled, func(j Job) (events.Event, error) { return decidePromote(j, t0) }, events.TypePromoted, false, false},
		{"promote pending", submitted, func(j Job) (events.Event, error) { return decidePromote(j, t0) }, "", true, false},
		{"succeed with lease", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideSucceed(j, 2, nil, t0) }, events.TypeSucceeded, false, false},
		{"succeed with stale lease", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideSucceed(j, 1, nil, t0) }, "", false, true},
		{"succeed after cancel request", hist(submitted, acquired1, cancelReq), func(j Job) (events.Event, error) { return decideSucceed(j, 2, nil, t0) }, "", true, false},
		{"fail with attempts left retries", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideFail(j, 2, FailParams{Error: "x"}, bo, t0) }, events.TypeAttemptFailed, false, false},
		{"fail without retry", hist(submitted, acquired1), func(j Job) (events.Event, error) {
			return decideFail(j, 2, FailParams{Error: "x", NoRetry: true}, bo, t0)
		}, events.TypeFailed, false, false},
		{"fail with stale lease", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideFail(j, 9, FailParams{Error: "x"}, bo, t0) }, "", false, true},
		{"acknowledge cancel", hist(submitted, acquired1, cancelReq), func(j Job) (events.Event, error) { return decideAcknowledgeCancel(j, 2, t0) }, events.TypeCanceled, false, false},
		{"acknowledge without request", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideAcknowledgeCancel(j, 2, t0) }, "", true, false},
		{"terminate unacknowledged cancel", hist(submitted, acquired1, cancelReq), func(j Job) (events.Event, error) { return decideTerminateCanceling(j, "timeout", t0) }, events.TypeCanceled, false, false},
		{"release", hist(submitted, acquired1), func(j Job) (events.Event, error) { return decideRelease(j, 2, "shutdown", t0) }, events.TypeReleased, false, false},
		{"release a lost job", hist(submitted, acquired1, succeeded), func(j Job) (events.Event, error) { return decideRelease(j, 2, "shutdown", t0) }, "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := given(t, tc.given...)
			job := fold(t, recs)
			ev, err := tc.when(job)
			switch {
			case tc.illegal:
				require.ErrorIs(t, err, ErrIllegalTransition)
				var ite *IllegalTransitionError
				require.True(t, errors.As(err, &ite))
				require.Equal(t, "job1", ite.JobID)
				require.Equal(t, job.State, ite.State)
				require.Contains(t, err.Error(), string(job.State))
			case tc.lost:
				require.ErrorIs(t, err, ErrLeaseLost)
			default:
				require.NoError(t, err)
				require.Equal(t, tc.then, ev.Type)
				// The decided event folds onto the history.
				next := job
				require.NoError(t, next.Apply(events.Record{Event: ev, Seq: job.Version + 1, PrevSeq: job.Version}))
			}
		})
	}
}

func TestFoldQuarantinesBadRecordsButAdvancesVersion(t *testing.T) {
	recs := given(t, hist(submitted, acquired1)...)
	garbage := events.Record{Seq: 3, Err: events.ErrMalformed}
	unknown := events.Record{Event: events.Event{ID: "u", JobID: "job1", Type: "job.exploded", Time: t0}, Seq: 4}
	illegal := given(t, hist(submitted, acquired1, []any{events.TypePromoted, struct{}{}})...)[2]
	illegal.Seq = 5
	forged := given(t, hist(submitted, acquired1, []any{events.TypeSucceeded, events.Succeeded{Lease: 99}})...)[2]
	forged.Seq = 6
	j, bad := Fold(append(recs, garbage, unknown, illegal, forged))
	require.Len(t, bad, 4)
	require.ErrorIs(t, bad[0].Reason, events.ErrMalformed)
	require.ErrorIs(t, bad[1].Reason, events.ErrUnknownType)
	require.ErrorIs(t, bad[2].Reason, ErrIllegalTransition)
	require.ErrorIs(t, bad[3].Reason, ErrLeaseLost)
	require.Equal(t, StateRunning, j.State)
	require.Equal(t, uint64(6), j.Version)
	require.Equal(t, 4, j.Quarantined)
	require.Equal(t, 2, j.Events)
}

func TestFoldTracksAttemptsAndErrors(t *testing.T) {
	j := fold(t, given(t, hist(submitted, acquired1,
		[]any{events.TypeAttemptFailed, events.AttemptFailed{Lease: 2, Attempt: 1, Error: "e1", Code: "exit", RetryAt: t0.Add(time.Minute)}},
		[]any{events.TypePromoted, struct{}{}},
		[]any{events.TypeAcquired, events.Acquired{WorkerID: "w2", Attempt: 2}},
		[]any{events.TypeFailed, events.Failed{Lease: 5, Attempt: 2, Error: "e2", Code: "hung"}},
	)...))
	require.Equal(t, StateFailed, j.State)
	require.Equal(t, 2, j.Attempt)
	require.Equal(t, "e2", j.Error)
	require.Equal(t, "hung", j.ErrorCode)
	require.Len(t, j.Errors, 2)
	require.Equal(t, "e1", j.Errors[0].Error)
	require.NotNil(t, j.CompletedAt)
}

func TestRetryDelayGrowsWithinJitterAndCap(t *testing.T) {
	cfg := BackoffConfig{Base: time.Second, Cap: 10 * time.Second}
	for attempt := 1; attempt <= 8; attempt++ {
		d := min(time.Second<<(attempt-1), 10*time.Second)
		for i := 0; i < 50; i++ {
			got := RetryDelay(Job{Attempt: attempt}, cfg)
			require.GreaterOrEqual(t, got, d/2)
			require.LessOrEqual(t, got, d)
		}
	}
	// A job's own backoff wins over the defaults.
	got := RetryDelay(Job{Attempt: 1, Backoff: events.Backoff{Base: 100 * time.Millisecond}}, cfg)
	require.LessOrEqual(t, got, 100*time.Millisecond)
}

func TestSubmitValidation(t *testing.T) {
	for _, tc := range []struct {
		p    SubmitParams
		want error
		msg  string
	}{
		{SubmitParams{Type: ""}, ErrInvalid, "type"},
		{SubmitParams{Type: "a.b"}, ErrInvalid, "type"},
		{SubmitParams{Type: "t", Tags: map[string]string{"bad key": "v"}}, ErrInvalid, "tag key"},
		{SubmitParams{Type: "t", Tags: map[string]string{"k": "line\nbreak"}}, ErrInvalid, "control character"},
		{SubmitParams{Type: "t", Payload: make([]byte, 11)}, ErrPayloadTooLarge, "11 bytes, the limit is 10"},
		{SubmitParams{Type: "t", Priority: 10}, ErrInvalid, "priority"},
		{SubmitParams{Type: "t", MaxAttempts: -1}, ErrInvalid, "max attempts"},
	} {
		err := tc.p.validate(10)
		require.ErrorIs(t, err, tc.want)
		require.ErrorIs(t, err, ErrInvalid)
		require.Contains(t, err.Error(), tc.msg)
	}
	p := SubmitParams{Type: "t"}
	require.NoError(t, p.validate(10))
	require.Equal(t, MaxAttemptsDefault, p.MaxAttempts)
}

func TestMermaidShowsEveryTransitionAndMatchesTheReadme(t *testing.T) {
	diagram := Mermaid()
	for _, ev := range table {
		for _, src := range ev.Src {
			require.Contains(t, diagram, src+" --> "+ev.Dst+": "+ev.Name)
		}
	}
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	require.True(t, strings.Contains(string(readme), strings.TrimSpace(diagram)),
		"README.md's state diagram differs from statemachine.Mermaid(); paste:\n%s", diagram)
}
