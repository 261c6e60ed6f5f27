package statemachine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
)

// The tests in this file are pure: no server, a fixed clock, histories built
// by hand. They are in package statemachine because the deciders are not
// exported; machine_test.go drives the same deciders through a Machine
// against a real server.

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// now is the time every decider below decides at: after every given event.
var now = t0.Add(time.Minute)

// given builds a history: each entry is an event type and its data; the
// stream sequence is the entry's position, and each expects the one before.
func given(t testing.TB, evs ...any) []events.Record {
	t.Helper()
	var recs []events.Record
	for i := 0; i < len(evs); i += 2 {
		typ := evs[i].(string)
		raw, err := json.Marshal(evs[i+1])
		require.NoError(t, err)
		seq := uint64(len(recs) + 1)
		recs = append(recs, events.Record{
			Event:   events.Event{ID: fmt.Sprintf("%s-%d", typ, seq), JobID: "job1", Type: typ, Time: t0.Add(time.Duration(seq) * time.Second), Data: raw},
			Seq:     seq,
			PrevSeq: seq - 1,
		})
	}
	return recs
}

// fold folds a history that must be clean.
func fold(t testing.TB, recs []events.Record) Job {
	t.Helper()
	j, bad := Fold(recs)
	require.Empty(t, bad)
	return j
}

func hist(parts ...[]any) []any {
	var out []any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// One event each, as []any{type, data}. The acquired event is always the
// second of its history, so the running attempt's lease is 2.
var (
	runAt = t0.Add(time.Hour)
	// dueBeforeNow: a run-at still to come when the job was submitted (at
	// t0), but past by now.
	dueBeforeNow = t0.Add(30 * time.Second)
	submitted    = []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 2}}
	lastTry      = []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 1}}
	scheduled    = []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 2, RunAt: &runAt}}
	acquired1    = []any{events.TypeAcquired, events.Acquired{WorkerID: "w1", Attempt: 1}}
	cancelReq    = []any{events.TypeCancelRequested, events.CancelRequested{Reason: "stop"}}
	canceled     = []any{events.TypeCanceled, events.Canceled{By: events.CanceledByOperator}}
	succeeded    = []any{events.TypeSucceeded, events.Succeeded{Lease: 2}}
	failed       = []any{events.TypeFailed, events.Failed{Lease: 2, Attempt: 1, Error: "x"}}
	ackCancel    = []any{events.TypeCanceled, events.Canceled{By: events.CanceledByWorker, Lease: 2}}
	retryLater   = []any{events.TypeAttemptFailed, events.AttemptFailed{Lease: 2, Attempt: 1, Error: "x", RetryAt: t0.Add(time.Hour)}}
	handedBack   = []any{events.TypeReleased, events.Released{Lease: 2, Reason: "shutdown"}}
)

// histories reaches every state a job can be in, and the state before the
// first event.
var histories = map[State][]any{
	StateNew:       nil,
	StatePending:   submitted,
	StateScheduled: scheduled,
	StateRunning:   hist(submitted, acquired1),
	StateCanceling: hist(submitted, acquired1, cancelReq),
	StateCanceled:  hist(submitted, canceled),
	StateSucceeded: hist(submitted, acquired1, succeeded),
	StateFailed:    hist(submitted, acquired1, failed),
}

var testBackoff = BackoffConfig{Base: time.Second, Cap: time.Minute}

// command is one decider as a producer, a worker or the maintenance
// services call it. tr is the transition it asks the table for from a state.
// Fenced commands carry the lease of the attempt that holds the job.
type command struct {
	name   string
	fenced bool
	tr     func(s State) Transition
	do     func(j Job, now time.Time) (events.Event, error)
}

func always(tr Transition) func(State) Transition { return func(State) Transition { return tr } }

var (
	submitCmd = command{"submit", false, always(TransitionSubmit), func(j Job, now time.Time) (events.Event, error) {
		return decideSubmit("job1", SubmitParams{Type: "build", MaxAttempts: 2}, now)
	}}
	scheduleCmd = command{"submit with run-at", false, always(TransitionSchedule), func(j Job, now time.Time) (events.Event, error) {
		at := now.Add(time.Hour)
		return decideSubmit("job1", SubmitParams{Type: "build", MaxAttempts: 2, RunAt: &at}, now)
	}}
	cancelCmd = command{"cancel", false, func(s State) Transition {
		if s == StateRunning {
			return TransitionRequestCancel
		}
		return TransitionCancel
	}, func(j Job, now time.Time) (events.Event, error) { return decideCancel(j, "stop", now) }}
	cancelPendingCmd = command{"bulk cancel", false, always(TransitionCancel), func(j Job, now time.Time) (events.Event, error) {
		return decidePendingCancel(j, "outdated", now)
	}}
	// promoteCmd is the job's own timer firing: armed for its run-at.
	promoteCmd = command{"promote", false, always(TransitionPromote), func(j Job, now time.Time) (events.Event, error) {
		return decidePromote(j, j.RunAt, now)
	}}
	acquireCmd = command{"acquire", false, always(TransitionAcquire), func(j Job, now time.Time) (events.Event, error) {
		return decideAcquire(j, "w2", now)
	}}
	succeedCmd     = command{"succeed", true, always(TransitionSucceed), heldBy(succeedWith)}
	failCmd        = command{"fail", true, always(TransitionRetry), heldBy(failWith)}
	failNoRetryCmd = command{"fail without retry", true, always(TransitionFail), heldBy(func(lease uint64) decision {
		return func(j Job, now time.Time) (events.Event, error) {
			return decideFail(j, lease, FailParams{Error: "bad input", NoRetry: true}, testBackoff, now)
		}
	})}
	ackCancelCmd = command{"acknowledge cancel", true, always(TransitionAcknowledgeCancel), heldBy(ackCancelWith)}
	terminateCmd = command{"terminate canceling", false, always(TransitionAcknowledgeCancel), func(j Job, now time.Time) (events.Event, error) {
		return decideTerminateCanceling(j, "no acknowledgement", now)
	}}
	releaseCmd = command{"release", true, always(TransitionRelease), heldBy(releaseWith)}
)

