package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/coretest"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

const within = 10 * time.Second

type fixture struct {
	env *natstest.Env
	log *events.Log
	hb  *events.Heartbeats
	m   *statemachine.Machine
	p   *Projector
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	env := natstest.Start(t)
	lg, hb, m := coretest.Open(t, env.JS)
	f := &fixture{env: env, log: lg, hb: hb, m: m}
	f.p = f.projector(t, Config{})
	return f
}

// newSmallFixture is a fixture on a server that takes messages of at most
// maxPayload bytes, whose machine tells the time from *clock.
func newSmallFixture(t *testing.T, maxPayload int32) (*fixture, *time.Time) {
	t.Helper()
	ctx := context.Background()
	env := natstest.StartStock(t, func(o *server.Options) { o.MaxPayload = maxPayload })
	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	clock := new(time.Time)
	*clock = time.Now()
	m, err := statemachine.New(lg, statemachine.Config{Now: func() time.Time { return *clock }})
	require.NoError(t, err)
	f := &fixture{env: env, log: lg, hb: hb, m: m}
	f.p = f.projector(t, Config{})
	return f, clock
}

func (f *fixture) projector(t *testing.T, cfg Config) *Projector {
	t.Helper()
	p, err := New(f.env.JS, f.log, f.hb, cfg)
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	return p
}

func (f *fixture) reader(t *testing.T) *Reader {
	t.Helper()
	r, err := NewReader(context.Background(), f.env.JS)
	require.NoError(t, err)
	return r
}

// tryFolded is the view the log says the job should have: the fold of its
// history and its last beat. Its caller asks again on an error: on a
// cluster, a read can reach a replica that has not caught up yet.
func (f *fixture) tryFolded(t *testing.T, id string) (string, error) {
	t.Helper()
	ctx := context.Background()
	recs, err := f.log.Load(ctx, id)
	if err != nil {
		return "", err
	}
	job, _ := statemachine.Fold(recs)
	var beat *events.Beat
	b, ok, err := f.hb.Last(ctx, id)
	if err != nil {
		return "", err
	}
	if ok {
		beat = &b
	}
	v, _, err := fit(ViewOf(job, beat), f.log.MaxEventSize())
	require.NoError(t, err)
	return jsonOf(t, v), nil
}

// stored is the view's bytes as the bucket holds them.
func (f *fixture) stored(t *testing.T, id string) (string, bool) {
	t.Helper()
	kv, err := f.env.JS.KeyValue(context.Background(), BucketDefault)
	require.NoError(t, err)
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		return "", false
	}
	return string(e.Value()), true
}

// requireFolded waits until every job's stored view is its fold, byte for byte.
func (f *fixture) requireFolded(t *testing.T, ids []string) {
	t.Helper()
	for _, id := range ids {
		var got, want string
		natstest.Eventually(t, within, func() bool {
			var err error
			if want, err = f.tryFolded(t, id); err != nil {
				return false
			}
			var ok bool
			got, ok = f.stored(t, id)
			return ok && got == want
		}, "view of job %s equals its fold", id)
	}
}

func (f *fixture) runOnce(t *testing.T) int {
	t.Helper()
	n, err := f.p.runOnce(context.Background())
	require.NoError(t, err)
	return n
}

// run projects until the projector has acknowledged the last message of
// both streams: a message stored a moment ago may not be available to a
// fetch yet.
func (f *fixture) run(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	natstest.Eventually(t, within, func() bool {
		f.runOnce(t)
		for _, c := range []struct{ stream, durable string }{{f.log.Stream(), f.p.cfg.Durable}, {f.hb.Stream(), f.p.cfg.HeartbeatDurable}} {
			s, err := f.env.JS.Stream(ctx, c.stream)
			require.NoError(t, err)
			cons, err := f.env.JS.Consumer(ctx, c.stream, c.durable)
			require.NoError(t, err)
			if cons.CachedInfo().AckFloor.Stream < s.CachedInfo().State.LastSeq {
				return false
			}
		}
		return true
	}, "projector caught up")
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// projectedScenario runs scenario and projects it, and returns its jobs.
func (f *fixture) projectedScenario(t *testing.T) []string {
	t.Helper()
	ids := scenario(t, f.m, func() {})
	f.run(t)
	f.requireFolded(t, ids)
	return ids
}

// scenario drives jobs through every kind of transition, calling between
// after each command, and returns their IDs.
func scenario(t *testing.T, m *statemachine.Machine, between func()) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	submit := func(p statemachine.SubmitParams) statemachine.Job {
		j, _, err := m.Submit(ctx, p)
		require.NoError(t, err)
		ids = append(ids, j.ID)
		between()
		return j
	}
	step := func(j statemachine.Job, err error) statemachine.Job {
		t.Helper()
		require.NoError(t, err)
		between()
		return j
	}
	// Pending with tags, meta, payload, key and backoff.
	submit(statemachine.SubmitParams{Type: "build", Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"v": "1"},
		Payload: []byte(`{"a":1}`), Key: "idem-1", Backoff: statemachine.BackoffConfig{Base: time.Second}})
	// Canceled while pending.
	j := submit(statemachine.SubmitParams{Type: "build"})
	step(m.Cancel(ctx, j.ID, "not needed"))
	// Succeeded with a result.
	j = submit(statemachine.SubmitParams{Type: "render", Priority: 3})
	held := step(m.Acquire(ctx, j.ID, "w1"))
	step(m.Succeed(ctx, held, json.RawMessage(`{"ok":true}`)))
	// Retried, then failed for good.
	j = submit(statemachine.SubmitParams{Type: "render", MaxAttempts: 2})
	held = step(m.Acquire(ctx, j.ID, "w1"))
	retrying := step(m.Fail(ctx, held, statemachine.FailParams{Error: "boom", Code: "exit"}))
	step(m.PromoteDue(ctx, j.ID, *retrying.RunAt))
	held = step(m.Acquire(ctx, j.ID, "w2"))
	step(m.Fail(ctx, held, statemachine.FailParams{Error: "boom again"}))
	// Cancel requested while running, acknowledged by the worker.
	j = submit(statemachine.SubmitParams{Type: "import"})
	held = step(m.Acquire(ctx, j.ID, "w2"))
	step(m.Cancel(ctx, j.ID, "stop"))
	step(m.AcknowledgeCancel(ctx, held))
	// Cancel requested, never acknowledged: terminated.
	j = submit(statemachine.SubmitParams{Type: "import"})
	step(m.Acquire(ctx, j.ID, "w3"))
	step(m.Cancel(ctx, j.ID, "stop"))
	step(m.TerminateCanceling(ctx, j.ID, "no answer"))
	// Released, then running again, then failed as hung.
	j = submit(statemachine.SubmitParams{Type: "import", MaxAttempts: 1})
	held = step(m.Acquire(ctx, j.ID, "w4"))
	step(m.Release(ctx, held, "shutting down"))
	held = step(m.Acquire(ctx, j.ID, "w5"))
	step(m.FailStale(ctx, j.ID, held.Lease, statemachine.FailParams{Error: "hung", Code: "hung"}))
	// Still running.
	j = submit(statemachine.SubmitParams{Type: "import"})
	step(m.Acquire(ctx, j.ID, "w6"))
	// Scheduled.
	runAt := time.Now().Add(time.Hour)
	submit(statemachine.SubmitParams{Type: "import", RunAt: &runAt})
	return ids
}

func TestViewsEqualTheFoldProjectedIncrementally(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t)
	ids := scenario(t, f.m, func() { f.run(t) })
	f.requireFolded(t, ids)
	require.Zero(t, f.p.refolds.Load(), "histories that follow their views are never read again")
	require.Zero(t, f.runOnce(t), "nothing left to project")
}

func TestViewsEqualTheFoldProjectedInOneBatch(t *testing.T) {
	f := newFixture(t)
	ids := f.projectedScenario(t)
	r := f.reader(t)
	v, err := r.Get(context.Background(), ids[0])
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, v.State)
	require.Equal(t, map[string]string{"region": "eu"}, v.Tags)
	require.Equal(t, 7, v.PayloadSize)
	require.Equal(t, "idem-1", v.Key)
}

func TestRedeliveryWritesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ids := f.projectedScenario(t)
	kv, err := f.env.JS.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	before, err := kv.Info(ctx)
	require.NoError(t, err)

	// The consumer delivers the whole log again to this projector (its
	// cache emptied) and to a second one with a consumer of its own.
	require.NoError(t, f.env.JS.DeleteConsumer(ctx, f.log.Stream(), DurableDefault))
	require.NoError(t, f.p.setup(ctx))
	f.run(t)
	again := f.projector(t, Config{Durable: "again", HeartbeatDurable: "again_hb"})
	n, err := again.runOnce(ctx)
	require.NoError(t, err)
	require.Positive(t, n)

	after, err := kv.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, before.State.LastSeq, after.State.LastSeq, "no view was written again")
	f.requireFolded(t, ids)
}

// Garbage on the subject of a job that has no view (no valid submit) is
// quarantined once: a later batch of it does not quarantine the earlier
// garbage again, which, past the quarantine's duplicate window, stored
// every earlier message once more and logged it again for each new one.
func TestGarbageOfAJobWithNoViewIsQuarantinedOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	core, logs := observer.New(zap.WarnLevel)
	f.p = f.projector(t, Config{Logger: zap.New(core)})
	junk := func(n int) {
		for range n {
			m := nats.NewMsg(f.log.Subject("nosubmit"))
			m.Data = []byte("junk")
			_, err := f.env.JS.PublishMsg(ctx, m)
			require.NoError(t, err)
		}
	}
	quarantined := func() int {
		return logs.FilterMessageSnippet("quarantined a message").Len()
	}
	junk(3)
	require.Equal(t, 3, f.runOnce(t))
	require.Equal(t, 3, quarantined())
	junk(2)
	require.Equal(t, 2, f.runOnce(t))
	require.Equal(t, 5, quarantined(), "each message quarantined once")
}

// A flood of garbage interleaved over many subjects with no view is
// quarantined batch by batch without reading any subject's history: each
// batch folded every subject's history again, and 20,000 such messages
// over 50 subjects kept the views 24 s behind. And a valid job after it is
// projected.
func TestAGarbageFloodOverManySubjectsIsNotFoldedAgain(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	core, logs := observer.New(zap.WarnLevel)
	f.p = f.projector(t, Config{Logger: zap.New(core), Batch: quarantineLinesPerBatch})
	const subjects, each = 5, 40 // two of a subject in each batch
	for i := range subjects * each {
		m := nats.NewMsg(f.log.Subject(fmt.Sprint("flood-", i%subjects)))
		m.Data = []byte("junk")
		_, err := f.env.JS.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	require.Equal(t, subjects*each+1, f.runOnce(t))
	require.Zero(t, f.p.refolds.Load(), "no history read again")
	q, err := f.env.JS.Stream(ctx, QuarantineStream)
	require.NoError(t, err)
	info, err := q.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(subjects*each), info.State.Msgs)
	require.Equal(t, subjects*each, logs.FilterMessageSnippet("quarantined a message").Len())
	v, err := f.reader(t).Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, v.State)
}

// Events of a subject with no valid submit are each quarantined by the
// batch that brings them: a batch that read the history quarantined the
// later ones too, and so did every batch after it, since no view records
// how far the history was read.
func TestEventsOfASubjectWithNoSubmitAreQuarantinedByTheirOwnBatch(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	core, logs := observer.New(zap.WarnLevel)
	f.p = f.projector(t, Config{Logger: zap.New(core), Batch: 2})
	for range 5 {
		ev, err := events.New("nosubmit", events.TypeCanceled, events.Canceled{})
		require.NoError(t, err)
		data, err := events.Encode(ev)
		require.NoError(t, err)
		_, err = f.env.JS.Publish(ctx, f.log.Subject("nosubmit"), data)
		require.NoError(t, err)
	}
	require.Equal(t, 5, f.runOnce(t))
	require.Equal(t, 5, logs.FilterMessageSnippet("quarantined a message").Len(), "each message quarantined once")
}

