package workers

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

func (f *fixture) leftovers() *Leftovers {
	f.t.Helper()
	l, err := AttachLeftovers(context.Background(), f.env.JS)
	require.NoError(f.t, err)
	l.removalGrace = 10 * time.Millisecond
	return l
}

// registered reports whether the queue is in the tag set registry.
func (f *fixture) registered(key queueKey) bool {
	f.t.Helper()
	kv, err := f.env.JS.KeyValue(context.Background(), TagsetsBucket)
	require.NoError(f.t, err)
	_, err = kv.Get(context.Background(), key.name())
	return err == nil
}

func (p *Pool) serves(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queues[name] != nil
}

func TestIdleQueuesAreForgottenAndMadeAgainForTheNextJob(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	tags := map[string]string{"os": "linux"}
	// Asked only on wake-ups: it learns of the removal from the registry.
	p := f.pool(PoolConfig{Types: []string{"t"}, Tags: tags, BackupPoll: time.Hour}, noop)
	plain := queueKey{Type: "t", Tagset: noTags}
	tagged := queueKey{Type: "t", Tagset: TagsetID(tags), Prio: 3}
	f.waitState(f.submit(statemachine.SubmitParams{Type: "t"}).ID, statemachine.StateSucceeded)
	f.waitState(f.submit(statemachine.SubmitParams{Type: "t", Tags: tags, Priority: 3}).ID, statemachine.StateSucceeded)
	// No worker serves u: its job waits in its queue, which stays.
	waiting := queueKey{Type: "u", Tagset: noTags}
	f.submit(statemachine.SubmitParams{Type: "u"})
	f.waitQueued(1)

	l := f.leftovers()
	kept, err := l.ForgetIdleQueues(ctx, time.Hour, time.Now().Add(30*time.Minute))
	require.NoError(t, err)
	require.Empty(t, kept, "used within the hour")
	gone, err := l.ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
	require.NoError(t, err)
	slices.Sort(gone)
	want := []string{plain.name(), tagged.name()}
	slices.Sort(want)
	require.Equal(t, want, gone)

	consumers := f.queueConsumers()
	require.NotContains(t, consumers, plain.consumer())
	require.NotContains(t, consumers, tagged.consumer())
	require.Contains(t, consumers, waiting.consumer(), "a queue holding a job stays")
	require.False(t, f.registered(plain))
	require.False(t, f.registered(tagged))
	require.True(t, f.registered(waiting))
	natstest.Eventually(t, 10*time.Second, func() bool { return !p.serves(plain.name()) && !p.serves(tagged.name()) },
		"the pool stops asking the removed queues")

	// The enqueuer saw the removal: the next job makes its queue again.
	f.waitState(f.submit(statemachine.SubmitParams{Type: "t", Tags: tags, Priority: 3}).ID, statemachine.StateSucceeded)
	require.True(t, f.registered(tagged))
	require.True(t, p.serves(tagged.name()))
	require.False(t, f.registered(plain), "only the queue a job needed")
}

// usedQueueUnwatched runs one job through the queue of type t with an
// enqueuer that watches nothing (runOnce), as one yet to hear of a
// removal would, and a pool serving t.
func usedQueueUnwatched(t *testing.T) (*fixture, *Pool, queueKey) {
	t.Helper()
	f := newFixture(t, false)
	p := f.pool(PoolConfig{Types: []string{"t"}}, noop)
	first := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err := f.enq.runOnce(context.Background())
	require.NoError(t, err)
	f.waitState(first.ID, statemachine.StateSucceeded)
	return f, p, queueKey{Type: "t", Tagset: noTags}
}

// TestAQueueRemovedUnderAnEnqueuerIsMadeAgain: an enqueuer that has not
// heard of a removal yet enqueues to the queue; its reconcile pass makes the
// queue again.
func TestAQueueRemovedUnderAnEnqueuerIsMadeAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f, p, key := usedQueueUnwatched(t)

	gone, err := f.leftovers().ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
	require.NoError(t, err)
	require.Equal(t, []string{key.name()}, gone)
	natstest.Eventually(t, 10*time.Second, func() bool { return !p.serves(key.name()) }, "the pool stops asking the queue")

	late := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err = f.enq.runOnce(ctx)
	require.NoError(t, err)
	f.waitQueued(1) // in the stream, with no consumer and no registration
	require.False(t, f.registered(key))

	lister := func(ctx context.Context, states []statemachine.State) ([]QueuedJob, error) {
		cur, err := f.m.Load(ctx, late.ID)
		if err != nil {
			return nil, err
		}
		return []QueuedJob{{ID: cur.ID, Type: cur.Type, Tags: cur.Tags, Priority: cur.Priority, State: cur.State, UpdatedAt: cur.UpdatedAt}}, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileAge: time.Nanosecond})
	require.NoError(t, err)
	res, err := enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued, "its message is in the stream")
	require.Equal(t, []string{key.name()}, res.Restored)
	f.waitState(late.ID, statemachine.StateSucceeded)
}