type decision = func(j Job, now time.Time) (events.Event, error)

// The fenced deciders, reporting for the attempt that holds lease.
func succeedWith(lease uint64) decision {
	return func(j Job, now time.Time) (events.Event, error) {
		return decideSucceed(j, lease, json.RawMessage(`{"ok":true}`), now)
	}
}

func failWith(lease uint64) decision {
	return func(j Job, now time.Time) (events.Event, error) {
		return decideFail(j, lease, FailParams{Error: "boom", Code: "exit"}, testBackoff, now)
	}
}

func ackCancelWith(lease uint64) decision {
	return func(j Job, now time.Time) (events.Event, error) { return decideAcknowledgeCancel(j, lease, now) }
}

func releaseWith(lease uint64) decision {
	return func(j Job, now time.Time) (events.Event, error) { return decideRelease(j, lease, "shutdown", now) }
}

// heldBy reports with the job's current lease, as the worker holding it would.
func heldBy(with func(lease uint64) decision) decision {
	return func(j Job, now time.Time) (events.Event, error) { return with(j.Lease)(j, now) }
}

// TestDecide is the transition table as behavior: given a history, when a
// command is decided, then one event of a type (which folds onto the
// history, taking transition tr) or an error.
func TestDecide(t *testing.T) {
	type then struct {
		event string
		tr    Transition
		state State
		err   error
	}
	covered := map[edge]bool{}
	for _, tc := range []struct {
		name  string
		given []any
		when  func(j Job, now time.Time) (events.Event, error)
		then  then
	}{
		// Every transition of the table.
		{"submit", nil, submitCmd.do, then{events.TypeSubmitted, TransitionSubmit, StatePending, nil}},
		{"submit with a future run-at schedules", nil, scheduleCmd.do, then{events.TypeSubmitted, TransitionSchedule, StateScheduled, nil}},
		{"promote scheduled", scheduled, promoteCmd.do, then{events.TypePromoted, TransitionPromote, StatePending, nil}},
		{"acquire pending", submitted, acquireCmd.do, then{events.TypeAcquired, TransitionAcquire, StateRunning, nil}},
		{"cancel pending", submitted, cancelCmd.do, then{events.TypeCanceled, TransitionCancel, StateCanceled, nil}},
		{"cancel scheduled", scheduled, cancelCmd.do, then{events.TypeCanceled, TransitionCancel, StateCanceled, nil}},
		{"bulk cancel pending", submitted, cancelPendingCmd.do, then{events.TypeCanceled, TransitionCancel, StateCanceled, nil}},
		{"cancel running asks the worker", hist(submitted, acquired1), cancelCmd.do, then{events.TypeCancelRequested, TransitionRequestCancel, StateCanceling, nil}},
		{"worker acknowledges cancel", hist(submitted, acquired1, cancelReq), ackCancelCmd.do, then{events.TypeCanceled, TransitionAcknowledgeCancel, StateCanceled, nil}},
		{"terminate unacknowledged cancel", hist(submitted, acquired1, cancelReq), terminateCmd.do, then{events.TypeCanceled, TransitionAcknowledgeCancel, StateCanceled, nil}},
		{"succeed", hist(submitted, acquired1), succeedCmd.do, then{events.TypeSucceeded, TransitionSucceed, StateSucceeded, nil}},
		{"fail with attempts left retries", hist(submitted, acquired1), failCmd.do, then{events.TypeAttemptFailed, TransitionRetry, StateScheduled, nil}},
		{"fail the last attempt", hist(lastTry, acquired1), failCmd.do, then{events.TypeFailed, TransitionFail, StateFailed, nil}},
		{"fail without retry", hist(submitted, acquired1), failNoRetryCmd.do, then{events.TypeFailed, TransitionFail, StateFailed, nil}},
		{"release", hist(submitted, acquired1), releaseCmd.do, then{events.TypeReleased, TransitionRelease, StatePending, nil}},
		{"cancel by ID a job waiting for its retry", hist(submitted, acquired1, retryLater), cancelCmd.do, then{events.TypeCanceled, TransitionCancel, StateCanceled, nil}},

		// Illegal transitions.
		{"cancel canceled", histories[StateCanceled], cancelCmd.do, then{err: ErrIllegalTransition}},
		{"cancel canceling", histories[StateCanceling], cancelCmd.do, then{err: ErrIllegalTransition}},
		{"cancel succeeded", histories[StateSucceeded], cancelCmd.do, then{err: ErrIllegalTransition}},
		{"cancel failed", histories[StateFailed], cancelCmd.do, then{err: ErrIllegalTransition}},
		{"bulk cancel skips running", histories[StateRunning], cancelPendingCmd.do, then{err: ErrIllegalTransition}},
		{"bulk cancel skips canceling", histories[StateCanceling], cancelPendingCmd.do, then{err: ErrIllegalTransition}},
		{"bulk cancel skips a job waiting for its retry", hist(submitted, acquired1, retryLater), cancelPendingCmd.do, then{err: ErrTakenBefore}},
		{"bulk cancel skips a job handed back", hist(submitted, acquired1, handedBack), cancelPendingCmd.do, then{err: ErrTakenBefore}},
		{"acquire canceled (seed 000)", histories[StateCanceled], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire acknowledged-canceled", hist(submitted, acquired1, cancelReq, ackCancel), acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire succeeded", histories[StateSucceeded], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire failed", histories[StateFailed], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire running", histories[StateRunning], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire canceling", histories[StateCanceling], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"acquire scheduled before its time", histories[StateScheduled], acquireCmd.do, then{err: ErrIllegalTransition}},
		{"promote pending", histories[StatePending], promoteCmd.do, then{err: ErrIllegalTransition}},
		{"a stale timer does not promote", scheduled, func(j Job, now time.Time) (events.Event, error) {
			return decidePromote(j, &t0, now)
		}, then{err: ErrNotDue}},
		{"no promote before the run-at", scheduled, func(j Job, now time.Time) (events.Event, error) {
			return decidePromote(j, nil, now)
		}, then{err: ErrNotDue}},
		{"a promote once the run-at came", []any{events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 2, RunAt: &dueBeforeNow}},
			func(j Job, now time.Time) (events.Event, error) { return decidePromote(j, nil, now) },
			then{events.TypePromoted, TransitionPromote, StatePending, nil}},
		{"promote canceled", histories[StateCanceled], promoteCmd.do, then{err: ErrIllegalTransition}},
		{"succeed while canceling", histories[StateCanceling], succeedCmd.do, then{err: ErrIllegalTransition}},
		{"fail while canceling", histories[StateCanceling], failCmd.do, then{err: ErrIllegalTransition}},
		{"release while canceling", histories[StateCanceling], releaseCmd.do, then{err: ErrIllegalTransition}},
		{"acknowledge without a cancel request", histories[StateRunning], ackCancelCmd.do, then{err: ErrIllegalTransition}},
		{"terminate a running job", histories[StateRunning], terminateCmd.do, then{err: ErrIllegalTransition}},
		{"terminate a canceled job", histories[StateCanceled], terminateCmd.do, then{err: ErrIllegalTransition}},

		// Input a view could not show.
		{"cancel with a reason over its limit", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decideCancel(j, strings.Repeat("r", CancelReasonLimit+1), now)
		}, then{err: ErrInvalid}},
		{"bulk cancel with a reason over its limit", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decidePendingCancel(j, strings.Repeat("r", CancelReasonLimit+1), now)
		}, then{err: ErrInvalid}},
		{"cancel with an escape code in its reason", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decideCancel(j, "done\x1b[2J", now)
		}, then{err: ErrInvalid}},
		{"bulk cancel with a reason of two lines", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decidePendingCancel(j, "one\ntwo", now)
		}, then{err: ErrInvalid}},
		{"acquire with a worker ID over its limit", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decideAcquire(j, strings.Repeat("w", WorkerIDLimit+1), now)
		}, then{err: ErrInvalid}},
		{"acquire with no worker ID", submitted, func(j Job, now time.Time) (events.Event, error) {
			return decideAcquire(j, "", now)
		}, then{err: ErrInvalid}},

		// Fencing: a report from an attempt that does not hold the job.
		{"succeed with a stale lease", histories[StateRunning], succeedWith(1), then{err: ErrLeaseLost}},
		{"succeed with no lease", histories[StateRunning], succeedWith(0), then{err: ErrLeaseLost}},
		{"fail with a stale lease", histories[StateRunning], failWith(9), then{err: ErrLeaseLost}},
		{"release with a stale lease", histories[StateRunning], releaseWith(1), then{err: ErrLeaseLost}},
		{"acknowledge with a stale lease", histories[StateCanceling], ackCancelWith(1), then{err: ErrLeaseLost}},
		{"succeed a succeeded job", histories[StateSucceeded], succeedCmd.do, then{err: ErrLeaseLost}},
		{"succeed a pending job", histories[StatePending], succeedCmd.do, then{err: ErrLeaseLost}},
		{"release a canceled job", hist(submitted, acquired1, cancelReq, ackCancel), releaseWith(2), then{err: ErrLeaseLost}},
		{"fail a failed job", histories[StateFailed], failWith(2), then{err: ErrLeaseLost}},
		{"succeed the previous attempt after a retry", hist(submitted, acquired1,
			[]any{events.TypeAttemptFailed, events.AttemptFailed{Lease: 2, Attempt: 1, Error: "e", RetryAt: t0.Add(time.Second)}},
			[]any{events.TypePromoted, events.Promoted{}},
			[]any{events.TypeAcquired, events.Acquired{WorkerID: "w2", Attempt: 2}},
		), succeedWith(2), then{err: ErrLeaseLost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := fold(t, given(t, tc.given...))
			from := job.State
			ev, err := tc.when(job, now)
			if tc.then.err != nil {
				require.ErrorIs(t, err, tc.then.err)
				switch {
				case errors.Is(err, ErrIllegalTransition):
					var ite *IllegalTransitionError
					require.ErrorAs(t, err, &ite)
					require.Equal(t, "job1", ite.JobID)
					require.Equal(t, from, ite.State)
					require.NotEmpty(t, ite.Transition)
					require.Contains(t, err.Error(), "job1")
					require.Contains(t, err.Error(), string(from))
					require.Contains(t, err.Error(), string(ite.Transition))
				case errors.Is(err, ErrLeaseLost):
					var lle *LeaseLostError
					require.ErrorAs(t, err, &lle)
					require.Equal(t, "job1", lle.JobID)
					require.Equal(t, from, lle.Job.State)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.then.event, ev.Type)
			require.Equal(t, "job1", ev.JobID)
			require.NotEmpty(t, ev.ID)
			require.True(t, ev.Time.Equal(now))
			// The decided event folds onto the history, along the table.
			next := job
			require.NoError(t, next.Apply(events.Record{Event: ev, Seq: job.Version + 1, PrevSeq: job.Version}))
			require.Equal(t, tc.then.state, next.State)
			dst, err := Next("job1", from, tc.then.tr)
			require.NoError(t, err)
			require.Equal(t, dst, next.State)
			require.Equal(t, job.Version+1, next.Version)
			covered[edge{from, tc.then.tr}] = true
		})
	}
	for e := range edges {
		require.True(t, covered[e], "no case takes transition %s from %s", e.tr, e.from)
	}
}