// A batch with more garbage than is worth a line each logs the first ones
// and how many more, not a line each.
func TestAGarbageBatchLogsAFewLinesAndACount(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	core, logs := observer.New(zap.WarnLevel)
	f.p = f.projector(t, Config{Logger: zap.New(core)})
	for range 25 {
		_, err := f.env.JS.Publish(ctx, f.log.Subject("nosubmit"), []byte("junk"))
		require.NoError(t, err)
	}
	require.Equal(t, 25, f.runOnce(t))
	require.Equal(t, quarantineLinesPerBatch, logs.FilterMessageSnippet("quarantined a message").Len())
	more := logs.FilterMessageSnippet("quarantined more messages").All()
	require.Len(t, more, 1)
	require.Equal(t, int64(25-quarantineLinesPerBatch), more[0].ContextMap()["messages"])
}

// The views projected again from scratch (their bucket deleted) quarantine
// no message a second time, however long after: each copy's subject is
// named by the original's sequence and written only while empty. A message
// ID kept them apart only within the stream's duplicate window (2 minutes).
func TestGarbageProjectedAgainIsNotQuarantinedAgain(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for range 2 {
		m := nats.NewMsg(f.log.Subject("nosubmit"))
		m.Data = []byte("junk")
		_, err := f.env.JS.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	_, err = f.env.JS.Publish(ctx, f.log.Subject(j.ID), []byte("not json"))
	require.NoError(t, err)

	var q jetstream.Stream
	copies := func() uint64 {
		info, err := q.Info(ctx)
		require.NoError(t, err)
		return info.State.Msgs
	}
	projected := func(p *Projector) {
		require.NoError(t, p.Start(ctx))
		r := f.reader(t)
		natstest.Eventually(t, within, func() bool {
			v, err := r.Get(ctx, j.ID)
			return err == nil && v.Quarantined == 1
		}, "the job's view, past its garbage")
		p.Stop()
	}
	projected(f.p)
	q, err = f.env.JS.Stream(ctx, QuarantineStream)
	require.NoError(t, err)
	require.Equal(t, uint64(3), copies())

	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))
	projected(f.projector(t, Config{}))
	require.Equal(t, uint64(3), copies(), "no message quarantined twice")
	for seq := uint64(1); seq <= 3; seq++ {
		m, err := q.GetMsg(ctx, seq)
		require.NoError(t, err)
		require.Equal(t, QuarantinePrefix+map[uint64]string{1: "nosubmit", 2: "nosubmit", 3: j.ID}[seq]+"."+m.Header.Get(HeaderOriginalSeq), m.Subject)
	}
}

func TestGarbageIsQuarantinedAndNeverStalls(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	r := f.reader(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	other, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)

	last := j.Version
	publish := func(subject string, data []byte, expect bool) uint64 {
		m := nats.NewMsg(subject)
		m.Data = data
		if expect {
			// As a writer that read the history would: the projector
			// applies it to the view, and the fold refuses it.
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
		}
		ack, err := f.env.JS.PublishMsg(ctx, m)
		require.NoError(t, err)
		return ack.Sequence
	}
	encode := func(ev events.Event) []byte {
		b, err := events.Encode(ev)
		require.NoError(t, err)
		return b
	}
	illegal, err := events.New(j.ID, events.TypeSucceeded, events.Succeeded{Lease: 42})
	require.NoError(t, err)
	foreign, err := events.New(other.ID, events.TypeCanceled, events.Canceled{})
	require.NoError(t, err)
	bad := map[uint64]string{}
	for _, g := range []struct {
		data   []byte
		expect bool
	}{
		{[]byte("not json"), false},
		{[]byte(`{"v":1,"id":"x","job":"` + j.ID + `","type":"job.exploded"}`), true},
		{[]byte(`{"v":9}`), false},
		{encode(illegal), true},  // a success for a pending job
		{encode(foreign), false}, // another job's event on this job's subject
	} {
		last = publish(f.log.Subject(j.ID), g.data, g.expect)
		bad[last] = f.log.Subject(j.ID)
	}
	bad[publish(f.log.Subject("orphan"), []byte("junk"), false)] = f.log.Subject("orphan")
	bad[publish(f.log.SubjectPrefix()+"two.tokens", []byte("junk"), false)] = f.log.SubjectPrefix() + "two.tokens"

	// The view moved past the garbage, and later events are still projected.
	natstest.Eventually(t, within, func() bool {
		v, err := r.Get(ctx, j.ID)
		return err == nil && v.Version == last
	}, "the view's version is the last bad message's")
	canceled, err := f.m.Cancel(ctx, j.ID, "")
	require.NoError(t, err)
	natstest.Eventually(t, within, func() bool {
		v, err := r.Get(ctx, j.ID)
		return err == nil && v.State == statemachine.StateCanceled && v.Version == canceled.Version
	}, "canceled job projected past the garbage")
	v, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, 5, v.Quarantined)
	require.Equal(t, 2, v.Events)
	_, err = r.Get(ctx, "orphan")
	require.ErrorIs(t, err, events.ErrNotFound, "no valid submit, no view")

	q, err := f.env.JS.Stream(ctx, QuarantineStream)
	require.NoError(t, err)
	natstest.Eventually(t, within, func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.State.Msgs == uint64(len(bad))
	}, "%d quarantined messages", len(bad))
	for seq := uint64(1); seq <= uint64(len(bad)); seq++ {
		m, err := q.GetMsg(ctx, seq)
		require.NoError(t, err)
		orig, err := strconv.ParseUint(m.Header.Get(HeaderOriginalSeq), 10, 64)
		require.NoError(t, err)
		require.Equal(t, bad[orig], m.Header.Get(HeaderOriginalSubject))
		require.Equal(t, f.log.Stream(), m.Header.Get(HeaderOriginalStream))
		require.NotEmpty(t, m.Header.Get(HeaderReason))
		src, err := f.env.JS.Stream(ctx, f.log.Stream())
		require.NoError(t, err)
		original, err := src.GetMsg(ctx, orig)
		require.NoError(t, err)
		require.Equal(t, string(original.Data), string(m.Data), "the original bytes are kept")
	}
	f.requireFolded(t, []string{other.ID})
}

// A job that failed more times than a view shows errors for, with errors as
// long as they may be, still gets its view on a server whose max_payload is
// far below all of them, and the projector goes on with the other jobs.
func TestAViewShowsTheLastErrorsOfAJobThatFailedManyTimes(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	// Room for the errors a view shows (about 84 KiB), not for twice as many.
	f, clock := newSmallFixture(t, 128<<10)
	m := f.m

	attempts := 2 * ViewErrorsLimit
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "flaky", MaxAttempts: attempts})
	require.NoError(t, err)
	for i := 1; i <= attempts; i++ {
		held, err := m.Acquire(ctx, job.ID, "w")
		require.NoError(t, err)
		j, err := m.Fail(ctx, held, statemachine.FailParams{Error: fmt.Sprint(i, strings.Repeat(" e", statemachine.ErrorTextLimit))})
		require.NoError(t, err)
		if i%7 == 0 {
			f.run(t) // projected both incrementally and in one go
		}
		if j.State == statemachine.StateScheduled {
			*clock = *j.RunAt
			_, err = m.Promote(ctx, job.ID)
			require.NoError(t, err)
		}
	}
	other, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "after"})
	require.NoError(t, err)
	f.run(t)
	f.requireFolded(t, []string{job.ID, other.ID})
	v, err := f.reader(t).Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateFailed, v.State)
	require.Len(t, v.Errors, ViewErrorsLimit)
	require.Equal(t, attempts-ViewErrorsLimit, v.ErrorsOmitted)
	require.Equal(t, attempts, v.Errors[ViewErrorsLimit-1].Attempt)
}

// A job whose errors and result each fit in a message of their own, but not
// in one view together, gets a view without them (the history keeps them),
// and the projector goes on with the other jobs.
func TestAViewLeavesOutWhatDoesNotFitInOneMessage(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f, clock := newSmallFixture(t, 128<<10)
	m := f.m

	// Control characters take six bytes each in JSON: an error of 4 KiB of
	// them is 24 KiB in a view, so six do not fit in 120 KiB.
	failures := 6
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "big", MaxAttempts: failures + 1})
	require.NoError(t, err)
	for i := 1; i <= failures; i++ {
		held, err := m.Acquire(ctx, job.ID, "w")
		require.NoError(t, err)
		j, err := m.Fail(ctx, held, statemachine.FailParams{Error: strings.Repeat("\x01", statemachine.ErrorTextLimit)})
		require.NoError(t, err)
		*clock = *j.RunAt
		_, err = m.Promote(ctx, job.ID)
		require.NoError(t, err)
		f.run(t)
	}
	f.requireFolded(t, []string{job.ID})
	v, err := f.reader(t).Get(ctx, job.ID)
	require.NoError(t, err)
	require.Empty(t, v.Errors, "the errors do not fit")
	require.Equal(t, failures, v.ErrorsOmitted)

	result := json.RawMessage(`"` + strings.Repeat("r", 100<<10) + `"`)
	held, err := m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	_, err = m.Succeed(ctx, held, result)
	require.NoError(t, err, "the result fits in its event")
	other, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "after"})
	require.NoError(t, err)
	f.run(t)
	f.requireFolded(t, []string{job.ID, other.ID})
	v, err = f.reader(t).Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateSucceeded, v.State)
	require.True(t, v.ResultOmitted)
	require.Nil(t, v.Result)
	loaded, err := m.Load(ctx, job.ID)
	require.NoError(t, err)
	require.JSONEq(t, string(result), string(loaded.Result), "the history keeps the result")

	_, err = f.p.Rebuild(ctx)
	require.NoError(t, err)
	f.requireFolded(t, []string{job.ID, other.ID})
}

// A view that does not fit even without its result and errors (a small
// max_payload, or a log written before event texts were bounded) is
// truncated, and the projector goes on with the other jobs; a rebuild
// writes the same bytes.
func TestATruncatedViewKeepsTheProjectorGoing(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f, _ := newSmallFixture(t, 64<<10)
	m := f.m

	// Valid input only: '<' takes six bytes in JSON, and so does a
	// control character of an error.
	tags, meta := map[string]string{}, map[string]string{}
	for i := range 32 {
		tags[fmt.Sprintf("t%03d", i)] = strings.Repeat("<", 128)
	}
	for i := range 26 {
		meta[fmt.Sprintf("m%03d", i)] = strings.Repeat("<", 128)
	}
	labeled, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "t", Tags: tags, Meta: meta, MaxAttempts: 1})
	require.NoError(t, err, "the submitted event fits")
	held, err := m.Acquire(ctx, labeled.ID, "w")
	require.NoError(t, err)
	_, err = m.Fail(ctx, held, statemachine.FailParams{Error: strings.Repeat("\x01", statemachine.ErrorTextLimit)})
	require.NoError(t, err)

	// A cancel reason as long as an event holds, as a log written before
	// reasons were bounded may have.
	old, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	ev, err := events.New(old.ID, events.TypeCanceled, events.Canceled{Reason: strings.Repeat("r", f.log.MaxEventSize()-400), By: events.CanceledByOperator})
	require.NoError(t, err)
	_, err = f.log.Append(ctx, ev, old.Version)
	require.NoError(t, err)

	after, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "after"})
	require.NoError(t, err)
	f.run(t)
	ids := []string{labeled.ID, old.ID, after.ID}
	f.requireFolded(t, ids)
	r := f.reader(t)
	for _, id := range []string{labeled.ID, old.ID} {
		v, err := r.Get(ctx, id)
		require.NoError(t, err)
		require.True(t, v.Truncated, "view of %s", id)
		require.Empty(t, v.Tags)
	}
	v, err := r.Get(ctx, labeled.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateFailed, v.State, "the view still says where the job is")

	_, err = f.p.Rebuild(ctx)
	require.NoError(t, err)
	f.requireFolded(t, ids)
}