// TestAQueueThatGotAJobWhileRemovedStays: an enqueuer that has not yet
// seen a removal enqueues a job to the queue while it is being removed; the
// removal looks for jobs after a grace, and makes the queue again.
func TestAQueueThatGotAJobWhileRemovedStays(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f, p, key := usedQueueUnwatched(t)

	l := f.leftovers()
	l.removalGrace = 3 * time.Second
	type result struct {
		gone []string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		gone, err := l.ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
		done <- result{gone, err}
	}()
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := f.env.JS.Consumer(ctx, key.stream(), key.consumer())
		return !f.registered(key) && err != nil
	}, "queue removed")
	late := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err := f.enq.runOnce(ctx)
	require.NoError(t, err)
	res := <-done
	require.NoError(t, res.err)
	require.Empty(t, res.gone, "made again")
	require.True(t, f.registered(key))
	require.Contains(t, f.queueConsumers(), key.consumer())
	f.waitState(late.ID, statemachine.StateSucceeded)
	require.True(t, p.serves(key.name()))
}

// TestRegisteredQueueWithoutAConsumerIsForgotten: queue consumers live in
// memory, so a restart of the NATS server leaves the queues no pool serves
// registered without one.
func TestRegisteredQueueWithoutAConsumerIsForgotten(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	key := queueKey{Type: "t", Tagset: noTags}
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	f.waitQueued(1)
	st, err := f.env.JS.Stream(ctx, key.stream())
	require.NoError(t, err)
	require.NoError(t, st.DeleteConsumer(ctx, key.consumer()))

	l := f.leftovers()
	gone, err := l.ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
	require.NoError(t, err)
	require.Empty(t, gone, "its job is still queued")
	require.True(t, f.registered(key))

	p := f.pool(PoolConfig{Types: []string{"t"}}, noop)
	f.waitState(j.ID, statemachine.StateSucceeded)
	require.NoError(t, p.Stop(ctx)) // it would make the consumer again
	require.NoError(t, st.DeleteConsumer(ctx, key.consumer()))
	gone, err = l.ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
	require.NoError(t, err)
	require.Equal(t, []string{key.name()}, gone)
	require.False(t, f.registered(key))
	_, err = st.Consumer(ctx, key.consumer())
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)
}

// TestAQueueMadeAgainKeepsItsTags: a queue found with a consumer but no
// registration is registered again with its jobs' tags, which pools match
// against theirs; without them, every pool of the type would serve it.
func TestAQueueMadeAgainKeepsItsTags(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	tags := map[string]string{"os": "linux"}
	f.submit(statemachine.SubmitParams{Type: "t", Tags: tags})
	f.waitQueued(1)
	key := queueKey{Type: "t", Tagset: TagsetID(tags)}
	kv, err := f.env.JS.KeyValue(ctx, TagsetsBucket)
	require.NoError(t, err)
	require.NoError(t, kv.Delete(ctx, key.name()))

	fromFilter, ok := keyOfFilter(key.filter())
	require.True(t, ok)
	require.Nil(t, fromFilter.Tags)
	remade, err := f.leftovers().recheck(ctx, fromFilter)
	require.NoError(t, err)
	require.True(t, remade)
	e, err := kv.Get(ctx, key.name())
	require.NoError(t, err)
	var registered queueKey
	require.NoError(t, json.Unmarshal(e.Value(), &registered))
	require.Equal(t, tags, registered.Tags)
}

// A dropped queue left in the hot list takes no free slot: the live queue
// behind it is asked at once, not at the next wake-up or backup poll.
func TestTakeHotSkipsDroppedQueuesWithoutUsingASlot(t *testing.T) {
	p := &Pool{hot: map[string]bool{}, queues: map[string]*poolQueue{}, recheck: map[string]int{}}
	dropped := &poolQueue{key: queueKey{Type: "t", Tagset: "a"}, name: "t.a.0"}
	live := &poolQueue{key: queueKey{Type: "t", Tagset: "b"}, name: "t.b.0"}
	p.queues[dropped.name], p.queues[live.name] = dropped, live
	p.mu.Lock()
	p.setHotLocked(dropped)
	p.setHotLocked(live)
	p.mu.Unlock()
	p.dropQueue(dropped.name, nil)
	require.Equal(t, []*poolQueue{live}, p.takeHot(1))
	require.Empty(t, p.takeHot(1), "the dropped queue left the hot list")
}

// A pool forgets the queues it cannot serve once they are removed as idle;
// it kept every one ever registered.
func TestAPoolForgetsTheQueuesItCannotServeOnceRemoved(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	untagged := f.pool(PoolConfig{Types: []string{"t"}, BackupPoll: time.Hour}, noop)
	f.pool(PoolConfig{Types: []string{"t"}, Tags: map[string]string{"a": "1", "b": "2"}, BackupPoll: time.Hour}, noop)
	for _, tags := range []map[string]string{{"a": "1"}, {"b": "2"}, {"a": "1", "b": "2"}} {
		f.waitState(f.submit(statemachine.SubmitParams{Type: "t", Tags: tags}).ID, statemachine.StateSucceeded)
	}
	unserved := func() int {
		untagged.mu.Lock()
		defer untagged.mu.Unlock()
		return len(untagged.unserved)
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return unserved() == 3 }, "the untagged pool knows the 3 tagged queues")
	gone, err := f.leftovers().ForgetIdleQueues(ctx, time.Hour, time.Now().Add(2*time.Hour))
	require.NoError(t, err)
	require.Len(t, gone, 3)
	natstest.Eventually(t, 10*time.Second, func() bool { return unserved() == 0 }, "and forgets them once removed")
}