// TestDecideFollowsTheTableEverywhere decides every command in every state: a
// command succeeds exactly where the table allows its transition; elsewhere a
// fenced report from a job that is not held gets a *LeaseLostError and every
// other refusal an *IllegalTransitionError naming the job, its state and the
// transition.
func TestDecideFollowsTheTableEverywhere(t *testing.T) {
	cmds := []command{cancelCmd, cancelPendingCmd, promoteCmd, acquireCmd, succeedCmd, failCmd, failNoRetryCmd, ackCancelCmd, terminateCmd, releaseCmd}
	for _, s := range States {
		job := fold(t, given(t, histories[s]...))
		require.Equal(t, s, job.State)
		for _, c := range cmds {
			t.Run(fmt.Sprintf("%s/%s", s, c.name), func(t *testing.T) {
				tr := c.tr(s)
				ev, err := c.do(job, now)
				dst, allowed := edges[edge{s, tr}]
				switch {
				case allowed:
					require.NoError(t, err)
					next := job
					require.NoError(t, next.Apply(events.Record{Event: ev, Seq: job.Version + 1, PrevSeq: job.Version}))
					require.Equal(t, dst, next.State)
				case c.fenced && s != StateRunning && s != StateCanceling:
					var lle *LeaseLostError
					require.ErrorAs(t, err, &lle)
					require.ErrorIs(t, err, ErrLeaseLost)
					require.Equal(t, s, lle.Job.State)
				default:
					var ite *IllegalTransitionError
					require.ErrorAs(t, err, &ite)
					require.ErrorIs(t, err, ErrIllegalTransition)
					require.Equal(t, IllegalTransitionError{JobID: "job1", State: s, Transition: tr}, *ite)
					require.Equal(t, fmt.Sprintf("job job1 is %s: cannot %s", s, tr), err.Error())
				}
			})
		}
	}
}