// Views that leave something out stay equal to their fold as more events
// and beats come, and a rebuild writes the same bytes.
func TestPartialViewsStayFolded(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f, clock := newSmallFixture(t, 128<<10)
	m := f.m
	var ids []string
	beat := func(j statemachine.Job) {
		*clock = clock.Add(time.Second)
		require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: j.Lease, At: *clock}))
	}
	// A running job whose errors are left out gets beats, then is canceled.
	j, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "a", MaxAttempts: 10})
	require.NoError(t, err)
	ids = append(ids, j.ID)
	for range 5 {
		held, err := m.Acquire(ctx, j.ID, "w")
		require.NoError(t, err)
		beat(held)
		f.run(t)
		failed, err := m.Fail(ctx, held, statemachine.FailParams{Error: strings.Repeat("\x01", statemachine.ErrorTextLimit)})
		require.NoError(t, err)
		*clock = *failed.RunAt
		_, err = m.Promote(ctx, j.ID)
		require.NoError(t, err)
		f.run(t)
	}
	held, err := m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	for range 3 {
		beat(held)
		f.run(t)
		f.requireFolded(t, ids)
	}
	canceling, err := m.Cancel(ctx, j.ID, strings.Repeat("r", statemachine.CancelReasonLimit))
	require.NoError(t, err)
	beat(canceling)
	f.run(t)
	f.requireFolded(t, ids)
	_, err = m.AcknowledgeCancel(ctx, canceling)
	require.NoError(t, err)
	// A job whose result is left out gets a late beat of its attempt.
	j2, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "b"})
	require.NoError(t, err)
	ids = append(ids, j2.ID)
	h2, err := m.Acquire(ctx, j2.ID, "w")
	require.NoError(t, err)
	beat(h2)
	f.run(t)
	_, err = m.Succeed(ctx, h2, json.RawMessage(`"`+strings.Repeat("z", f.log.MaxEventSize()-400)+`"`))
	require.NoError(t, err)
	f.run(t)
	beat(h2)
	f.run(t)
	f.requireFolded(t, ids)
	v, err := f.reader(t).Get(ctx, j2.ID)
	require.NoError(t, err)
	require.True(t, v.ResultOmitted)

	_, err = f.p.Rebuild(ctx)
	require.NoError(t, err)
	f.requireFolded(t, ids)
}

func TestLostBucketIsProjectedAgainIdentically(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	ids := scenario(t, f.m, func() {})
	running := ids[len(ids)-2]
	recs, err := f.log.Load(ctx, running)
	require.NoError(t, err)
	job, _ := statemachine.Fold(recs)
	require.Equal(t, statemachine.StateRunning, job.State)
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: running, Lease: job.Lease, WorkerID: "w6", At: job.UpdatedAt.Add(time.Second)}))
	f.run(t)
	f.requireFolded(t, ids)
	before := map[string]string{}
	for _, id := range ids {
		before[id], _ = f.stored(t, id)
	}
	require.Contains(t, before[running], `"heartbeat_at":"`)

	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))
	p := f.projector(t, Config{})
	require.NoError(t, p.Start(ctx))
	for _, id := range ids {
		natstest.Eventually(t, within, func() bool {
			got, ok := f.stored(t, id)
			return ok && got == before[id]
		}, "job %s projected again identically", id)
	}
}

func TestBucketDeletedWhileRunningIsProjectedAgain(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	p := f.projector(t, Config{CheckEvery: 50 * time.Millisecond})
	require.NoError(t, p.Start(ctx))
	ids := scenario(t, f.m, func() {})
	f.requireFolded(t, ids)
	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))
	natstest.Eventually(t, within, func() bool {
		_, err := f.env.JS.KeyValue(ctx, BucketDefault)
		return err == nil
	}, "bucket recreated")
	f.requireFolded(t, ids)
	// The projection goes on.
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "after"})
	require.NoError(t, err)
	f.requireFolded(t, []string{j.ID})
}

// A watch goes on with the bucket a server makes again after it was
// deleted: its revisions start over, and no job written there is skipped.
func TestWatchFollowsABucketMadeAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	p := f.projector(t, Config{CheckEvery: 50 * time.Millisecond})
	require.NoError(t, p.Start(ctx))
	before := scenario(t, f.m, func() {})
	f.requireFolded(t, before)
	views, err := f.reader(t).Watch(ctx, Filter{Type: "after"})
	require.NoError(t, err)
	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))
	natstest.Eventually(t, within, func() bool {
		_, err := f.env.JS.KeyValue(ctx, BucketDefault)
		return err == nil
	}, "bucket made again")
	want := map[string]bool{}
	for range 5 {
		j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "after"})
		require.NoError(t, err)
		want[j.ID] = true
	}
	deadline := time.After(within)
	for len(want) > 0 {
		select {
		case v := <-views:
			delete(want, v.ID)
		case <-deadline:
			t.Fatalf("the watch never showed %d jobs written to the new bucket", len(want))
		}
	}
}

func TestRebuildWhileSubmitting(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	var mu sync.Mutex
	var ids []string
	submit := func(from, n int) {
		for i := from; i < from+n; i++ {
			j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t", Meta: map[string]string{"i": fmt.Sprint(i)}})
			require.NoError(t, err)
			switch i % 3 {
			case 0:
				_, err = f.m.Cancel(ctx, j.ID, "")
			case 1:
				var held statemachine.Job
				held, err = f.m.Acquire(ctx, j.ID, "w")
				if err == nil {
					err = f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease, WorkerID: "w", At: time.Now().UTC()})
				}
			}
			require.NoError(t, err)
			mu.Lock()
			ids = append(ids, j.ID)
			mu.Unlock()
		}
	}
	submit(0, 150)
	done := make(chan struct{})
	go func() { defer close(done); submit(150, 150) }()
	other := f.projector(t, Config{Durable: "rebuild", HeartbeatDurable: "rebuild_hb"})
	stats, err := other.Rebuild(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, stats.Events, 250, "at least the events of the first 150 jobs")
	require.GreaterOrEqual(t, stats.Jobs, 150)
	require.Positive(t, stats.EventsPerSec)
	<-done
	f.requireFolded(t, ids)
}

func TestListFiltersAndPages(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	var ids []string
	for i := 0; i < 10; i++ {
		meta := map[string]string{"template_version": fmt.Sprint("v", i%3)}
		if i == 9 {
			meta = nil // no template version at all
		}
		j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build",
			Tags: map[string]string{"region": []string{"eu", "us"}[i%2]}, Meta: meta})
		require.NoError(t, err)
		ids = append(ids, j.ID)
		if i < 3 {
			_, err = f.m.Cancel(ctx, j.ID, "")
			require.NoError(t, err)
		}
	}
	f.run(t)
	r := f.reader(t)
	list := func(flt Filter) []string {
		t.Helper()
		page, err := r.List(ctx, flt)
		require.NoError(t, err)
		out := []string{}
		for _, v := range page.Views {
			out = append(out, v.ID)
		}
		return out
	}
	states := func(s ...statemachine.State) []statemachine.State { return s }
	require.Equal(t, ids, list(Filter{}), "in job ID order, which is submit order")
	require.Equal(t, ids[:3], list(Filter{States: states(statemachine.StateCanceled)}))
	require.Equal(t, ids, list(Filter{States: states(statemachine.StateCanceled, statemachine.StatePending)}))
	require.Empty(t, list(Filter{States: states(statemachine.StateRunning)}))
	require.Equal(t, []string{ids[0], ids[2], ids[4], ids[6], ids[8]}, list(Filter{Tags: map[string]string{"region": "eu"}}))
	require.Equal(t, []string{ids[0], ids[6]}, list(Filter{Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"template_version": "v0"}}))
	require.Equal(t, []string{ids[1], ids[2], ids[4], ids[5], ids[7], ids[8]},
		list(Filter{MetaNot: map[string]string{"template_version": "v0"}}), "a job without the key does not match")
	require.Equal(t, []string{ids[4], ids[5], ids[7], ids[8]},
		list(Filter{States: states(statemachine.StatePending), MetaNot: map[string]string{"template_version": "v0"}}))
	require.Empty(t, list(Filter{Type: "other"}))

	var paged []string
	flt := Filter{Limit: 4}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 3)
		page, err := r.List(ctx, flt)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Views), 4)
		for _, v := range page.Views {
			paged = append(paged, v.ID)
		}
		if page.Next == "" {
			break
		}
		require.Equal(t, paged[len(paged)-1], page.Next)
		flt.After = page.Next
	}
	require.Equal(t, ids, paged)
	require.Equal(t, ids[4:8], list(Filter{Limit: 4, After: ids[3]}))

	_, err := r.Get(ctx, "01a20000-0000-7000-8000-000000000000")
	require.ErrorIs(t, err, events.ErrNotFound)
	_, err = r.Get(ctx, "bad.id")
	require.ErrorIs(t, err, events.ErrInvalidJobID)
	// As a List or Watch of a filter no job can match is, and as the
	// Machine's commands refuse such an ID: a caller checks its input by
	// statemachine.ErrInvalid.
	require.ErrorIs(t, err, statemachine.ErrInvalid)
}

// nextView is the next view a watch sends, failing the test after within.
func nextView(t *testing.T, ch <-chan View) View {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatal("no view within", within)
		return View{}
	}
}

// A job that stops matching a watch's filter is sent once more, as it now
// is, so that a dashboard of the matching jobs can drop it; a job that
// never matched is not sent.
func TestWatchSendsAJobOnceMoreWhenItLeavesTheFilter(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	never, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "w"})
	require.NoError(t, err)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "w"})
	require.NoError(t, err)
	f.run(t)
	ch, err := f.reader(t).Watch(ctx, Filter{States: []statemachine.State{statemachine.StateRunning}})
	require.NoError(t, err)
	next := func() View { t.Helper(); return nextView(t, ch) }
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	f.run(t)
	v := next()
	require.Equal(t, j.ID, v.ID)
	require.Equal(t, statemachine.StateRunning, v.State)

	_, err = f.m.Cancel(ctx, never.ID, "")
	require.NoError(t, err)
	_, err = f.m.Succeed(ctx, held, nil)
	require.NoError(t, err)
	f.run(t)
	v = next()
	require.Equal(t, j.ID, v.ID, "the job that left, not the one that never matched")
	require.Equal(t, statemachine.StateSucceeded, v.State)

	// Gone from the filter: not sent again, not even when written again.
	again, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "w"})
	require.NoError(t, err)
	f.run(t)
	_, err = f.m.Acquire(ctx, again.ID, "w")
	require.NoError(t, err)
	f.run(t)
	require.Equal(t, again.ID, next().ID, "the next view sent is the next job running")
}

