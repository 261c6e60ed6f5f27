package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

type fixture struct {
	env *natstest.Env
	log *events.Log
	hb  *events.Heartbeats
	m   *statemachine.Machine
	p   *Projector
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	env := natstest.Start(t)
	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	p, err := New(env.JS, lg, hb, Config{})
	require.NoError(t, err)
	return &fixture{env: env, log: lg, hb: hb, m: m, p: p}
}

// folded is the view the log says the job should have.
func (f *fixture) folded(t *testing.T, id string) View {
	t.Helper()
	recs, err := f.log.Load(context.Background(), id)
	require.NoError(t, err)
	job, _ := statemachine.Fold(recs)
	var beat *events.Beat
	if b, ok, err := f.hb.Last(context.Background(), id); err == nil && ok {
		beat = &b
	}
	return ViewOf(job, beat)
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// mixedJobs drives jobs through every kind of transition.
func mixedJobs(t *testing.T, m *statemachine.Machine) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	submit := func(p statemachine.SubmitParams) statemachine.Job {
		j, _, err := m.Submit(ctx, p)
		require.NoError(t, err)
		ids = append(ids, j.ID)
		return j
	}
	submit(statemachine.SubmitParams{Type: "build", Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"v": "1"}})
	j := submit(statemachine.SubmitParams{Type: "build", Payload: []byte(`{"a":1}`)})
	_, err := m.Cancel(ctx, j.ID, "not needed")
	require.NoError(t, err)
	j = submit(statemachine.SubmitParams{Type: "render", Priority: 3})
	held, err := m.Acquire(ctx, j.ID, "w1")
	require.NoError(t, err)
	_, err = m.Succeed(ctx, held, json.RawMessage(`{"ok":true}`))
	require.NoError(t, err)
	j = submit(statemachine.SubmitParams{Type: "render", MaxAttempts: 2})
	held, err = m.Acquire(ctx, j.ID, "w1")
	require.NoError(t, err)
	_, err = m.Fail(ctx, held, statemachine.FailParams{Error: "boom", Code: "exit"})
	require.NoError(t, err)
	j = submit(statemachine.SubmitParams{Type: "import"})
	_, err = m.Acquire(ctx, j.ID, "w2")
	require.NoError(t, err)
	_, err = m.Cancel(ctx, j.ID, "stop")
	require.NoError(t, err)
	runAt := time.Now().Add(time.Hour)
	submit(statemachine.SubmitParams{Type: "import", RunAt: &runAt})
	return ids
}

func TestViewsEqualTheFold(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ids := mixedJobs(t, f.m)
	_, err := f.p.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range ids {
		v, err := r.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, jsonOf(t, f.folded(t, id)), jsonOf(t, v), "job %s", id)
	}
	// Projecting again changes nothing.
	n, err := f.p.runOnce(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestRedeliveryIsIdempotent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ids := mixedJobs(t, f.m)
	_, err := f.p.runOnce(ctx)
	require.NoError(t, err)
	// A second projector on a fresh consumer sees every event again.
	again, err := New(f.env.JS, f.log, f.hb, Config{Durable: "again", HeartbeatDurable: "again_hb"})
	require.NoError(t, err)
	_, err = again.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range ids {
		v, err := r.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, jsonOf(t, f.folded(t, id)), jsonOf(t, v))
	}
}

func TestGarbageIsQuarantinedAndDoesNotStall(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	t.Cleanup(f.p.Stop)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build"})
	require.NoError(t, err)
	for _, garbage := range []string{"not json", `{"v":1,"id":"x","job":"` + j.ID + `","type":"job.exploded"}`, `{"v":9}`} {
		_, err = f.env.JS.PublishMsg(ctx, &nats.Msg{Subject: f.log.Subject(j.ID), Data: []byte(garbage)})
		require.NoError(t, err)
	}
	_, err = f.env.JS.Publish(ctx, f.log.Subject("orphan"), []byte("junk"))
	require.NoError(t, err)
	// Later valid events are still projected.
	canceled, err := f.m.Cancel(ctx, j.ID, "")
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		v, err := r.Get(ctx, j.ID)
		return err == nil && v.State == statemachine.StateCanceled && v.Version == canceled.Version
	}, "canceled job projected past the garbage")
	v, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, 3, v.Quarantined)
	q, err := f.env.JS.Stream(ctx, QuarantineStreamDefault)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.State.Msgs == 4
	}, "four quarantined messages")
}

func TestLostBucketIsRebuiltIdentically(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ids := mixedJobs(t, f.m)
	_, err := f.p.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	before := map[string]string{}
	for _, id := range ids {
		v, err := r.Get(ctx, id)
		require.NoError(t, err)
		before[id] = jsonOf(t, v)
	}
	require.NoError(t, f.env.JS.DeleteKeyValue(ctx, BucketDefault))

	p2, err := New(f.env.JS, f.log, f.hb, Config{})
	require.NoError(t, err)
	require.NoError(t, p2.Start(ctx))
	t.Cleanup(p2.Stop)
	r, err = NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range ids {
		natstest.Eventually(t, 5*time.Second, func() bool {
			v, err := r.Get(ctx, id)
			return err == nil && jsonOf(t, v) == before[id]
		}, "job %s rebuilt identically", id)
	}
}

