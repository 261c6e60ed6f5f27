package projector

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// foldOf folds hand-made events of one job, each following the previous.
func foldOf(t *testing.T, id string, evs ...events.Event) statemachine.Job {
	t.Helper()
	var recs []events.Record
	for i, ev := range evs {
		ev.JobID = id
		recs = append(recs, events.Record{Event: ev, Seq: uint64(10 * (i + 1)), PrevSeq: uint64(10 * i)})
	}
	job, bad := statemachine.Fold(recs)
	require.Empty(t, bad)
	return job
}

func event(t *testing.T, typ string, at time.Time, data any) events.Event {
	t.Helper()
	ev, err := events.New("job-1", typ, data)
	require.NoError(t, err)
	ev.Time = at
	return ev
}

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)

func runningJob(t *testing.T) statemachine.Job {
	return foldOf(t, "job-1",
		event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", Tags: map[string]string{"region": "eu"}, MaxAttempts: 2}),
		event(t, events.TypeAcquired, t0.Add(time.Second), events.Acquired{WorkerID: "w1", Attempt: 1}))
}

func TestViewHasEveryFieldEvenWhenEmpty(t *testing.T) {
	raw, err := json.Marshal(ViewOf(runningJob(t), nil))
	require.NoError(t, err)
	var fields map[string]any
	require.NoError(t, json.Unmarshal(raw, &fields))
	for _, k := range []string{"id", "type", "tags", "meta", "state", "priority", "attempt", "max_attempts",
		"worker_id", "error", "error_code", "errors", "cancel_reason", "run_at", "key", "lease", "created_at",
		"started_at", "updated_at", "completed_at", "canceled_at", "heartbeat_at", "version", "payload_size"} {
		require.Contains(t, fields, k)
	}
	require.Equal(t, []any{}, fields["errors"])
	require.Equal(t, map[string]any{}, fields["meta"])
	require.Equal(t, "2026-11-22T10:00:00.123456789Z", fields["created_at"], "RFC 3339")
	require.Equal(t, float64(20), fields["version"])
	require.Equal(t, float64(20), fields["lease"])
}

func TestHeartbeatCountsOnlyForTheHoldingAttemptAfterTheLastEvent(t *testing.T) {
	job := runningJob(t)
	lastEvent := t0.Add(time.Second)
	later := lastEvent.Add(time.Minute)
	for _, tc := range []struct {
		name  string
		job   statemachine.Job
		beat  *events.Beat
		count bool
	}{
		{"no beat", job, nil, false},
		{"holding attempt, later", job, &events.Beat{Lease: job.Lease, At: later}, true},
		{"holding attempt, not later than the last event", job, &events.Beat{Lease: job.Lease, At: lastEvent}, false},
		{"another attempt", job, &events.Beat{Lease: job.Lease + 1, At: later}, false},
		{"finished job", foldOf(t, "job-1",
			event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 1}),
			event(t, events.TypeAcquired, t0, events.Acquired{WorkerID: "w1", Attempt: 1}),
			event(t, events.TypeSucceeded, t0, events.Succeeded{Lease: 20})), &events.Beat{Lease: 20, At: later}, false},
		{"canceling job", foldOf(t, "job-1",
			event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 1}),
			event(t, events.TypeAcquired, t0, events.Acquired{WorkerID: "w1", Attempt: 1}),
			event(t, events.TypeCancelRequested, t0, events.CancelRequested{})), &events.Beat{Lease: 20, At: later}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := ViewOf(tc.job, tc.beat)
			if !tc.count {
				require.Nil(t, v.HeartbeatAt)
				require.True(t, v.UpdatedAt.Equal(tc.job.UpdatedAt))
				return
			}
			require.NotNil(t, v.HeartbeatAt)
			require.True(t, v.HeartbeatAt.Equal(later))
			require.True(t, v.UpdatedAt.Equal(later))
			require.True(t, v.LastEventAt.Equal(tc.job.UpdatedAt))
		})
	}
}

// plainView encodes a View with encoding/json's reflection, the reference
// for MarshalJSON.
type plainView View