func TestWatchSendsCurrentValuesThenEveryChangeInOrder(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	old, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "watched"})
	require.NoError(t, err)
	_, _, err = f.m.Submit(ctx, statemachine.SubmitParams{Type: "ignored"})
	require.NoError(t, err)
	f.run(t)
	ch, err := f.reader(t).Watch(ctx, Filter{Type: "watched"})
	require.NoError(t, err)
	next := func() View { t.Helper(); return nextView(t, ch) }
	require.Equal(t, old.ID, next().ID, "current values first")

	// One command at a time, each projected before the next: every change
	// is seen, in order.
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "watched"})
	require.NoError(t, err)
	f.run(t)
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	f.run(t)
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease, WorkerID: "w", At: held.UpdatedAt.Add(time.Second)}))
	f.run(t)
	_, err = f.m.Succeed(ctx, held, nil)
	require.NoError(t, err)
	f.run(t)
	var seen []string
	for len(seen) < 4 {
		v := next()
		require.Equal(t, j.ID, v.ID)
		beat := ""
		if v.HeartbeatAt != nil {
			beat = "+beat"
		}
		seen = append(seen, string(v.State)+beat)
	}
	require.Equal(t, []string{"pending", "running", "running+beat", "succeeded"}, seen)

	// A rebuild writes every view again, unchanged: none is sent again, and
	// the next change is the next thing seen.
	_, err = f.p.Rebuild(ctx)
	require.NoError(t, err)
	after, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "watched"})
	require.NoError(t, err)
	f.run(t)
	require.Equal(t, after.ID, next().ID)
	cancel()
	for range ch {
	}
}

// A watch that ends because its connection closed, its ctx still live,
// lets go of everything it held: a dashboard that reconnects with a new
// connection does not pile up goroutines of the old one.
func TestAWatchEndedByItsConnectionLeavesNothingRunning(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.run(t) // makes the views bucket
	subscriptionsWaiting := func() int {
		buf := make([]byte, 1<<22)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*js).subscribe.func")
	}
	before := subscriptionsWaiting()
	nc, js := natstest.Connect(t, f.env.URL)
	r, err := NewReader(ctx, js)
	require.NoError(t, err)
	ch, err := r.Watch(ctx, Filter{})
	require.NoError(t, err)
	require.Greater(t, subscriptionsWaiting(), before, "the watch's subscription waits for its ctx")
	nc.Close()
	for range ch {
	}
	natstest.Eventually(t, 5*time.Second, func() bool { return subscriptionsWaiting() <= before },
		"the watch's subscriptions let go (%d waiting, %d before)", subscriptionsWaiting(), before)
}

func TestHeartbeatsMoveUpdatedAt(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	f.run(t)
	r := f.reader(t)
	beat := func(lease uint64, at time.Time) {
		t.Helper()
		require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: lease, WorkerID: "w", At: at}))
		f.run(t)
	}
	get := func() View {
		t.Helper()
		v, err := r.Get(ctx, j.ID)
		require.NoError(t, err)
		return v
	}
	at := held.UpdatedAt.Add(time.Minute)
	beat(held.Lease, at)
	v := get()
	require.True(t, v.UpdatedAt.Equal(at), "updated_at %s, want %s", v.UpdatedAt, at)
	require.True(t, v.HeartbeatAt.Equal(at))
	require.Equal(t, held.Version, v.Version, "a beat never changes the version")
	f.requireFolded(t, []string{j.ID})

	// A beat from an attempt that does not hold the job counts for
	// nothing; being the job's last beat, it hides the earlier one.
	beat(held.Lease+99, at.Add(time.Hour))
	require.Nil(t, get().HeartbeatAt)
	f.requireFolded(t, []string{j.ID})
	beat(held.Lease, at.Add(time.Minute))
	require.True(t, get().UpdatedAt.Equal(at.Add(time.Minute)))
	f.requireFolded(t, []string{j.ID})

	// Once the job is finished, beats are history.
	_, err = f.m.Succeed(ctx, held, nil)
	require.NoError(t, err)
	f.run(t)
	require.Nil(t, get().HeartbeatAt)
	f.requireFolded(t, []string{j.ID})
}

func TestBeatAheadOfTheEventsIsNotLost(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	beatsOnly := func() {
		t.Helper()
		require.NoError(t, f.p.setup(ctx))
		_, err := consume.Available(ctx, f.p.hbCons, 100, f.p.processBeats)
		require.NoError(t, err)
	}
	// The beat of an acquisition the view does not show yet.
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	f.run(t)
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease, WorkerID: "w", At: held.UpdatedAt.Add(time.Second)}))
	// The beat of a job that has no view at all yet.
	k, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	heldK, err := f.m.Acquire(ctx, k.ID, "w")
	require.NoError(t, err)
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: k.ID, Lease: heldK.Lease, WorkerID: "w", At: heldK.UpdatedAt.Add(time.Second)}))
	beatsOnly()
	for _, id := range []string{j.ID, k.ID} {
		got, ok := f.stored(t, id)
		require.True(t, ok)
		require.Contains(t, got, `"heartbeat_at":"`)
	}
	f.run(t) // the events, now behind the views
	f.requireFolded(t, []string{j.ID, k.ID})
}

func TestTwoProjectorsAgree(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	// Two servers share the durable consumers; a third projector has its
	// own, and so writes every view too.
	for _, cfg := range []Config{{}, {}, {Durable: "third", HeartbeatDurable: "third_hb", Batch: 7}} {
		require.NoError(t, f.projector(t, cfg).Start(ctx))
	}
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := scenario(t, f.m, func() {})
			mu.Lock()
			ids = append(ids, got...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	f.requireFolded(t, ids)
}

// A history read that ends before the events being projected came
// from a replica behind the stream's leader: the projector must not
// acknowledge what it has not shown, and tries again. A history that is
// gone (purged) is not behind.
func TestARefoldOnAHistoryBehindTheEventsIsRefused(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	job, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	f.run(t)

	ahead := &jobWork{id: job.ID, recs: []events.Record{{Seq: job.Version + 100}}}
	require.ErrorIs(t, f.p.refold(ctx, ahead), errHistoryBehind, "events past the history read")
	current := &jobWork{id: job.ID, recs: []events.Record{{Seq: job.Version}}}
	require.NoError(t, f.p.refold(ctx, current))

	require.NoError(t, f.log.Purge(ctx, job.ID, job.Version))
	require.NoError(t, f.p.refold(ctx, ahead), "a purged history")
	require.False(t, ahead.write)
}

func TestForget(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t", Key: "k"})
	require.NoError(t, err)
	f.run(t)
	r := f.reader(t)
	mark, err := r.Mark(ctx)
	require.NoError(t, err)
	require.NoError(t, r.Forget(ctx, j.ID, mark))
	require.NoError(t, r.Forget(ctx, j.ID, mark), "forgetting twice is fine")
	_, err = r.Get(ctx, j.ID)
	require.ErrorIs(t, err, events.ErrNotFound)
	page, err := r.List(ctx, Filter{})
	require.NoError(t, err)
	require.Empty(t, page.Views)
	kv, err := f.env.JS.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	info, err := kv.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "no delete marker left behind")
	require.ErrorIs(t, r.Forget(ctx, "bad.id", mark), events.ErrInvalidJobID)
	require.ErrorIs(t, r.Forget(ctx, "bad.id", mark), statemachine.ErrInvalid)

	// A view written after the mark stays: it is a new job's under the same
	// key, so the same ID.
	require.NoError(t, f.m.Log().Purge(ctx, j.ID, j.Version))
	again, existed, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t", Key: "k"})
	require.NoError(t, err)
	require.False(t, existed)
	require.Equal(t, j.ID, again.ID)
	f.run(t)
	require.NoError(t, r.Forget(ctx, j.ID, mark))
	v, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, again.Version, v.Version)
}

func TestStartAndStopTwice(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	require.NoError(t, f.p.Start(ctx))
	f.p.Stop()
	f.p.Stop()
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	require.NoError(t, f.p.Start(ctx), "a stopped projector starts again")
	f.requireFolded(t, []string{j.ID})
	f.p.Stop()
}

func TestNoReaderWithoutBucket(t *testing.T) {
	env := natstest.Start(t)
	_, err := NewReader(context.Background(), env.JS)
	require.ErrorIs(t, err, ErrNoViews)
	_, err = NewReader(context.Background(), nil)
	require.ErrorIs(t, err, ErrInvalidConfig)
	// On a NATS without JetStream there is no bucket either.
	stock := natstest.StartStock(t, func(o *server.Options) { o.JetStream = false })
	_, err = NewReader(context.Background(), stock.JS)
	require.ErrorIs(t, err, ErrNoViews)
	require.ErrorContains(t, err, "no JetStream on this NATS")
	// A nil jetstream (a jetstream.New whose error went unchecked) is said,
	// not a nil pointer panic.
	_, err = CaughtUp(context.Background(), nil, events.StreamDefault)
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestConsumerOfAnOlderVersionIsReplacedWhereItWas(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for range 2 {
		_, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
		require.NoError(t, err)
	}
	// An earlier projector, its views in place, acknowledged all up to
	// the second event.
	_, err := f.p.provisionStorage(ctx)
	require.NoError(t, err)
	old, err := f.env.JS.CreateOrUpdateConsumer(ctx, f.log.Stream(), jetstream.ConsumerConfig{
		Durable: DurableDefault, AckPolicy: jetstream.AckAllPolicy, FilterSubject: f.log.SubjectPrefix() + ">"})
	require.NoError(t, err)
	batch, err := old.Fetch(2)
	require.NoError(t, err)
	var last jetstream.Msg
	for m := range batch.Messages() {
		last = m
	}
	require.NoError(t, last.DoubleAck(ctx))
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)

	require.NoError(t, f.p.setup(ctx))
	require.NoError(t, f.p.setup(ctx), "binding to the replacement again")
	info, err := f.p.evCons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, jetstream.AckExplicitPolicy, info.Config.AckPolicy)
	f.run(t)
	page, err := f.reader(t).List(ctx, Filter{})
	require.NoError(t, err)
	require.Len(t, page.Views, 1, "only the event after the old acknowledgements")
	require.Equal(t, j.ID, page.Views[0].ID)
}

func TestAnotherBucket(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	p := f.projector(t, Config{Bucket: "other_views", Durable: "other", HeartbeatDurable: "other_hb"})
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	_, err = p.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS, WithBucket("other_views"))
	require.NoError(t, err)
	v, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, j.Version, v.Version)
	_, err = NewReader(ctx, f.env.JS)
	require.ErrorIs(t, err, ErrNoViews, "the default bucket was never created")
}

// stallingJS refuses every other asynchronous publish, as a connection
// whose window of unanswered publishes stays full does.
type stallingJS struct {
	jetstream.JetStream
	mu    sync.Mutex
	calls int
}

func (s *stallingJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	s.mu.Lock()
	s.calls++
	stall := s.calls%2 == 0
	s.mu.Unlock()
	if stall {
		return nil, jetstream.ErrTooManyStalledMsgs
	}
	return s.JetStream.PublishMsgAsync(m, opts...)
}

func TestWritesWaitForAFullPublishWindow(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	p, err := New(&stallingJS{JetStream: f.env.JS}, f.log, f.hb, Config{})
	require.NoError(t, err)
	f.p = p
	var ids []string
	params := make([]statemachine.SubmitParams, 50)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t"}
	}
	for _, r := range f.m.SubmitMany(ctx, params) {
		require.NoError(t, r.Err)
		ids = append(ids, r.Job.ID)
	}
	f.run(t)
	f.requireFolded(t, ids)
	stats, err := p.Rebuild(ctx)
	require.NoError(t, err)
	require.Equal(t, 50, stats.Jobs)
	f.requireFolded(t, ids)
}

func TestConsumerDeletedWhileRunningIsRecreated(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	p := f.projector(t, Config{CheckEvery: 20 * time.Millisecond})
	require.NoError(t, p.Start(ctx))
	a, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	f.requireFolded(t, []string{a.ID})
	require.NoError(t, f.env.JS.DeleteConsumer(ctx, f.log.Stream(), DurableDefault))
	b, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	_, err = f.m.Cancel(ctx, a.ID, "")
	require.NoError(t, err)
	f.requireFolded(t, []string{a.ID, b.ID})

	// Another server recreated the consumer (it found the bucket lost).
	require.NoError(t, f.env.JS.DeleteConsumer(ctx, f.log.Stream(), DurableDefault))
	other := f.projector(t, Config{})
	require.NoError(t, other.setup(ctx))
	c, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	f.requireFolded(t, []string{a.ID, b.ID, c.ID})
}