func TestRebuildWhileSubmitting(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	t.Cleanup(f.p.Stop)
	var mu sync.Mutex
	var ids []string
	submit := func(n int) {
		for i := 0; i < n; i++ {
			j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t", Meta: map[string]string{"i": fmt.Sprint(i)}})
			require.NoError(t, err)
			if i%3 == 0 {
				_, err = f.m.Cancel(ctx, j.ID, "")
				require.NoError(t, err)
			}
			mu.Lock()
			ids = append(ids, j.ID)
			mu.Unlock()
		}
	}
	submit(200)
	done := make(chan struct{})
	go func() { defer close(done); submit(200) }()
	other, err := New(f.env.JS, f.log, f.hb, Config{})
	require.NoError(t, err)
	stats, err := other.Rebuild(ctx)
	require.NoError(t, err)
	require.Greater(t, stats.Events, 200)
	<-done
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range ids {
		natstest.Eventually(t, 5*time.Second, func() bool {
			v, err := r.Get(ctx, id)
			return err == nil && jsonOf(t, v) == jsonOf(t, f.folded(t, id))
		}, "job %s equals its fold after rebuild", id)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	var ids []string
	for i := 0; i < 10; i++ {
		j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "build",
			Tags: map[string]string{"region": []string{"eu", "us"}[i%2]},
			Meta: map[string]string{"template_version": fmt.Sprint("v", i%3)}})
		require.NoError(t, err)
		ids = append(ids, j.ID)
		if i < 3 {
			_, err = f.m.Cancel(ctx, j.ID, "")
			require.NoError(t, err)
		}
	}
	_, err := f.p.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	list := func(flt Filter) []string {
		page, err := r.List(ctx, flt)
		require.NoError(t, err)
		var out []string
		for _, v := range page.Views {
			out = append(out, v.ID)
		}
		return out
	}
	require.Equal(t, ids, list(Filter{}))
	require.Equal(t, ids[:3], list(Filter{States: []statemachine.State{statemachine.StateCanceled}}))
	require.Len(t, list(Filter{States: []statemachine.State{statemachine.StateCanceled, statemachine.StatePending}}), 10)
	require.Equal(t, []string{ids[0], ids[2], ids[4], ids[6], ids[8]}, list(Filter{Tags: map[string]string{"region": "eu"}}))
	require.Equal(t, []string{ids[0], ids[6]}, list(Filter{Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"template_version": "v0"}}))
	require.Len(t, list(Filter{MetaNot: map[string]string{"template_version": "v0"}}), 6)
	require.Empty(t, list(Filter{Type: "other"}))
	page, err := r.List(ctx, Filter{Limit: 4})
	require.NoError(t, err)
	require.Len(t, page.Views, 4)
	require.Equal(t, ids[3], page.Next)
	require.Equal(t, ids[4:8], list(Filter{Limit: 4, After: page.Next}))
	_, err = r.Get(ctx, "00000000-0000-0000-0000-000000000000")
	require.ErrorIs(t, err, events.ErrNotFound)
	_, err = r.Get(ctx, "bad.id")
	require.ErrorIs(t, err, events.ErrInvalidJobID)
}

func TestWatchSeesChangesInOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	require.NoError(t, f.p.Start(ctx))
	t.Cleanup(f.p.Stop)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	ch, err := r.Watch(ctx, Filter{Type: "watched"})
	require.NoError(t, err)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "watched"})
	require.NoError(t, err)
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	_, err = f.m.Succeed(ctx, held, nil)
	require.NoError(t, err)
	var last uint64
	for {
		select {
		case v := <-ch:
			require.Greater(t, v.Version, last, "versions increase")
			last = v.Version
			if v.State == statemachine.StateSucceeded {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no succeeded view within 5s")
		}
	}
}

func TestHeartbeatMovesUpdatedAt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	_, err = f.p.runOnce(ctx)
	require.NoError(t, err)
	at := held.UpdatedAt.Add(time.Minute)
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease, WorkerID: "w", At: at}))
	// A beat from an attempt that does not hold the job counts for nothing.
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease + 99, WorkerID: "old", At: at.Add(time.Hour)}))
	require.NoError(t, f.hb.Record(ctx, events.Beat{JobID: j.ID, Lease: held.Lease, WorkerID: "w", At: at}))
	_, err = f.p.runOnce(ctx)
	require.NoError(t, err)
	r, err := NewReader(ctx, f.env.JS)
	require.NoError(t, err)
	v, err := r.Get(ctx, j.ID)
	require.NoError(t, err)
	require.True(t, v.UpdatedAt.Equal(at), "updated_at %s, want %s", v.UpdatedAt, at)
	require.Equal(t, jsonOf(t, f.folded(t, j.ID)), jsonOf(t, v))
}