func TestFinishedStatesHaveNoWayOut(t *testing.T) {
	for _, s := range States {
		require.Equal(t, s.Finished(), len(TransitionsFrom(s)) == 0, "state %s", s)
	}
	require.Equal(t, []Transition{TransitionCancel, TransitionPromote}, TransitionsFrom(StateScheduled))
	for _, s := range []State{StateCanceled, StateSucceeded, StateFailed} {
		_, err := Next("job1", s, TransitionAcquire)
		require.ErrorIs(t, err, ErrIllegalTransition)
	}
	for _, s := range States {
		got, err := ParseState(string(s))
		require.NoError(t, err)
		require.Equal(t, s, got)
	}
	_, err := ParseState("new")
	require.ErrorIs(t, err, ErrInvalid)
}

func TestSubmitFoldsEverythingItWasGiven(t *testing.T) {
	at := now.Add(time.Hour)
	p := SubmitParams{
		Type: "build", Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"version": "7"},
		Payload: []byte("hello"), Priority: 5, MaxAttempts: 4, RunAt: &at, Key: "k1",
		Backoff: BackoffConfig{Base: time.Millisecond, Cap: time.Second},
	}
	ev, err := decideSubmit("job1", p, now)
	require.NoError(t, err)
	j := Job{State: StateNew}
	require.NoError(t, j.Apply(events.Record{Event: ev, Seq: 7}))
	require.Equal(t, StateScheduled, j.State)
	require.Equal(t, "job1", j.ID)
	require.Equal(t, "build", j.Type)
	require.Equal(t, p.Tags, j.Tags)
	require.Equal(t, p.Meta, j.Meta)
	require.Equal(t, p.Payload, j.Payload)
	require.Equal(t, 5, j.PayloadSize)
	require.Equal(t, 5, j.Priority)
	require.Equal(t, 4, j.MaxAttempts)
	require.Equal(t, "k1", j.Key)
	require.Equal(t, events.Backoff{Base: time.Millisecond, Cap: time.Second}, j.Backoff)
	require.True(t, j.RunAt.Equal(at))
	require.True(t, j.CreatedAt.Equal(now))
	require.Equal(t, uint64(7), j.Version)

	// A run-at in the past is now.
	past := now.Add(-time.Hour)
	ev, err = decideSubmit("job1", SubmitParams{Type: "build", RunAt: &past}, now)
	require.NoError(t, err)
	j = Job{State: StateNew}
	require.NoError(t, j.Apply(events.Record{Event: ev, Seq: 1}))
	require.Equal(t, StatePending, j.State)
	require.Nil(t, j.RunAt)

	// A delay runs from the submit's time; one past what a timer can hold
	// is refused.
	ev, err = decideSubmit("job1", SubmitParams{Type: "build", Delay: 90 * time.Second}, now)
	require.NoError(t, err)
	j = Job{State: StateNew}
	require.NoError(t, j.Apply(events.Record{Event: ev, Seq: 1}))
	require.Equal(t, StateScheduled, j.State)
	require.True(t, j.RunAt.Equal(now.Add(90*time.Second)))
	_, err = decideSubmit("job1", SubmitParams{Type: "build", Delay: time.Duration(1<<63 - 1)}, now)
	require.ErrorIs(t, err, ErrInvalid)
}

// A submit that no Machine would have appended (another publisher's) is
// skipped by the fold: the job stays unsubmitted rather than pending with
// a type no queue can hold or a priority no queue serves.
func TestFoldSkipsASubmitNoMachineWouldAppend(t *testing.T) {
	for name, d := range map[string]events.Submitted{
		"no type":           {MaxAttempts: 3},
		"type with a space": {Type: "bad type", MaxAttempts: 3},
		"priority 99":       {Type: "build", Priority: 99, MaxAttempts: 3},
		"negative priority": {Type: "build", Priority: -1, MaxAttempts: 3},
		"attempts -2":       {Type: "build", MaxAttempts: -2},
		"tag key 'a b'":     {Type: "build", Tags: map[string]string{"a b": "c"}, MaxAttempts: 3},
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := events.New("job1", events.TypeSubmitted, d)
			require.NoError(t, err)
			j := Job{State: StateNew}
			require.ErrorIs(t, j.Apply(events.Record{Event: ev, Seq: 1}), events.ErrMalformed)
			require.Equal(t, StateNew, j.State)
		})
	}
}

// An acquire numbered other than after the attempts used (another
// publisher's) is skipped: a hand-published attempt -3 had a job run past
// its max attempts.
func TestFoldSkipsAnAcquireOfAnotherAttempt(t *testing.T) {
	for _, attempt := range []int{-3, 0, 2} {
		t.Run(fmt.Sprint(attempt), func(t *testing.T) {
			recs := given(t, hist(submitted)...)
			ev, err := events.New("job1", events.TypeAcquired, events.Acquired{WorkerID: "w", Attempt: attempt})
			require.NoError(t, err)
			j, q := Fold(append(recs, events.Record{Event: ev, Seq: 2, PrevSeq: 1}))
			require.Len(t, q, 1)
			require.ErrorIs(t, q[0].Reason, events.ErrMalformed)
			require.Equal(t, StatePending, j.State)
			require.Zero(t, j.Attempt)
		})
	}
}