// viewsBucket makes the views bucket, with no projector writing it, and a
// reader of it.
func (f *fixture) viewsBucket(t *testing.T) (jetstream.KeyValue, *Reader) {
	t.Helper()
	ctx := context.Background()
	_, err := f.p.provisionStorage(ctx)
	require.NoError(t, err)
	kv, err := f.env.JS.KeyValue(ctx, BucketDefault)
	require.NoError(t, err)
	return kv, f.reader(t)
}

// A listing that races with views being purged (the purger, or jobs
// canceled and purged by an operator) still ends: the watcher under it
// waits for a message with nothing pending after it, and purged views can
// leave it waiting for good. It guards rather than proves (it did not hang
// without the fix here), and is kept small: at 3 rounds of 3,000 purges
// and 8 listings it ran 15-100 s and timed out on 2 loaded cores.
func TestListEndsWhileViewsArePurged(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	kv, r := newFixture(t).viewsBucket(t)
	for round := range 2 {
		ids := make([]string, 1000)
		for i := range ids {
			ids[i] = fmt.Sprintf("job-%d-%04d", round, i)
			data, err := json.Marshal(View{ID: ids[i], Type: "t", State: statemachine.StateCanceled, Version: 1})
			require.NoError(t, err)
			_, err = kv.Put(ctx, ids[i], data)
			require.NoError(t, err)
		}
		listed := make(chan error, 4)
		for range cap(listed) {
			go func() {
				_, err := r.List(ctx, Filter{})
				listed <- err
			}()
		}
		// Each purge waits behind 4 listings of the bucket: on 2 loaded
		// cores (the whole suite at once), one took longer than the
		// client's default 5 s.
		for _, id := range ids {
			pctx, cancel := context.WithTimeout(ctx, time.Minute)
			require.NoError(t, kv.Purge(pctx, id))
			cancel()
		}
		for range cap(listed) {
			select {
			case err := <-listed:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Fatalf("round %d: a listing never ended", round)
			}
		}
	}
}

// storePendingViews stores n views of pending jobs, job-000000 on, as a
// projector would write them, a thousand in flight at most: more, and the
// publisher refused them on a loaded machine ("too many outstanding async
// published messages").
func (f *fixture) storePendingViews(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("job-%06d", i)
		data, err := json.Marshal(View{ID: id, Type: "t", State: statemachine.StatePending, Version: 1})
		require.NoError(t, err)
		_, err = f.env.JS.PublishAsync("$KV."+BucketDefault+"."+id, data)
		require.NoError(t, err)
		if (i+1)%1000 == 0 || i == n-1 {
			select {
			case <-f.env.JS.PublishAsyncComplete():
			case <-time.After(within):
				t.Fatal("views not stored")
			}
		}
	}
}

// A listing longer than its checks for a stalled watcher (a bucket of many
// views) lists them all; one ended at the first check, with a part.
func TestALongListingListsEveryView(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	_, r := f.viewsBucket(t)
	const n = 30_000
	f.storePendingViews(t, n)
	for range 2 {
		start := time.Now()
		page, err := r.List(ctx, Filter{})
		require.NoError(t, err)
		require.Equal(t, n, len(page.Views), "listed in %s", time.Since(start))
	}
}

// A listing after the newest views were forgotten (purged jobs: no marker
// is left) ends at once, not after rounds of waiting for them.
func TestAListingAfterTheNewestViewsWereForgottenEnds(t *testing.T) {
	ctx := context.Background()
	kv, r := newFixture(t).viewsBucket(t)
	for i := range 20 {
		id := fmt.Sprintf("job-%02d", i)
		_, err := kv.Put(ctx, id, []byte(`{"id":"`+id+`","version":1}`))
		require.NoError(t, err)
	}
	for i := 15; i < 20; i++ {
		require.NoError(t, r.stream.Purge(ctx, jetstream.WithPurgeSubject(fmt.Sprintf("$KV.%s.job-%02d", BucketDefault, i))))
	}
	// Well before the rounds it would wait, one idle check each.
	ctx, cancel := context.WithTimeout(ctx, listRoundsMax*listIdleCheck/2)
	defer cancel()
	page, err := r.List(ctx, Filter{})
	require.NoError(t, err, "it waited for views that are gone")
	require.Len(t, page.Views, 15)
}

// A listing made while views are rewritten (heartbeats, jobs moving on)
// lists every job once: a view rewritten before the listing reached it
// loses the revision the listing was to read, and is read at its new one.
func TestListHasEveryJobWhoseViewIsRewrittenMeanwhile(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	kv, r := newFixture(t).viewsBucket(t)
	ids := make([]string, 300)
	views := make([][]byte, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("job-%04d", i)
		data, err := json.Marshal(View{ID: ids[i], Type: "t", State: statemachine.StateRunning, Version: 1})
		require.NoError(t, err)
		views[i] = data
		_, err = kv.Put(ctx, ids[i], data)
		require.NoError(t, err)
	}
	stop := make(chan struct{})
	rewriting := make(chan struct{})
	go func() {
		defer close(rewriting)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			i := (n * 7919) % len(ids) // all over the bucket, not in key order
			if _, err := kv.Put(ctx, ids[i], views[i]); err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		<-rewriting
	}()
	for range 30 {
		page, err := r.List(ctx, Filter{})
		require.NoError(t, err)
		got := make([]string, len(page.Views))
		for i, v := range page.Views {
			got[i] = v.ID
		}
		require.Equal(t, ids, got)
	}
}

// The check a stalled listing makes: views removed from the stream after
// the last one delivered (the case that left the watcher waiting) leave
// nothing to wait for; a view still there does.
func TestNothingLeftAfterTheViewsARemoved(t *testing.T) {
	ctx := context.Background()
	kv, r := newFixture(t).viewsBucket(t)
	var revs []uint64
	for _, id := range []string{"a", "b", "c"} {
		rev, err := kv.Put(ctx, id, []byte(`{}`))
		require.NoError(t, err)
		revs = append(revs, rev)
	}
	end := revs[2]
	left, err := r.nothingLeft(ctx, revs[0], end)
	require.NoError(t, err)
	require.False(t, left, "b and c are still to be delivered")
	for _, id := range []string{"b", "c"} {
		require.NoError(t, r.stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+BucketDefault+"."+id)))
	}
	left, err = r.nothingLeft(ctx, revs[0], end)
	require.NoError(t, err)
	require.True(t, left, "b and c were removed")
	_, err = kv.Put(ctx, "d", []byte(`{}`))
	require.NoError(t, err)
	left, err = r.nothingLeft(ctx, revs[0], end)
	require.NoError(t, err)
	require.True(t, left, "a view written after the listing began is not waited for")
}

// TestRebuildReplacesViewsInPlace: while a rebuild runs, every job's view
// can be read; afterwards a view that was wrong is its fold again, and the
// view of a job the log does not have is gone.
func TestRebuildReplacesViewsInPlace(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	params := make([]statemachine.SubmitParams, 2000)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t"}
	}
	var ids []string
	for _, r := range f.m.SubmitMany(ctx, params) {
		require.NoError(t, r.Err)
		ids = append(ids, r.Job.ID)
	}
	f.run(t)
	f.requireFolded(t, ids[:1])

	kv, err := f.env.JS.KeyValue(ctx, BucketDefault)
	require.NoError(t, err)
	put := func(v View) {
		data, err := json.Marshal(v)
		require.NoError(t, err)
		_, err = kv.Put(ctx, v.ID, data)
		require.NoError(t, err)
	}
	wrong, err := f.reader(t).Get(ctx, ids[7])
	require.NoError(t, err)
	wrong.State = statemachine.StateFailed // same version, wrong content
	put(wrong)
	orphan := statemachine.JobIDForKey("never in the log")
	put(View{ID: orphan, Type: "t", State: statemachine.StatePending, Version: 1})

	r := f.reader(t)
	done := make(chan error, 1)
	go func() { _, err := f.p.Rebuild(ctx); done <- err }()
	reads := 0
	for rebuilding := true; rebuilding; reads++ {
		select {
		case err := <-done:
			require.NoError(t, err)
			rebuilding = false
		default:
		}
		_, err := r.Get(ctx, ids[reads%len(ids)])
		require.NoError(t, err, "read %d, during the rebuild", reads)
	}
	t.Logf("%d reads during the rebuild", reads)
	stats, err := f.p.Rebuild(ctx)
	require.NoError(t, err)
	require.Equal(t, len(ids), stats.Jobs)
	require.Zero(t, stats.Written, "a second rebuild finds every view current")

	f.requireFolded(t, ids[7:8])
	_, err = r.Get(ctx, orphan)
	require.ErrorIs(t, err, events.ErrNotFound, "a job the log does not have")
}

// TestWatchCatchesUpAfterTheServerRestarts: a restarted server has lost the
// watch's consumer; the watch makes a new one as soon as it reconnects,
// sends what changed meanwhile, and nothing it sent before.
func TestWatchCatchesUpAfterTheServerRestarts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	kv, _ := f.viewsBucket(t)
	put := func(kv jetstream.KeyValue, v View) {
		data, err := json.Marshal(v)
		require.NoError(t, err)
		_, err = kv.Put(ctx, v.ID, data)
		require.NoError(t, err)
	}
	receive := func(ch <-chan View) View {
		t.Helper()
		select {
		case v, ok := <-ch:
			require.True(t, ok, "the watch ended")
			return v
		case <-time.After(5 * time.Second):
			t.Fatal("no view within 5s")
			return View{}
		}
	}
	before := View{ID: statemachine.JobIDForKey("before"), Type: "t", State: statemachine.StatePending, Version: 1}
	put(kv, before)
	_, js := natstest.Connect(t, f.env.URL)
	r, err := NewReader(ctx, js)
	require.NoError(t, err)
	ch, err := r.Watch(ctx, Filter{})
	require.NoError(t, err)
	require.Equal(t, before.ID, receive(ch).ID)

	// The same address, the same store: the watcher's client reconnects.
	f.env.Server.Shutdown()
	srv, err := natsserver.Start(natsserver.Config{DataDir: f.env.Dir, Listen: strings.TrimPrefix(f.env.URL, "nats://")})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	_, js2 := natstest.Connect(t, srv.ClientURL())
	kv2, err := js2.KeyValue(ctx, BucketDefault)
	require.NoError(t, err)
	after := View{ID: statemachine.JobIDForKey("after"), Type: "t", State: statemachine.StatePending, Version: 2}
	put(kv2, after)
	require.Equal(t, after.ID, receive(ch).ID, "the view written after the restart, and not the one sent before")
}

// TestSetupAfterANATSRestartIsNotLost: a projector set up after its NATS
// restarted finds its consumers in place, not recreated (the create's answer
// then gives the restart's time, not the consumer's creation).
func TestSetupAfterANATSRestartIsNotLost(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.setup(ctx))
	f.env.Server.Shutdown()
	srv, err := natsserver.Start(natsserver.Config{DataDir: f.env.Dir, Listen: strings.TrimPrefix(f.env.URL, "nats://")})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)

	_, js := natstest.Connect(t, srv.ClientURL())
	lg, err := events.Attach(js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, js)
	require.NoError(t, err)
	p, err := New(js, lg, hb, Config{})
	require.NoError(t, err)
	require.NoError(t, p.setup(ctx))
	require.Empty(t, p.setupLost(ctx))
}