func TestMarshalJSONIsEncodingJSON(t *testing.T) {
	job := foldOf(t, "job-1",
		event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 3, Priority: 7, Key: "k<&>",
			Tags:    map[string]string{"b": "2", "a": "1", "html": "<a href=\"x\">&</a>"},
			Meta:    map[string]string{"ünï": "cødé\u2028\t\x01", "quote": `"\`},
			Backoff: &events.Backoff{Base: time.Second}, Payload: []byte("12345")}),
		event(t, events.TypeAcquired, t0.Add(time.Second), events.Acquired{WorkerID: "w1", Attempt: 1}),
		event(t, events.TypeAttemptFailed, t0.Add(2*time.Second), events.AttemptFailed{Lease: 20, Attempt: 1, Error: "exit <1>", Code: "E1", RetryAt: t0.Add(time.Hour)}),
		event(t, events.TypePromoted, t0.Add(3*time.Second), events.Promoted{}),
		event(t, events.TypeAcquired, t0.Add(4*time.Second), events.Acquired{WorkerID: "w2", Attempt: 2}),
		event(t, events.TypeSucceeded, t0.Add(5*time.Second), events.Succeeded{Lease: 50, Result: json.RawMessage(`{ "ok" : true, "h": "<>" }`)}),
	)
	views := []View{
		ViewOf(job, nil),
		ViewOf(runningJob(t), &events.Beat{Lease: 20, At: t0.Add(time.Hour)}),
		{}, // nil maps and slices
		{Backoff: &events.Backoff{Cap: time.Minute}, CancelRequestedAt: &t0, Errors: []statemachine.AttemptError{{Attempt: 1}, {Attempt: 2, Code: "hung", WorkerID: "w<1>"}}},
		{CancelReason: "outdated", CanceledBy: events.CanceledByTimeout},
	}
	for i, v := range views {
		want, err := json.Marshal(plainView(v))
		require.NoError(t, err)
		got, err := v.MarshalJSON()
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "view %d", i)
		viaMarshal, err := json.Marshal(v)
		require.NoError(t, err)
		require.Equal(t, string(want), string(viaMarshal), "view %d", i)
	}
}

func TestViewRestoresItsFold(t *testing.T) {
	job := foldOf(t, "job-1",
		event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 3, Backoff: &events.Backoff{Cap: time.Minute}}),
		event(t, events.TypeAcquired, t0.Add(time.Second), events.Acquired{WorkerID: "w1", Attempt: 1}),
		event(t, events.TypeAttemptFailed, t0.Add(2*time.Second), events.AttemptFailed{Lease: 20, Attempt: 1, Error: "boom", RetryAt: t0.Add(time.Hour)}),
		event(t, events.TypePromoted, t0.Add(3*time.Second), events.Promoted{}),
		event(t, events.TypeAcquired, t0.Add(4*time.Second), events.Acquired{WorkerID: "w2", Attempt: 2}),
	)
	v := ViewOf(job, &events.Beat{Lease: job.Lease, At: t0.Add(time.Hour)})
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	var stored View
	require.NoError(t, json.Unmarshal(raw, &stored))
	again, err := json.Marshal(ViewOf(stored.Job(), stored.beat()))
	require.NoError(t, err)
	require.Equal(t, string(raw), string(again))

	// One more event on the restored fold gives the view of the whole fold.
	next := event(t, events.TypeFailed, t0.Add(5*time.Second), events.Failed{Lease: job.Lease, Attempt: 2, Error: "again"})
	full, restored := job, stored.Job()
	rec := events.Record{Event: next, Seq: 60, PrevSeq: 50}
	rec.JobID = "job-1"
	require.NoError(t, full.Apply(rec))
	require.NoError(t, restored.Apply(rec))
	a, _ := json.Marshal(ViewOf(full, nil))
	b, _ := json.Marshal(ViewOf(restored, nil))
	require.Equal(t, string(a), string(b))
	require.Len(t, ViewOf(restored, nil).Errors, 2)
	require.Len(t, stored.Errors, 1, "the stored view is not written through")
}

// A stored view restores its fold field for field (but the payload, which
// it does not keep): tags, meta and errors that the job has none of are nil,
// as the fold has them, whether the view was read from the bucket (where it
// holds {} and []) or made in memory. Read from the bucket they came back
// empty and not nil, so a job restored from a view was not the job
// Machine.Load gives, and encoded (as a queue message encodes a job, its
// zero fields left out) it carried "Tags":{},"Meta":{},"Errors":[].
func TestViewRestoresItsFoldFieldForField(t *testing.T) {
	for name, job := range map[string]statemachine.Job{
		"no tags, meta or errors": foldOf(t, "job-1",
			event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 1, Payload: []byte("{}")})),
		"tags, meta and an error": foldOf(t, "job-1",
			event(t, events.TypeSubmitted, t0, events.Submitted{Type: "build", MaxAttempts: 3,
				Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"v": "2"}}),
			event(t, events.TypeAcquired, t0.Add(time.Second), events.Acquired{WorkerID: "w1", Attempt: 1}),
			event(t, events.TypeAttemptFailed, t0.Add(2*time.Second), events.AttemptFailed{Lease: 20, Attempt: 1, Error: "boom", RetryAt: t0.Add(time.Hour)})),
	} {
		t.Run(name, func(t *testing.T) {
			want := job
			want.Payload = nil
			raw, err := json.Marshal(ViewOf(job, nil))
			require.NoError(t, err)
			var stored View
			require.NoError(t, json.Unmarshal(raw, &stored))
			require.Equal(t, want, stored.Job(), "read from the bucket")
			require.Equal(t, want, ViewOf(job, nil).Job(), "made in memory")
			wantJSON, err := json.Marshal(want)
			require.NoError(t, err)
			gotJSON, err := json.Marshal(stored.Job())
			require.NoError(t, err)
			require.JSONEq(t, string(wantJSON), string(gotJSON))
			// The view written again from the restored job is the same
			// bytes: still "tags":{} and "errors":[], as get and ls show.
			again, err := json.Marshal(ViewOf(stored.Job(), nil))
			require.NoError(t, err)
			require.Equal(t, string(raw), string(again))
		})
	}
}

func TestFilterMatches(t *testing.T) {
	v := View{State: statemachine.StatePending, Type: "build",
		Tags: map[string]string{"region": "eu", "gpu": "true"}, Meta: map[string]string{"template_version": "v1"}}
	for _, tc := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{States: []statemachine.State{statemachine.StateRunning, statemachine.StatePending}}, true},
		{Filter{States: []statemachine.State{statemachine.StateRunning}}, false},
		{Filter{Type: "build"}, true},
		{Filter{Type: "render"}, false},
		{Filter{Tags: map[string]string{"region": "eu"}}, true},
		{Filter{Tags: map[string]string{"region": "eu", "gpu": "true"}}, true},
		{Filter{Tags: map[string]string{"region": "us"}}, false},
		{Filter{Tags: map[string]string{"zone": "a"}}, false},
		{Filter{Meta: map[string]string{"template_version": "v1"}}, true},
		{Filter{Meta: map[string]string{"template_version": "v2"}}, false},
		{Filter{MetaNot: map[string]string{"template_version": "v2"}}, true},
		{Filter{MetaNot: map[string]string{"template_version": "v1"}}, false},
		{Filter{MetaNot: map[string]string{"owner": "x"}}, false}, // no owner: not another owner
	} {
		require.Equal(t, tc.want, tc.f.Matches(v), "%+v", tc.f)
		raw, err := json.Marshal(v)
		require.NoError(t, err)
		if tc.want {
			require.True(t, tc.f.prefilter()(raw), "the prefilter never rejects a match: %+v", tc.f)
		}
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	var c Config
	require.NoError(t, c.validate())
	require.Equal(t, BucketDefault, c.Bucket)
	require.Equal(t, DurableDefault, c.Durable)
	require.Equal(t, HeartbeatDurableDefault, c.HeartbeatDurable)
	require.Equal(t, BatchDefault, c.Batch)
	require.Equal(t, WritersDefault, c.Writers)
	require.Equal(t, AckWaitDefault, c.AckWait)
	require.Equal(t, WriteTimeoutDefault, c.WriteTimeout)
	require.Equal(t, CheckEveryDefault, c.CheckEvery)
	require.Equal(t, CacheDefault, c.Cache)
	for _, bad := range []Config{
		{Bucket: "jobs.views"},
		{Durable: "a b"},
		{Durable: "same", HeartbeatDurable: "same"},
		{Batch: BatchLimit + 1},
		{Batch: -1},
		// Negatives were read as their defaults, not refused (Linger's and
		// Cache's turn them off, as documented).
		{Writers: -1},
		{AckWait: -time.Second},
		{WriteTimeout: -time.Second},
		{CheckEvery: -time.Second},
	} {
		require.ErrorIs(t, bad.validate(), ErrInvalidConfig, "%+v", bad)
	}
	off := Config{Linger: -1, Cache: -1}
	require.NoError(t, off.validate(), "a negative linger or cache turns it off")
}

func TestCacheKeepsTheViewsStillMoving(t *testing.T) {
	p := &Projector{cfg: Config{Cache: 4}}
	p.clearCache()
	running := func(rev uint64) stored {
		return stored{view: View{State: statemachine.StateRunning}, rev: rev, ok: true}
	}
	p.remember("a", running(1))
	p.remember("b", running(2))
	p.remember("c", running(3)) // a and b become the older generation
	p.remember("a", running(4)) // a is moving again
	p.remember("d", running(5)) // c and a become the older generation, b is dropped
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		_, ok := p.cached(id)
		require.Equal(t, want, ok, id)
	}
	s, _ := p.cached("a")
	require.Equal(t, uint64(4), s.rev)
	p.remember("a", running(2))
	s, _ = p.cached("a")
	require.Equal(t, uint64(4), s.rev, "an older write never replaces a newer one")
	p.remember("a", stored{view: View{State: statemachine.StateSucceeded}, rev: 6, ok: true})
	_, ok := p.cached("a")
	require.False(t, ok, "finished jobs are not kept")
	p.forget("c")
	_, ok = p.cached("c")
	require.False(t, ok)
}

// viewFormats records, for each ViewFormat, a digest of the views of
// formatCorpus: what that format says of those histories.
var viewFormats = map[int]string{
	1: "b8b171ab4fdd11bdc7470c951e9f6b00e23589ba6b5edb8f5afeda01389fc21c",
}

// formatCorpus: histories through every kind of event and field a view shows.
func formatCorpus(t *testing.T) []View {
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	runAt := at(3600)
	full := events.Submitted{Type: "build", Tags: map[string]string{"region": "eu", "gpu": "yes"}, Meta: map[string]string{"team": "a"},
		Payload: []byte(`{"n":1}`), Priority: 3, MaxAttempts: 3, Key: "release-7", Backoff: &events.Backoff{Base: time.Second, Cap: time.Minute}}
	one := events.Submitted{Type: "build", MaxAttempts: 1}
	acquired := func(s, attempt int) events.Event {
		return event(t, events.TypeAcquired, at(s), events.Acquired{WorkerID: fmt.Sprintf("w%d", attempt), Attempt: attempt})
	}
	running := foldOf(t, "job-running", event(t, events.TypeSubmitted, at(0), full), acquired(1, 1))
	return []View{
		ViewOf(foldOf(t, "job-pending", event(t, events.TypeSubmitted, at(0), full)), nil),
		ViewOf(foldOf(t, "job-scheduled", event(t, events.TypeSubmitted, at(0), events.Submitted{Type: "build", MaxAttempts: 2, RunAt: &runAt})), nil),
		ViewOf(running, nil),
		ViewOf(running, &events.Beat{Lease: running.Lease, At: at(30)}),
		ViewOf(foldOf(t, "job-retried",
			event(t, events.TypeSubmitted, at(0), full), acquired(1, 1),
			event(t, events.TypeAttemptFailed, at(2), events.AttemptFailed{Lease: 20, Attempt: 1, Error: "exit 1", Code: "exit", RetryAt: at(4)}),
			event(t, events.TypePromoted, at(4), events.Promoted{}), acquired(5, 2),
			event(t, events.TypeSucceeded, at(6), events.Succeeded{Lease: 50, Result: json.RawMessage(`{"ok":true}`)})), nil),
		ViewOf(foldOf(t, "job-waiting",
			event(t, events.TypeSubmitted, at(0), full), acquired(1, 1),
			event(t, events.TypeAttemptFailed, at(2), events.AttemptFailed{Lease: 20, Attempt: 1, Error: "hung", Code: "hung", RetryAt: at(60)})), nil),
		ViewOf(foldOf(t, "job-failed", event(t, events.TypeSubmitted, at(0), one), acquired(1, 1),
			event(t, events.TypeFailed, at(2), events.Failed{Lease: 20, Attempt: 1, Error: "bad input", Code: "no_retry"})), nil),
		ViewOf(foldOf(t, "job-canceled-pending", event(t, events.TypeSubmitted, at(0), one),
			event(t, events.TypeCanceled, at(1), events.Canceled{Reason: "outdated", By: events.CanceledByOperator})), nil),
		ViewOf(foldOf(t, "job-canceling", event(t, events.TypeSubmitted, at(0), one), acquired(1, 1),
			event(t, events.TypeCancelRequested, at(2), events.CancelRequested{Reason: "stop"})), nil),
		ViewOf(foldOf(t, "job-canceled-by-worker", event(t, events.TypeSubmitted, at(0), one), acquired(1, 1),
			event(t, events.TypeCancelRequested, at(2), events.CancelRequested{Reason: "stop"}),
			event(t, events.TypeCanceled, at(3), events.Canceled{Reason: "stop", By: events.CanceledByWorker, Lease: 20})), nil),
		ViewOf(foldOf(t, "job-canceled-by-timeout", event(t, events.TypeSubmitted, at(0), one), acquired(1, 1),
			event(t, events.TypeCancelRequested, at(2), events.CancelRequested{}),
			event(t, events.TypeCanceled, at(62), events.Canceled{By: events.CanceledByTimeout, Lease: 20})), nil),
		ViewOf(foldOf(t, "job-released", event(t, events.TypeSubmitted, at(0), full), acquired(1, 1),
			event(t, events.TypeReleased, at(2), events.Released{Lease: 20, Reason: "shutting down"})), nil),
	}
}

// TestViewFormatIsCurrent fails when a change to View or to the fold renders
// a stored history differently: bump ViewFormat then, so that servers
// rebuild the views an older version wrote, and record the new digest here.
// (A change to the corpus itself only needs the digest recorded again.)
func TestViewFormatIsCurrent(t *testing.T) {
	sum := sha256.New()
	for _, v := range formatCorpus(t) {
		raw, err := json.Marshal(v)
		require.NoError(t, err)
		sum.Write(raw)
		sum.Write([]byte("\n"))
	}
	got := hex.EncodeToString(sum.Sum(nil))
	require.Equal(t, viewFormats[ViewFormat], got,
		"the views of the corpus changed: bump projector.ViewFormat to %d and record this digest under it in viewFormats", ViewFormat+1)
}

func TestFilterThatCanNeverMatchIsRefused(t *testing.T) {
	require.NoError(t, Filter{}.Validate())
	require.NoError(t, Filter{States: []statemachine.State{statemachine.StatePending}, Type: "build",
		Tags: map[string]string{"gpu": "true"}, MetaNot: map[string]string{"v": "2"}, Limit: 10,
		After: "01a20000-0000-7000-8000-000000000001"}.Validate())
	for name, f := range map[string]Filter{
		"unknown state":      {States: []statemachine.State{"bogus"}},
		"type with a dot":    {Type: "a.b"},
		"tag key with space": {Tags: map[string]string{"a b": "1"}},
		"empty meta key":     {Meta: map[string]string{"": "1"}},
		"empty meta-not key": {MetaNot: map[string]string{"": "1"}},
		"negative limit":     {Limit: -1},
		"tag value with ','": {Tags: map[string]string{"a": "1,2"}},
		"meta control char":  {Meta: map[string]string{"a": "x\ny"}},
		"after no job ID":    {After: "not an id!"},
	} {
		require.ErrorIs(t, f.Validate(), statemachine.ErrInvalid, name)
	}
}

// A time another publisher wrote with a zone of +24:00 reads, but no
// encoder writes it back: the fold takes its times in UTC, so the job's
// view still encodes (else the projector would retry it forever).
func TestAViewOfTimesInAZoneOf24HoursEncodes(t *testing.T) {
	ev, err := events.Decode([]byte(`{"v":1,"id":"e1","job":"job-1","type":"job.submitted","time":"2026-01-01T00:00:00+24:00",` +
		`"data":{"type":"build","max_attempts":1,"run_at":"2030-01-01T00:00:00+24:00"}}`))
	require.NoError(t, err)
	v := ViewOf(foldOf(t, "job-1", ev), nil)
	_, err = v.MarshalJSON()
	require.NoError(t, err)
	require.Equal(t, time.UTC, v.CreatedAt.Location())
	require.Equal(t, time.UTC, v.RunAt.Location())
	require.True(t, v.RunAt.Equal(time.Date(2029, 12, 31, 0, 0, 0, 0, time.UTC)))
}