func TestFoldTracksAttemptsLeasesAndErrors(t *testing.T) {
	recs := given(t, hist(submitted, acquired1,
		[]any{events.TypeAttemptFailed, events.AttemptFailed{Lease: 2, Attempt: 1, Error: "e1", Code: "exit", RetryAt: t0.Add(time.Minute)}},
		[]any{events.TypePromoted, events.Promoted{}},
		[]any{events.TypeAcquired, events.Acquired{WorkerID: "w2", Attempt: 2}},
		[]any{events.TypeReleased, events.Released{Lease: 5, Reason: "shutdown"}},
		[]any{events.TypeAcquired, events.Acquired{WorkerID: "w3", Attempt: 2}},
		[]any{events.TypeFailed, events.Failed{Lease: 7, Attempt: 2, Error: "e2", Code: "hung"}},
	)...)

	j := fold(t, recs[:2])
	require.Equal(t, StateRunning, j.State)
	require.Equal(t, uint64(2), j.Lease)
	require.Equal(t, "w1", j.WorkerID)
	require.NotNil(t, j.StartedAt)

	j = fold(t, recs[:3])
	require.Equal(t, StateScheduled, j.State)
	require.Zero(t, j.Lease, "a failed attempt holds nothing")
	require.Empty(t, j.WorkerID, "a job waiting to retry is held by no one")
	require.True(t, j.RunAt.Equal(t0.Add(time.Minute)))

	j = fold(t, recs[:6])
	require.Equal(t, StatePending, j.State)
	require.Equal(t, 1, j.Attempt, "a released attempt does not count")
	require.Zero(t, j.Lease)
	require.Empty(t, j.WorkerID)

	j = fold(t, recs)
	require.Equal(t, StateFailed, j.State)
	require.Equal(t, 2, j.Attempt)
	require.Equal(t, "e2", j.Error)
	require.Equal(t, "hung", j.ErrorCode)
	require.Equal(t, "w3", j.WorkerID, "a failed job keeps its last worker")
	require.Equal(t, []AttemptError{
		{Attempt: 1, Error: "e1", Code: "exit", WorkerID: "w1", At: t0.Add(3 * time.Second)},
		{Attempt: 2, Error: "e2", Code: "hung", WorkerID: "w3", At: t0.Add(8 * time.Second)},
	}, j.Errors)
	require.NotNil(t, j.CompletedAt)
	require.Equal(t, uint64(8), j.Version)
	require.Equal(t, 8, j.Events)
}

func TestFoldCancels(t *testing.T) {
	j := fold(t, given(t, hist(submitted, acquired1, cancelReq, ackCancel)...))
	require.Equal(t, StateCanceled, j.State)
	require.Equal(t, "stop", j.CancelReason, "the request's reason is kept")
	require.Equal(t, events.CanceledByWorker, j.CanceledBy)
	require.NotNil(t, j.CancelRequestedAt)
	require.NotNil(t, j.CanceledAt)
	require.Equal(t, j.CanceledAt, j.CompletedAt)

	j = fold(t, given(t, hist(submitted, []any{events.TypeCanceled, events.Canceled{Reason: "outdated", By: events.CanceledByOperator}})...))
	require.Equal(t, StateCanceled, j.State)
	require.Equal(t, "outdated", j.CancelReason)
	require.Equal(t, events.CanceledByOperator, j.CanceledBy)
	require.Nil(t, j.StartedAt)

	timedOut := []any{events.TypeCanceled, events.Canceled{Reason: "cancel_timeout", By: events.CanceledByTimeout}}
	j = fold(t, given(t, hist(submitted, acquired1, cancelReq, timedOut)...))
	require.Equal(t, "stop", j.CancelReason, "the operator's reason outlives the server's code")
	require.Equal(t, events.CanceledByTimeout, j.CanceledBy)
	noReason := []any{events.TypeCancelRequested, events.CancelRequested{}}
	j = fold(t, given(t, hist(submitted, acquired1, noReason, timedOut)...))
	require.Equal(t, "cancel_timeout", j.CancelReason, "without an operator's reason, the server's")
}