// TestRebuildLeavesAPurgedJobGone: a job purged while a rebuild runs (after
// its fold) does not get its view back; a view whose job's history holds no
// valid submit is removed.
func TestRebuildLeavesAPurgedJobGone(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	j, err = f.m.Cancel(ctx, j.ID, "")
	require.NoError(t, err)
	f.run(t)
	f.requireFolded(t, []string{j.ID})
	kv, r := f.viewsBucket(t)
	stale, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	stale.CancelReason = "not what the log says" // so that the rebuild writes it
	data, err := json.Marshal(stale)
	require.NoError(t, err)
	_, err = kv.Put(ctx, j.ID, data)
	require.NoError(t, err)

	junk := statemachine.JobIDForKey("only a bad event")
	_, err = f.env.JS.Publish(ctx, events.SubjectPrefixDefault+junk, []byte(`{}`))
	require.NoError(t, err)
	data, err = json.Marshal(View{ID: junk, Type: "t", State: statemachine.StatePending, Version: 1})
	require.NoError(t, err)
	_, err = kv.Put(ctx, junk, data)
	require.NoError(t, err)

	f.p.folded = func() {
		// What the purger does to a finished job.
		mark, err := r.Mark(ctx)
		require.NoError(t, err)
		require.NoError(t, f.log.Purge(ctx, j.ID, j.Version))
		require.NoError(t, r.Forget(ctx, j.ID, mark))
	}
	_, err = f.p.Rebuild(ctx)
	require.NoError(t, err)
	_, err = r.Get(ctx, j.ID)
	require.ErrorIs(t, err, events.ErrNotFound, "the purged job's view stays gone")
	_, err = r.Get(ctx, junk)
	require.ErrorIs(t, err, events.ErrNotFound, "a job with no valid submit has no view")
}

// TestViewsOfAnOlderFormatAreRebuiltBeforeProjecting: views an older jetjob
// wrote (the bucket records an older format, or none) are rebuilt when a
// projector starts; views of the current format are left as they are.
func TestViewsOfAnOlderFormatAreRebuiltBeforeProjecting(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	ids := f.projectedScenario(t)
	requireFormat(t, f, strconv.Itoa(ViewFormat), "a bucket made anew is of the current format")

	kv, err := f.env.JS.KeyValue(ctx, BucketDefault)
	require.NoError(t, err)
	older := map[string]string{}
	for _, id := range ids {
		// What an older version would have said: a field less.
		cur, ok := f.stored(t, id)
		require.True(t, ok)
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(cur), &fields))
		delete(fields, "errors")
		raw, err := json.Marshal(fields)
		require.NoError(t, err)
		_, err = kv.Put(ctx, id, raw)
		require.NoError(t, err)
		older[id] = string(raw)
	}

	current := f.projector(t, Config{})
	require.NoError(t, current.Start(ctx))
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	f.requireFolded(t, []string{j.ID})
	for id, want := range older {
		got, _ := f.stored(t, id)
		require.Equal(t, want, got, "the bucket says its views are current: not rebuilt")
	}
	current.Stop()

	for _, format := range []string{"0", ""} {
		setFormat(t, f, format)
		upgraded := f.projector(t, Config{})
		require.NoError(t, upgraded.Start(ctx))
		f.requireFolded(t, ids)
		natstest.Eventually(t, within, func() bool { return formatOf(t, f) == strconv.Itoa(ViewFormat) }, "format recorded once rebuilt")
		upgraded.Stop()
		for _, id := range ids {
			_, err = kv.Put(ctx, id, []byte(older[id]))
			require.NoError(t, err)
		}
	}
}

// setFormat records a views format in the bucket ("" removes it).
func setFormat(t *testing.T, f *fixture, format string) {
	t.Helper()
	ctx := context.Background()
	s, err := f.env.JS.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.Metadata = maps.Clone(cfg.Metadata)
	if format == "" {
		delete(cfg.Metadata, viewFormatKey)
	} else {
		cfg.Metadata[viewFormatKey] = format
	}
	_, err = f.env.JS.UpdateStream(ctx, cfg)
	require.NoError(t, err)
	requireFormat(t, f, format, "set by the test")
}

func requireFormat(t *testing.T, f *fixture, want, why string) {
	t.Helper()
	require.Equal(t, want, formatOf(t, f), why)
}

func formatOf(t *testing.T, f *fixture) string {
	t.Helper()
	s, err := f.env.JS.Stream(context.Background(), "KV_"+BucketDefault)
	require.NoError(t, err)
	return s.CachedInfo().Config.Metadata[viewFormatKey]
}

// A stored value that is not a view (something else wrote into the bucket)
// is left out of a listing, and counted, so that ls can say so; Get says
// ErrNotAView of it, JSON or not.
func TestListCountsWhatIsNotAView(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	f.run(t)
	kv, r := f.viewsBucket(t)
	_, err = kv.Put(ctx, "01a20000-0000-7000-8000-00000000bad1", []byte("garbage{"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "01a20000-0000-7000-8000-00000000bad2", []byte("{}"))
	require.NoError(t, err)
	page, err := r.List(ctx, Filter{})
	require.NoError(t, err)
	require.Len(t, page.Views, 1)
	require.Equal(t, j.ID, page.Views[0].ID)
	require.Equal(t, 2, page.Unreadable)
	for _, key := range []string{"01a20000-0000-7000-8000-00000000bad1", "01a20000-0000-7000-8000-00000000bad2"} {
		_, err = r.Get(ctx, key)
		require.ErrorIs(t, err, ErrNotAView, key)
	}
}

// A value in the bucket that no projector wrote is not a view, even when it
// decodes as one: one with no version (no history has a sequence 0), or
// one under another job's key. The projector once took such a value for the
// view of the job submitted under its key and applied the job's submit to
// it: the submit was quarantined as illegal for the made-up state, and the
// job kept the made-up view (another type, succeeded) until a rebuild, so
// that ls and bulk cancels never saw it pending. Listings listed it, and a
// bulk cancel canceled the job it named.
func TestAValueNoProjectorWroteIsNotAView(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	kv, r := f.viewsBucket(t)
	id := statemachine.JobIDForKey("made up")
	_, err := kv.Put(ctx, id, []byte(`{"id":"`+id+`","type":"other","state":"succeeded"}`))
	require.NoError(t, err)
	other := "01a20000-0000-7000-8000-00000000bad3"
	_, err = kv.Put(ctx, other, []byte(`{"id":"01a20000-0000-7000-8000-00000000bad4","type":"other","state":"pending","version":3}`))
	require.NoError(t, err)
	page, err := r.List(ctx, Filter{})
	require.NoError(t, err)
	require.Empty(t, page.Views)
	require.Equal(t, 2, page.Unreadable)
	for _, key := range []string{id, other} {
		_, err = r.Get(ctx, key)
		require.ErrorIs(t, err, ErrNotAView)
	}

	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build", Key: "made up"})
	require.NoError(t, err)
	require.Equal(t, id, j.ID)
	require.NoError(t, f.p.Start(ctx))
	f.requireFolded(t, []string{id})
	page, err = r.List(ctx, Filter{Type: "build", States: []statemachine.State{statemachine.StatePending}})
	require.NoError(t, err)
	require.Len(t, page.Views, 1)
	require.Equal(t, id, page.Views[0].ID)
}

// CaughtUp says whether every event the log held has been projected: not
// while one waits, at once after it is.
func TestCaughtUpWaitsForEveryEventTheLogHeld(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, err := CaughtUp(ctx, f.env.JS, f.log.Stream())
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "no projector ever ran")
	_, _, err = f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	f.run(t)
	ok, err := CaughtUp(ctx, f.env.JS, f.log.Stream())
	require.NoError(t, err)
	require.True(t, ok)

	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	ok, err = CaughtUp(short, f.env.JS, f.log.Stream())
	require.NoError(t, err)
	require.False(t, ok, "job %s not projected yet", j.ID)

	require.NoError(t, f.p.Start(ctx))
	ok, err = CaughtUp(ctx, f.env.JS, f.log.Stream())
	require.NoError(t, err)
	require.True(t, ok)
	_, err = f.reader(t).Get(ctx, j.ID)
	require.NoError(t, err, "projected once caught up")

	// A job purged from the log before the projector saw it leaves the
	// consumer's floor short of the log's last sequence, with nothing left
	// to project.
	f.p.Stop()
	gone, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	st, err := f.env.JS.Stream(ctx, f.log.Stream())
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx, jetstream.WithPurgeSubject(f.log.Subject(gone.ID))))
	short, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ok, err = CaughtUp(short, f.env.JS, f.log.Stream())
	require.NoError(t, err)
	require.True(t, ok, "nothing is left to project")
}

// Two Stops at once each return once the projection ended: the second used
// to return at once, while the first waited, and its caller then closed the
// log under a running projector.
func TestASecondStopReturnsOnceTheProjectionEnded(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	f.p.Stop()
	// Views of an older format: the next Start rebuilds them first, and the
	// test holds that rebuild.
	s, err := f.env.JS.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.Metadata = maps.Clone(cfg.Metadata)
	cfg.Metadata[viewFormatKey] = "0"
	_, err = f.env.JS.UpdateStream(ctx, cfg)
	require.NoError(t, err)

	p := f.projector(t, Config{})
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var rebuilding atomic.Bool
	p.folded = func() {
		rebuilding.Store(true)
		defer rebuilding.Store(false)
		entered <- struct{}{}
		<-release
	}
	require.NoError(t, p.Start(ctx))
	<-entered
	firstDone := make(chan struct{})
	go func() { p.Stop(); close(firstDone) }()
	natstest.Locked(t, &p.mu, "the first Stop under way")
	// Ends the rebuild later, for the second Stop to wait for.
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	p.Stop()
	require.False(t, rebuilding.Load(), "the second Stop returned while the projector still ran")
	<-firstDone
	require.NoError(t, p.Start(ctx), "a Start after both starts anew")
	p.Stop()
}

// A listing whose request went unanswered (sent just before its NATS
// server restarted, or a connection cut) asks again: it waited for the
// answer until the caller's deadline, a minute in a soak, with the server
// back in two seconds.
func TestAListingAsksAgainWhenAnAnswerIsLost(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	kv, _ := f.viewsBucket(t)
	for i := range 3 {
		data, err := json.Marshal(View{ID: fmt.Sprint("job-", i), Type: "t", State: statemachine.StatePending, Version: 1})
		require.NoError(t, err)
		_, err = kv.Put(ctx, fmt.Sprint("job-", i), data)
		require.NoError(t, err)
	}
	proxy := natstest.NewProxy(t, f.env.URL)
	nc, err := nats.Connect(proxy.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	r, err := NewReader(ctx, js)
	require.NoError(t, err)

	proxy.Stall()
	type listed struct {
		page Page
		err  error
	}
	done := make(chan listed, 1)
	go func() {
		lctx, cancel := context.WithTimeout(ctx, 3*listTry)
		defer cancel()
		page, err := r.List(lctx, Filter{})
		done <- listed{page, err}
	}()
	natstest.Eventually(t, 5*time.Second, proxy.Holding, "the listing's first request on its way")
	proxy.Cut() // and the request with it
	proxy.Restore()
	got := <-done
	require.NoError(t, got.err)
	require.Len(t, got.page.Views, 3)
}

// deleteConsumerUnanswered fails the first DeleteConsumer as unanswered.
type deleteConsumerUnanswered struct {
	jetstream.JetStream
	failed atomic.Bool
}

func (d *deleteConsumerUnanswered) DeleteConsumer(ctx context.Context, stream, name string) error {
	if d.failed.CompareAndSwap(false, true) {
		return context.DeadlineExceeded // as while a cluster elects a leader
	}
	return d.JetStream.DeleteConsumer(ctx, stream, name)
}

// Views lost, and a projector's Start cut short after it made the bucket
// anew: asked again (as a server's start asks during an election), it
// still projects every view from the start of the log. The second try
// found the bucket, took the views for kept, and left the consumers past
// every event already projected.
func TestViewsLostAreProjectedAgainAfterAStartCutShort(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ids := f.projectedScenario(t)
	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))

	p, err := New(&deleteConsumerUnanswered{JetStream: f.env.JS}, f.log, f.hb, Config{})
	require.NoError(t, err)
	require.ErrorIs(t, p.Start(ctx), context.DeadlineExceeded)
	require.NoError(t, p.Start(ctx))
	t.Cleanup(p.Stop)
	f.requireFolded(t, ids)
}

// electingJS answers the first of each bind and watch of the views as a
// NATS cluster that lost a node answers while it elects a leader.
type electingJS struct {
	jetstream.JetStream
	kvDone, streamDone, watchDone atomic.Bool
}

// errElecting is nats-server's answer while its cluster has no meta leader.
var errElecting = &jetstream.APIError{Code: 503, ErrorCode: provision.ErrCodeClusterNotAvailable, Description: "JetStream system temporarily unavailable"}

func (e *electingJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	if e.kvDone.CompareAndSwap(false, true) {
		return nil, context.DeadlineExceeded // the bucket's leader died
	}
	kv, err := e.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return &electingKV{KeyValue: kv, e: e}, nil
}

func (e *electingJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if e.streamDone.CompareAndSwap(false, true) {
		return nil, context.DeadlineExceeded
	}
	return e.JetStream.Stream(ctx, name)
}

type electingKV struct {
	jetstream.KeyValue
	e *electingJS
}

func (k *electingKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	if k.e.watchDone.CompareAndSwap(false, true) {
		return nil, errElecting // its consumer needs the meta leader
	}
	return k.KeyValue.WatchAll(ctx, opts...)
}

// TestReadsAskAgainWhileAClusterElects: binding to the views, listing
// them and watching them ride out requests unanswered while a NATS cluster
// elects a leader, as a listing's other requests do. Each failed at once:
// on a 3-node cluster with one node killed, `jetjob ls`, `cancel --pending`
// and `purge` exited 1 ("bind job views: context deadline exceeded", "list
// jobs: nats: JetStream system temporarily unavailable") with the quorum
// still there.
func TestReadsAskAgainWhileAClusterElects(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t)
	ids := f.projectedScenario(t)
	for _, tc := range []struct {
		name string
		read func(t *testing.T, r *Reader)
	}{
		{"list", func(t *testing.T, r *Reader) {
			page, err := r.List(ctx, Filter{})
			require.NoError(t, err)
			require.Len(t, page.Views, len(ids))
		}},
		{"watch", func(t *testing.T, r *Reader) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ch, err := r.Watch(wctx, Filter{})
			require.NoError(t, err)
			select {
			case v := <-ch:
				require.Contains(t, ids, v.ID)
			case <-time.After(within):
				require.Fail(t, "no view watched")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := &electingJS{JetStream: f.env.JS}
			r, err := NewReader(ctx, js)
			require.NoError(t, err, "bound though its first requests went unanswered")
			require.True(t, js.kvDone.Load() && js.streamDone.Load(), "both binds were refused once")
			tc.read(t, r)
			require.True(t, js.watchDone.Load(), "the watch was refused once")
		})
	}
}

// TestAListingRidesOutTheLossOfTheMetaLeader: on a 3-node cluster whose
// meta leader dies while the views' own leader lives, a listing waits for
// the next meta leader to make its watch's consumer; it failed after one
// request's 5 s.
func TestAListingRidesOutTheLossOfTheMetaLeader(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, admin := natstest.Connect(t, c.URL)
	kv, err := provision.KeyValue(ctx, provision.WithReplicas(admin, 3), provision.KeyValueConfig{Bucket: BucketDefault})
	require.NoError(t, err)
	_, err = kv.Put(ctx, "01a23765-0b41-7bd0-abd4-29818bf1578c", []byte(`{"id":"01a23765-0b41-7bd0-abd4-29818bf1578c","type":"t","state":"pending","version":1}`))
	require.NoError(t, err)
	metaLeader := func() int {
		for i, s := range c.Servers {
			if s.JetStreamIsLeader() {
				return i
			}
		}
		return -1
	}
	viewsLeader := func() string {
		st, err := admin.Stream(ctx, "KV_"+BucketDefault)
		require.NoError(t, err)
		return st.CachedInfo().Cluster.Leader
	}
	natstest.Eventually(t, within, func() bool { return metaLeader() >= 0 }, "a meta leader")
	meta := metaLeader()
	if viewsLeader() == c.Servers[meta].Name() {
		_, err := admin.Conn().Request("$JS.API.STREAM.LEADER.STEPDOWN.KV_"+BucketDefault, nil, 5*time.Second)
		require.NoError(t, err)
		natstest.Eventually(t, within, func() bool {
			l := viewsLeader()
			return l != "" && l != c.Servers[meta].Name()
		}, "the views' leader moved off the meta leader")
	}
	var at string
	for _, s := range c.Servers {
		if s.Name() == viewsLeader() {
			at = s.ClientURL() // so that the reader's connection outlives the meta leader
		}
	}
	_, js := natstest.Connect(t, at)
	r, err := NewReader(ctx, js)
	require.NoError(t, err)

	c.Servers[meta].Shutdown()
	page, err := r.List(ctx, Filter{})
	require.NoError(t, err, "listed with two nodes of three")
	require.Len(t, page.Views, 1)
}

// A listing cut short (its caller's ctx ended while the bucket was still
// being delivered) lets its watch go: the watch's delivery blocks once
// its buffer of 256 values is full, and with nobody to read them it held
// its goroutine, and the values in it, for good.
func TestAListingCutShortLeavesNothingRunning(t *testing.T) {
	f := newFixture(t)
	_, r := f.viewsBucket(t)
	const n = 10_000
	f.storePendingViews(t, n)
	// The goroutines delivering to a watch, and those of them waiting
	// for room in its buffer.
	stacks := func() []string {
		buf := make([]byte, 1<<22)
		return strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	}
	deliveries := func() (n int) {
		for _, g := range stacks() {
			if strings.Contains(g, "(*kvs).WatchFiltered.func") {
				n++
			}
		}
		return n
	}
	blocked := func() (n int) {
		for _, g := range stacks() {
			if strings.Contains(g, "[chan send") && strings.Contains(g, "(*kvs).WatchFiltered.func") {
				n++
			}
		}
		return n
	}
	st, err := f.env.JS.Stream(context.Background(), "KV_"+BucketDefault)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Cut the listing short once its watch waits for room to deliver.
		for ctx.Err() == nil {
			if blocked() > 0 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond) // a poll, not a wait
		}
	}()
	_, err = r.List(ctx, Filter{})
	require.ErrorIs(t, err, context.Canceled, "the listing was cut short")
	natstest.Eventually(t, 5*time.Second, func() bool { return deliveries() == 0 },
		"the listing's watch let go (%d deliveries blocked)", deliveries())
	natstest.Eventually(t, 5*time.Second, func() bool {
		info, err := st.Info(context.Background())
		return err == nil && info.State.Consumers == 0
	}, "the listing's consumer is gone")
}

// TestAWatchHearsAgainSoonAfterTheNodeOfItsConsumerDies: on a 3-node
// cluster, a watch whose own connection lives while the node holding its
// consumer dies hears the next view within a few seconds. Nothing told it:
// its connection never dropped (so no reconnect made it watch again) and
// no stream was made; nats.go's ordered consumer noticed only once its
// heartbeats were missed, and the watch, a dashboard, heard nothing for
// about 20 s, though the view was written at once (the chaos soak of
// 2026-12-03 saw dashboards 10 s behind after a node's kill -9).
func TestAWatchHearsAgainSoonAfterTheNodeOfItsConsumerDies(t *testing.T) {
	hearsAgainAfterTheNodeOfItsConsumerDies(t, func(js jetstream.JetStream) jetstream.JetStream { return js })
}

// TestAWatchMadeAgainGivesUpATryThatIsNotAnswered: a watch making itself
// again after the node of its consumer died gives up a try that gets no
// answer, and tries again: unbounded, it waited as long as nats.go let it
// (5 s, seen in the failure soak of 2026-12-03 while the cluster elected a
// meta leader, which would have answered the next try within the second).
// The test's try is never answered, as a request sent to a meta leader
// that froze; nats.go would have given it up after 5 s, the watch did not.
func TestAWatchMadeAgainGivesUpATryThatIsNotAnswered(t *testing.T) {
	hearsAgainAfterTheNodeOfItsConsumerDies(t, func(js jetstream.JetStream) jetstream.JetStream {
		return &unansweredJS{JetStream: js}
	})
}

// unansweredJS answers the second watch of the views made through it
// (the first made again, the watch's first being its opening) with
// nothing, until the try's ctx ends.
type unansweredJS struct {
	jetstream.JetStream
	watches atomic.Int32
}

func (u *unansweredJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := u.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return &unansweredKV{KeyValue: kv, u: u}, nil
}

type unansweredKV struct {
	jetstream.KeyValue
	u *unansweredJS
}

func (k *unansweredKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	if k.u.watches.Add(1) == 2 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return k.KeyValue.WatchAll(ctx, opts...)
}

// hearsAgainAfterTheNodeOfItsConsumerDies watches, through what wrap
// makes of its connection, from a node of a 3-node cluster that outlives
// the node of the watch's consumer, and requires the watch to hear the
// next view soon after that node's death.
func hearsAgainAfterTheNodeOfItsConsumerDies(t *testing.T, wrap func(jetstream.JetStream) jetstream.JetStream) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, admin := natstest.Connect(t, c.URL)
	kv, err := provision.KeyValue(ctx, provision.WithReplicas(admin, 3), provision.KeyValueConfig{Bucket: BucketDefault})
	require.NoError(t, err)
	const id = "01a23765-0b41-7bd0-abd4-29818bf1578c"
	view := func(version int) []byte {
		return fmt.Appendf(nil, `{"id":%q,"type":"t","state":"pending","version":%d}`, id, version)
	}
	_, err = kv.Put(ctx, id, view(1))
	require.NoError(t, err)
	st, err := admin.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	// The node of the watch's consumer, once the watch has one.
	consumerNode := func() string {
		for ci := range st.ListConsumers(ctx).Info() {
			if ci.Cluster != nil {
				return ci.Cluster.Leader
			}
		}
		return ""
	}
	// Where the consumer goes is the cluster's choice: watch from each
	// node in turn until the consumer is on another node than the watch's
	// connection, which then outlives it.
	var ch <-chan View
	var dies int
	for try := 0; try < 30 && ch == nil; try++ {
		at := try % len(c.Servers)
		_, js := natstest.Connect(t, c.Servers[at].ClientURL())
		r, err := NewReader(ctx, wrap(js))
		require.NoError(t, err)
		wctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		w, err := r.Watch(wctx, Filter{})
		require.NoError(t, err)
		select {
		case v := <-w:
			require.Equal(t, uint64(1), v.Version)
		case <-time.After(within):
			require.Fail(t, "the view was not watched")
		}
		var node string
		natstest.Eventually(t, within, func() bool { node = consumerNode(); return node != "" }, "the watch's consumer")
		if node != c.Servers[at].Name() {
			ch = w
			for i, s := range c.Servers {
				if s.Name() == node {
					dies = i
				}
			}
			break
		}
		cancel()
		natstest.Eventually(t, within, func() bool { return consumerNode() == "" }, "the watch's consumer gone")
	}
	require.NotNil(t, ch, "no watch with its consumer on another node than its connection's")

	c.Servers[dies].Shutdown()
	natstest.Eventually(t, within, func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := kv.Put(pctx, id, view(2))
		return err == nil
	}, "the view written with a node down")
	written := time.Now()
	const soon = 8 * time.Second // nats.go alone took about 20 s
	select {
	case v := <-ch:
		require.Equal(t, uint64(2), v.Version)
		t.Logf("heard %s after the write", time.Since(written))
	case <-time.After(soon):
		require.Fail(t, "the watch did not hear the view", "within %s of its write", soon)
	}
}