func TestFoldQuarantinesBadRecordsButAdvancesVersion(t *testing.T) {
	recs := given(t, hist(submitted, acquired1)...)
	at := func(rec events.Record, seq uint64) events.Record {
		rec.Seq, rec.PrevSeq = seq, seq-1
		return rec
	}
	third := func(ev []any) events.Record { return given(t, hist(submitted, acquired1, ev)...)[2] }
	bad := []struct {
		rec  events.Record
		want error
	}{
		{events.Record{Seq: 3, Err: fmt.Errorf("%w: not json", events.ErrMalformed), Raw: []byte("garbage")}, events.ErrMalformed},
		{at(events.Record{Event: events.Event{ID: "u", JobID: "job1", Type: "job.exploded", Time: t0}}, 4), events.ErrUnknownType},
		{at(third([]any{events.TypePromoted, events.Promoted{}}), 5), ErrIllegalTransition},
		{at(third([]any{events.TypeSucceeded, events.Succeeded{Lease: 99}}), 6), ErrLeaseLost},
		{at(third([]any{events.TypeCanceled, events.Canceled{By: events.CanceledByWorker, Lease: 99}}), 7), ErrIllegalTransition},
		{at(third(submitted), 8), ErrIllegalTransition},
		{at(third(acquired1), 9), ErrIllegalTransition},
		{at(events.Record{Event: events.Event{ID: "d", JobID: "job1", Type: events.TypeSucceeded, Time: t0, Data: json.RawMessage(`"lease"`)}}, 10), events.ErrMalformed},
		{at(events.Record{Event: events.Event{ID: "o", JobID: "job2", Type: events.TypeSucceeded, Time: t0, Data: json.RawMessage(`{"lease":2}`)}}, 11), events.ErrMalformed},
	}
	all := recs
	for _, b := range bad {
		all = append(all, b.rec)
	}
	j, q := Fold(all)
	require.Len(t, q, len(bad))
	for i, b := range bad {
		require.ErrorIs(t, q[i].Reason, b.want, "record %d", i)
		require.Equal(t, b.rec.Seq, q[i].Record.Seq)
	}
	require.Equal(t, fold(t, recs).State, j.State)
	require.Equal(t, StateRunning, j.State)
	require.Equal(t, uint64(2), j.Lease)
	require.Equal(t, uint64(11), j.Version, "the version is the last sequence, bad or not")
	require.Equal(t, len(bad), j.Quarantined)
	require.Equal(t, 2, j.Events)

	// A good event after the quarantined ones still folds, and a decider
	// appends after the bad records.
	j2, q2 := Fold(append(all, at(third(succeeded), 12)))
	require.Len(t, q2, len(bad))
	require.Equal(t, StateSucceeded, j2.State)
	require.Equal(t, uint64(12), j2.Version)

	// A forged acquisition of a canceled job (seed 000) is quarantined: the
	// job stays canceled.
	forged := given(t, hist(submitted, canceled, acquired1)...)
	j3, q3 := Fold(forged)
	require.Len(t, q3, 1)
	require.ErrorIs(t, q3[0].Reason, ErrIllegalTransition)
	require.Equal(t, StateCanceled, j3.State)
	require.Zero(t, j3.Lease)
	require.Equal(t, uint64(3), j3.Version)

	// A history with no valid submit stays new.
	j4, q4 := Fold([]events.Record{{Seq: 1, Err: events.ErrMalformed}})
	require.Len(t, q4, 1)
	require.Equal(t, StateNew, j4.State)
	require.Equal(t, uint64(1), j4.Version)
}

func TestRetryDelayGrowsWithinJitterAndCap(t *testing.T) {
	cfg := BackoffConfig{Base: time.Second, Cap: 10 * time.Second}
	prevD, prevHi := time.Duration(0), time.Duration(0)
	for attempt := 1; attempt <= 8; attempt++ {
		d := min(time.Second<<(attempt-1), 10*time.Second)
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for i := 0; i < 200; i++ {
			got := RetryDelay(Job{Attempt: attempt}, cfg)
			require.GreaterOrEqual(t, got, d/2, "attempt %d", attempt)
			require.LessOrEqual(t, got, d, "attempt %d", attempt)
			lo, hi = min(lo, got), max(hi, got)
		}
		require.Greater(t, hi, lo, "attempt %d: no jitter", attempt)
		// Grows with the attempt: below the cap, an attempt's shortest delay
		// is at least the previous attempt's longest.
		if d == 2*prevD {
			require.GreaterOrEqual(t, lo, prevHi, "attempt %d", attempt)
		}
		prevD, prevHi = d, hi
	}
	// A job's own backoff wins over the defaults, field by field.
	for i := 0; i < 50; i++ {
		got := RetryDelay(Job{Attempt: 1, Backoff: events.Backoff{Base: 100 * time.Millisecond}}, cfg)
		require.GreaterOrEqual(t, got, 50*time.Millisecond)
		require.LessOrEqual(t, got, 100*time.Millisecond)
		got = RetryDelay(Job{Attempt: 10, Backoff: events.Backoff{Cap: 3 * time.Second}}, cfg)
		require.GreaterOrEqual(t, got, 1500*time.Millisecond)
		require.LessOrEqual(t, got, 3*time.Second)
	}
	// With no configuration at all, the package defaults.
	got := RetryDelay(Job{Attempt: 1}, BackoffConfig{})
	require.GreaterOrEqual(t, got, BackoffBaseDefault/2)
	require.LessOrEqual(t, got, BackoffBaseDefault)
	got = RetryDelay(Job{Attempt: 1000}, BackoffConfig{})
	require.GreaterOrEqual(t, got, BackoffCapDefault/2)
	require.LessOrEqual(t, got, BackoffCapDefault)
}

// TestRetryDelayDoesNotOverflow: Submit accepts no backoff over
// BackoffLimit, but a log written before the limit may hold any, so a cap
// near the largest duration must neither overflow the doubling nor panic in
// the jitter (which would crash the worker reporting the failure).
func TestRetryDelayDoesNotOverflow(t *testing.T) {
	const huge = time.Duration(1<<63 - 1)
	for _, tc := range []struct {
		base    time.Duration
		attempt int
	}{
		{time.Second, 35},
		{time.Second, 64},
		{time.Second, 1000},
		{100 * 365 * 24 * time.Hour, 2},
		{200 * 365 * 24 * time.Hour, 2},
	} {
		t.Run(fmt.Sprintf("base=%s/attempt=%d", tc.base, tc.attempt), func(t *testing.T) {
			got, panicked := func() (d time.Duration, panicked any) {
				defer func() { panicked = recover() }()
				return RetryDelay(Job{Attempt: tc.attempt, Backoff: events.Backoff{Base: tc.base, Cap: huge}}, BackoffConfig{}), nil
			}()
			require.Nil(t, panicked, "RetryDelay panicked")
			// The delay never shrinks below the previous attempt's floor.
			require.GreaterOrEqual(t, got, tc.base/2)
		})
	}
}

var defaultBackoff = BackoffConfig{Base: BackoffBaseDefault, Cap: BackoffCapDefault}