// TestCaughtUpWhereNoServerRanSaysSo: CaughtUp on a NATS where jetjob was
// never set up says there is no event log (events.ErrNoLog), and on a log
// no projector ever read, that no projector runs (ErrNoProjector), not
// JetStream's raw "stream not found" or "consumer not found".
func TestCaughtUpWhereNoServerRanSaysSo(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	_, err := CaughtUp(ctx, env.JS, events.StreamDefault)
	require.ErrorIs(t, err, events.ErrNoLog)
	require.ErrorContains(t, err, events.StreamDefault)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "JetStream's error is kept")

	coretest.Open(t, env.JS)
	_, err = CaughtUp(ctx, env.JS, events.StreamDefault)
	require.ErrorIs(t, err, ErrNoProjector)
	require.ErrorContains(t, err, DurableDefault)
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "JetStream's error is kept")

	stock := natstest.StartStock(t, func(o *server.Options) { o.JetStream = false })
	_, err = CaughtUp(ctx, stock.JS, events.StreamDefault)
	require.ErrorIs(t, err, events.ErrNoLog)
	require.ErrorContains(t, err, "no JetStream on this NATS")
}

// TestReaderRefusesABadBucketName: WithBucket takes the names a projector's
// Config.Bucket takes, refused by NewReader as one clear error that says
// what is expected (ErrInvalidConfig, and statemachine.ErrInvalid as for a
// bad Config), not NATS's "invalid bucket name"; an empty one is the
// default, as in Config.
func TestReaderRefusesABadBucketName(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	for _, bad := range []string{"a.b", "a*", "a>", "a b", strings.Repeat("b", 1000)} {
		_, err := NewReader(ctx, env.JS, WithBucket(bad))
		require.ErrorIs(t, err, ErrInvalidConfig, bad)
		require.ErrorIs(t, err, statemachine.ErrInvalid, bad)
		require.ErrorContains(t, err, "expected 1-", bad)
		require.Less(t, len(err.Error()), 300, "the name is cut in the error")
	}
	_, err := NewReader(ctx, env.JS, WithBucket(""))
	require.ErrorIs(t, err, ErrNoViews, "the default bucket, never made here")
}

// TestWatchSendsEveryMatchingJobWhateverLimitAndAfter: Limit and After
// page a List; a watch, which has no pages, sends every matching job
// whatever they say (as its documentation says).
func TestWatchSendsEveryMatchingJobWhateverLimitAndAfter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	var ids []string
	for range 3 {
		j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "watched"})
		require.NoError(t, err)
		ids = append(ids, j.ID)
	}
	f.run(t)
	slices.Sort(ids)
	ch, err := f.reader(t).Watch(ctx, Filter{Type: "watched", Limit: 1, After: ids[1]})
	require.NoError(t, err)
	var seen []string
	for range ids {
		seen = append(seen, nextView(t, ch).ID)
	}
	require.ElementsMatch(t, ids, seen)
}

// TestViewsCatchUpSoonAfterANodeFreezes: on a 3-node cluster whose node
// leading the projector's consumer of the log freezes, under load, the
// views catch up with the log within a few seconds: of the freeze when the
// projector's connection is to another node, of the thaw when it is to the
// frozen one. A node shut down does not stand for a frozen one: its
// consumer tells its waiting pull requests as it stops.
func TestViewsCatchUpSoonAfterANodeFreezes(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	for _, tc := range []struct {
		name     string
		onFrozen bool // the projector's connection is to the frozen node
	}{{"another node", false}, {"the frozen node", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			viewsCatchUpAfterAFreeze(t, tc.onFrozen)
		})
	}
}

func viewsCatchUpAfterAFreeze(t *testing.T, onFrozen bool) {
	ctx := context.Background()
	c := natstest.StartFreezableCluster(t, 3)
	_, admin := natstest.Connect(t, c.URL)
	admin = provision.WithReplicas(admin, 3)
	lg, hb, _ := coretest.Open(t, admin)
	// Set up once, to learn where the cluster puts the consumer.
	first, err := New(admin, lg, hb, Config{})
	require.NoError(t, err)
	require.NoError(t, first.Start(ctx))
	first.Stop()
	var leader string
	natstest.Eventually(t, within, func() bool {
		cons, err := admin.Consumer(ctx, lg.Stream(), DurableDefault)
		if err == nil && cons.CachedInfo().Cluster != nil {
			leader = cons.CachedInfo().Cluster.Leader
		}
		return leader != ""
	}, "the consumer's leader")
	freezes, lives := -1, -1
	for i, s := range c.Servers {
		if s.Name() == leader {
			freezes = i
		} else {
			lives = i
		}
	}
	require.GreaterOrEqual(t, freezes, 0)
	// The jobs are submitted, and checked, on a node that lives.
	_, js := natstest.Connect(t, c.Servers[lives].ClientURL())
	js = provision.WithReplicas(js, 3)
	lg, hb, m := coretest.Open(t, js)
	f := &fixture{env: &natstest.Env{JS: js}, log: lg, hb: hb, m: m}
	projectorJS := js
	var client *natstest.Proxy
	if onFrozen {
		// Frozen with its node: the proxy holds what either side sends.
		client = natstest.NewProxy(t, c.Servers[freezes].ClientURL())
		_, projectorJS = natstest.Connect(t, client.URL)
		projectorJS = provision.WithReplicas(projectorJS, 3)
	}
	p, err := New(projectorJS, lg, hb, Config{})
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	require.NoError(t, p.Start(ctx))
	var (
		mu   sync.Mutex
		jobs []string
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		// As fast as the log takes them: the more in flight when the node
		// freezes, the likelier a delivery or a pull request is lost.
		for n := 0; loadCtx.Err() == nil; n++ {
			sctx, cancel := context.WithTimeout(loadCtx, 2*time.Second)
			j, _, err := m.Submit(sctx, statemachine.SubmitParams{Type: "build", Key: fmt.Sprintf("job-%d", n)})
			cancel()
			if err != nil {
				n-- // the same key again: it may have been taken
				continue
			}
			mu.Lock()
			jobs = append(jobs, j.ID)
			mu.Unlock()
		}
	}()
	// Asked of the bucket's leader, all at once: a direct get, which any
	// replica answers, was as often sent to the frozen one, and never
	// answered.
	kvStream, err := js.Stream(ctx, "KV_"+BucketDefault)
	require.NoError(t, err)
	missing := func(ids []string) []string {
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err := kvStream.Info(ictx, jetstream.WithSubjectFilter("$KV."+BucketDefault+".>"))
		if err != nil {
			return ids
		}
		var out []string
		for _, id := range ids {
			if info.State.Subjects["$KV."+BucketDefault+"."+id] == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	// projected waits until every job's view is stored, at most until by.
	projected := func(ids []string, since time.Time, by time.Duration, what string) {
		t.Helper()
		var left []string
		for {
			if left = missing(ids); len(left) == 0 {
				break
			}
			if time.Since(since) > by {
				info, err := js.Consumer(ctx, lg.Stream(), DurableDefault)
				require.NoError(t, err)
				require.Failf(t, "views not projected", "%d of %d jobs not projected %s after %s; the consumer: %+v",
					len(left), len(ids), by, what, info.CachedInfo())
			}
			time.Sleep(20 * time.Millisecond) // a poll
		}
		t.Logf("%d jobs projected %s after %s", len(ids), time.Since(since), what)
	}
	taken := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(jobs)
	}
	// Timed as the soak did: load, a freeze of some seconds, load.
	time.Sleep(time.Second) // a stretch of load, not a wait for an event
	c.Freeze(freezes)
	if client != nil {
		client.Stall()
	}
	frozen := time.Now()
	// The jobs submitted up to a moment into the freeze are the ones whose
	// deliveries, pull requests and view writes the freeze can lose; they
	// are at the head of what the projector has to do, so how soon they
	// are projected does not depend on how fast it clears the backlog
	// that builds up meanwhile (all jobs within 10 s of the thaw failed
	// under -race beside another test run, the consumer still busy).
	time.Sleep(time.Second) // a stretch of load with the node frozen
	inFlight := taken()
	if !onFrozen {
		// The cluster elects the consumer's next leader (up to about 9 s),
		// the projector asks it (2 s), and, if the bucket's leader froze
		// too, writes there again (3 s). nats.go's defaults took 27-35 s.
		projected(inFlight, frozen, 18*time.Second, "the freeze")
	}
	time.Sleep(time.Until(frozen.Add(20 * time.Second))) // the freeze lasts
	c.Thaw(freezes)
	if client != nil {
		client.Restore()
	}
	thawed := time.Now()
	// nats.go's defaults took 14-40 s.
	projected(inFlight, thawed, 10*time.Second, "the thaw")
	time.Sleep(time.Second) // a stretch of load
	stopLoad()
	<-loaded
	// The backlog, at whatever pace this machine clears it.
	projected(jobs, time.Now(), 90*time.Second, "the end of the load")
	f.requireFolded(t, jobs)
}

// TestAWatchOnAFrozenNodeHearsAgainOnceItsConnectionGivesItUp: a watch
// whose own connection is to a node that froze hears nothing until its
// connection gives the node up (nats.go's pings, here every second, two
// unanswered) and reconnects to another, after which it catches up as
// after any reconnect. Its probe can do no better: it asks through the
// same connection. With nats.go's default pings (every 2 min) that is
// minutes, or the node's thaw (see Watch).
func TestAWatchOnAFrozenNodeHearsAgainOnceItsConnectionGivesItUp(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	c := natstest.StartFreezableCluster(t, 3)
	_, admin := natstest.Connect(t, c.Servers[0].ClientURL())
	kv, err := provision.KeyValue(ctx, provision.WithReplicas(admin, 3), provision.KeyValueConfig{Bucket: BucketDefault})
	require.NoError(t, err)
	const id = "01a23765-0b41-7bd0-abd4-29818bf1578c"
	view := func(version int) []byte {
		return fmt.Appendf(nil, `{"id":%q,"type":"t","state":"pending","version":%d}`, id, version)
	}
	_, err = kv.Put(ctx, id, view(1))
	require.NoError(t, err)
	// The watch's connection goes to node 2 through a proxy, and every
	// other server it is told of too, so that its reconnect has somewhere
	// to go.
	proxy := natstest.NewProxy(t, c.Servers[2].ClientURL())
	_, js := natstest.Connect(t, proxy.URL+","+c.Servers[1].ClientURL(), nats.DontRandomize(),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	r, err := NewReader(ctx, js)
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := r.Watch(wctx, Filter{})
	require.NoError(t, err)
	select {
	case v := <-ch:
		require.Equal(t, uint64(1), v.Version)
	case <-time.After(within):
		require.Fail(t, "the view was not watched")
	}

	c.Freeze(2)
	proxy.Stall()
	defer proxy.Restore()
	natstest.Eventually(t, 2*within, func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := kv.Put(pctx, id, view(2))
		return err == nil
	}, "the view written with a node frozen")
	written := time.Now()
	select {
	case v := <-ch:
		require.Equal(t, uint64(2), v.Version)
		t.Logf("heard %s after the write", time.Since(written))
	case <-time.After(2 * within):
		require.Fail(t, "the watch did not hear the view", "within %s of its write", 2*within)
	}
}