func TestSubmitValidation(t *testing.T) {
	long := strings.Repeat("k", 129)
	tooMany := map[string]string{}
	for i := 0; i <= 32; i++ {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, tc := range []struct {
		name string
		p    SubmitParams
		want error
		msg  string
	}{
		{"no type", SubmitParams{Type: ""}, ErrInvalid, "type"},
		{"type with a dot", SubmitParams{Type: "a.b"}, ErrInvalid, "type"},
		{"type with a wildcard", SubmitParams{Type: "a*"}, ErrInvalid, "type"},
		{"type too long", SubmitParams{Type: long}, ErrInvalid, "type"},
		{"type far too long, shown cut", SubmitParams{Type: strings.Repeat("é", 5000)}, ErrInvalid, `type "` + strings.Repeat("é", 32) + `"… (10000 bytes), expected`},
		{"tag key with a space", SubmitParams{Type: "t", Tags: map[string]string{"bad key": "v"}}, ErrInvalid, "tag key"},
		{"tag key with a dot", SubmitParams{Type: "t", Tags: map[string]string{"a.b": "v"}}, ErrInvalid, "tag key"},
		{"tag key with '>'", SubmitParams{Type: "t", Tags: map[string]string{"a>": "v"}}, ErrInvalid, "tag key"},
		{"empty tag key", SubmitParams{Type: "t", Tags: map[string]string{"": "v"}}, ErrInvalid, "tag key"},
		{"tag value with a control character", SubmitParams{Type: "t", Tags: map[string]string{"k": "line\nbreak"}}, ErrInvalid, "control character"},
		{"tag value too long", SubmitParams{Type: "t", Tags: map[string]string{"k": long}}, ErrInvalid, "129 bytes"},
		{"too many tags", SubmitParams{Type: "t", Tags: tooMany}, ErrInvalid, "33 tag"},
		{"meta key", SubmitParams{Type: "t", Meta: map[string]string{"a b": "v"}}, ErrInvalid, "meta key"},
		{"payload over the limit", SubmitParams{Type: "t", Payload: make([]byte, 11)}, ErrPayloadTooLarge, "11 bytes, the limit is 10"},
		{"priority above range", SubmitParams{Type: "t", Priority: PriorityMax + 1}, ErrInvalid, "priority"},
		{"priority below range", SubmitParams{Type: "t", Priority: PriorityMin - 1}, ErrInvalid, "priority"},
		// 0 is the default, so a message saying 1-1000 hid it.
		{"negative max attempts", SubmitParams{Type: "t", MaxAttempts: -1}, ErrInvalid, "max attempts -1, expected 0 (the default, 3) to 1000"},
		{"too many attempts", SubmitParams{Type: "t", MaxAttempts: 1001}, ErrInvalid, "max attempts 1001, expected 0 (the default, 3) to 1000"},
		// "negative backoff" named neither the field nor what it takes.
		{"negative backoff", SubmitParams{Type: "t", Backoff: BackoffConfig{Base: -1}}, ErrInvalid, "backoff base -1ns, expected 0 (the default) or more"},
		{"negative backoff cap", SubmitParams{Type: "t", Backoff: BackoffConfig{Cap: -time.Second}}, ErrInvalid, "backoff cap -1s, expected 0 (the default) or more"},
		{"key too long", SubmitParams{Type: "t", Key: strings.Repeat("k", 257)}, ErrInvalid, "idempotency key"},
		{"key not UTF-8", SubmitParams{Type: "t", Key: "k\xff"}, ErrInvalid, "not valid UTF-8"},
		{"tag value not UTF-8", SubmitParams{Type: "t", Tags: map[string]string{"k": "\xff"}}, ErrInvalid, "not valid UTF-8"},
		{"meta value not UTF-8", SubmitParams{Type: "t", Meta: map[string]string{"k": "\xfe"}}, ErrInvalid, "not valid UTF-8"},
		{"tag value with a comma", SubmitParams{Type: "t", Tags: map[string]string{"gpu": "true,region=eu"}}, ErrInvalid, "each tag its own k=v"},
		{"backoff base over the limit", SubmitParams{Type: "t", Backoff: BackoffConfig{Base: BackoffLimit + 1}}, ErrInvalid, "backoff"},
		{"backoff cap over the limit", SubmitParams{Type: "t", Backoff: BackoffConfig{Cap: time.Duration(1<<63 - 1)}}, ErrInvalid, "backoff"},
		{"run-at past what a timer can hold", SubmitParams{Type: "t", RunAt: ptr(time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC))}, ErrInvalid, "run-at 2300"},
		{"negative delay", SubmitParams{Type: "t", Delay: -time.Second}, ErrInvalid, "delay -1s"},
		{"a delay and a run-at", SubmitParams{Type: "t", Delay: time.Second, RunAt: ptr(time.Now())}, ErrInvalid, "expected one of them"},
		{"delay past what a timer can hold", SubmitParams{Type: "t", Delay: time.Duration(1<<63 - 1)}, ErrInvalid, "expected a shorter delay"},
		// The base not given is said to be the default, and to be given:
		// "backoff base 1s is above its cap" named a base the caller never set.
		{"a cap under the default base", SubmitParams{Type: "t", Backoff: BackoffConfig{Cap: 500 * time.Millisecond}}, ErrInvalid,
			"backoff base 1s (the default) is above its cap 500ms, expected base <= cap: give a base too"},
		{"a base over the default cap", SubmitParams{Type: "t", Backoff: BackoffConfig{Base: 11 * time.Minute}}, ErrInvalid,
			"backoff base 11m0s is above its cap 10m0s (the default), expected base <= cap: give a cap too"},
		{"a base over its cap", SubmitParams{Type: "t", Backoff: BackoffConfig{Base: 2 * time.Second, Cap: time.Second}}, ErrInvalid,
			"backoff base 2s is above its cap 1s, expected base <= cap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.validate(10, defaultBackoff)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), tc.msg)
		})
	}
	// Only the payload limit matches ErrPayloadTooLarge.
	p := SubmitParams{Type: "t", Priority: 99}
	require.NotErrorIs(t, p.validate(10, defaultBackoff), ErrPayloadTooLarge)

	p = SubmitParams{Type: "t", Meta: map[string]string{"note": "a, b"}, Backoff: BackoffConfig{Base: BackoffLimit, Cap: BackoffLimit},
		RunAt: ptr(RunAtLimit.Add(-time.Second))}
	require.NoError(t, p.validate(10, defaultBackoff), "a meta value may hold a comma; the limits themselves are fine")

	// A base above the default cap is fine when the cap it takes is higher.
	p = SubmitParams{Type: "t", Backoff: BackoffConfig{Base: 20 * time.Minute}}
	require.ErrorIs(t, p.validate(10, defaultBackoff), ErrInvalid)
	require.NoError(t, p.validate(10, BackoffConfig{Base: time.Minute, Cap: time.Hour}))

	p = SubmitParams{Type: "build-2_x", Tags: map[string]string{"scope": "organization", "gpu": "true"}, Payload: make([]byte, 10), Priority: PriorityMax}
	require.NoError(t, p.validate(10, defaultBackoff), "a payload of exactly the limit is fine")
	require.Equal(t, MaxAttemptsDefault, p.MaxAttempts)
}

func TestJobIDForKeyIsDeterministic(t *testing.T) {
	a := JobIDForKey("deploy-42")
	require.Equal(t, a, JobIDForKey("deploy-42"))
	require.NotEqual(t, a, JobIDForKey("deploy-43"))
	require.NoError(t, events.ValidateJobID(a))
}

// mermaidArrow matches the lines of the diagram that are transitions.
func mermaidArrows(diagram string) []string {
	var out []string
	for _, line := range strings.Split(diagram, "\n") {
		line = strings.TrimSpace(line)
		if strings.Contains(line, "-->") && !strings.HasPrefix(line, "[*]") {
			out = append(out, line)
		}
	}
	sort.Strings(out)
	return out
}

func TestMermaidShowsEveryTransition(t *testing.T) {
	diagram := Mermaid()
	require.Equal(t, diagram, Mermaid(), "the diagram is deterministic")
	require.Contains(t, diagram, "stateDiagram")
	var want []string
	for _, ev := range table {
		for _, src := range ev.Src {
			want = append(want, src+" --> "+ev.Dst+": "+ev.Name)
		}
	}
	sort.Strings(want)
	require.Equal(t, want, mermaidArrows(diagram), "the diagram shows the table, no more and no less")
	for e, dst := range edges {
		require.Contains(t, diagram, fmt.Sprintf("%s --> %s: %s", e.from, dst, e.tr))
	}
}

func TestReadmeShowsTheStateDiagram(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("README.md does not exist yet")
	}
	require.NoError(t, err)
	diagram := strings.TrimSpace(Mermaid())
	require.True(t, strings.Contains(string(readme), diagram),
		"README.md's state diagram differs from statemachine.Mermaid(); paste:\n%s", diagram)
}

func TestErrorTextIsCutAtACharacter(t *testing.T) {
	long := strings.Repeat("é", ErrorTextLimit) // two bytes each
	for name, tc := range map[string]struct {
		given    string
		keptLen  int
		cutBytes int
	}{
		"short stays":           {given: "boom", keptLen: 4},
		"at the limit stays":    {given: strings.Repeat("x", ErrorTextLimit), keptLen: ErrorTextLimit},
		"ASCII cut at limit":    {given: strings.Repeat("x", ErrorTextLimit+10), keptLen: ErrorTextLimit, cutBytes: 10},
		"a character not split": {given: "x" + long, keptLen: ErrorTextLimit - 1, cutBytes: 2*ErrorTextLimit + 1 - (ErrorTextLimit - 1)},
	} {
		got := ClipText(tc.given, ErrorTextLimit)
		require.True(t, utf8.ValidString(got), name)
		require.True(t, strings.HasPrefix(tc.given, got[:tc.keptLen]), name)
		if tc.cutBytes == 0 {
			require.Equal(t, tc.given, got, name)
			continue
		}
		require.Equal(t, fmt.Sprintf("%s… (%d more bytes cut)", tc.given[:tc.keptLen], tc.cutBytes), got, name)
	}
}

// What a worker or the hang detector reports is never refused for its
// length: an error code, a hand-back's reason, and the reason of a cancel
// the detector finishes, are cut instead.
func TestReportedTextIsCutNotRefused(t *testing.T) {
	running := fold(t, given(t, hist(submitted, acquired1)...))
	ev, err := decideFail(running, running.Lease, FailParams{Error: "e", Code: strings.Repeat("c", ErrorCodeLimit+10), NoRetry: true}, BackoffConfig{}, now)
	require.NoError(t, err)
	var failed events.Failed
	require.NoError(t, json.Unmarshal(ev.Data, &failed))
	require.Equal(t, ClipText(strings.Repeat("c", ErrorCodeLimit+10), ErrorCodeLimit), failed.Code)
	require.True(t, strings.HasPrefix(failed.Code, strings.Repeat("c", ErrorCodeLimit)))

	canceling := fold(t, given(t, hist(submitted, acquired1, cancelReq)...))
	ev, err = decideTerminateCanceling(canceling, strings.Repeat("r", CancelReasonLimit+10), now)
	require.NoError(t, err)
	var canceled events.Canceled
	require.NoError(t, json.Unmarshal(ev.Data, &canceled))
	require.Less(t, len(canceled.Reason), CancelReasonLimit+40)

	// A hand-back's reason (Machine.Release takes any) was kept whole: a
	// 100 KB one was appended, and kept for as long as the job.
	ev, err = decideRelease(running, running.Lease, strings.Repeat("r", 100_000), now)
	require.NoError(t, err)
	var released events.Released
	require.NoError(t, json.Unmarshal(ev.Data, &released))
	require.Equal(t, ClipText(strings.Repeat("r", 100_000), CancelReasonLimit), released.Reason)
}

// A command that lost a race to a change that made it illegal says so once:
// the job and its state, as an illegal transition does, and that the job
// changed under it.
func TestALostRaceNamesTheJobAndItsStateOnce(t *testing.T) {
	err := &ConflictError{JobID: "j1", Job: Job{ID: "j1", State: StateCanceled},
		Cause: &IllegalTransitionError{JobID: "j1", State: StateCanceled, Transition: TransitionCancel}}
	require.Equal(t, "job j1 is canceled: cannot cancel (it changed concurrently)", err.Error())
	require.ErrorIs(t, err, ErrIllegalTransition)
	require.ErrorIs(t, err, ErrConflict)
}
