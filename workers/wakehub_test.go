package workers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

// Pools on one connection hear wake-ups through one pair of subscriptions
// per type, dropped with the last pool of the type; each pool still gets
// the jobs it serves.
func TestPoolsOnOneConnectionShareWakeUps(t *testing.T) {
	f := newFixture(t, true)
	hubTypes := func() map[string]int {
		wakeHubs.Lock()
		defer wakeHubs.Unlock()
		out := map[string]int{}
		if h := wakeHubs.m[f.env.NC]; h != nil {
			h.mu.Lock()
			for typ, ht := range h.types {
				out[typ] = len(ht.pools)
			}
			h.mu.Unlock()
		}
		return out
	}
	ran := make(chan string, 10)
	record := func(name string) Handler {
		return func(_ context.Context, j *Job) error { ran <- name + " " + j.Type; return nil }
	}
	nextRun := func() string {
		select {
		case r := <-ran:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no job ran within 10 s: its wake-up reached no pool")
			return ""
		}
	}
	const noPoll = time.Hour // every job found by its wake-up
	pa1 := f.pool(PoolConfig{Types: []string{"a"}, BackupPoll: noPoll}, record("pa1"))
	pa2 := f.pool(PoolConfig{Types: []string{"a"}, BackupPoll: noPoll}, record("pa2"))
	pab := f.pool(PoolConfig{Types: []string{"a", "b"}, BackupPoll: noPoll}, record("pab"))
	require.Equal(t, map[string]int{"a": 3, "b": 1}, hubTypes())

	// Only pab serves b; a wake-up for it reaches pab through the hub.
	f.submit(statemachine.SubmitParams{Type: "b"})
	require.Equal(t, "pab b", nextRun())

	require.NoError(t, pab.Stop(context.Background()))
	require.Equal(t, map[string]int{"a": 2}, hubTypes())
	j := f.submit(statemachine.SubmitParams{Type: "a"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	require.Contains(t, []string{"pa1 a", "pa2 a"}, nextRun())

	require.NoError(t, pa1.Stop(context.Background()))
	require.NoError(t, pa2.Stop(context.Background()))
	wakeHubs.Lock()
	_, left := wakeHubs.m[f.env.NC]
	wakeHubs.Unlock()
	require.False(t, left, "the connection's hub outlived its last pool")

	// A pool started after the hub was dropped subscribes anew.
	f.pool(PoolConfig{Types: []string{"b"}, BackupPoll: noPoll}, record("pb"))
	f.submit(statemachine.SubmitParams{Type: "b"})
	require.Equal(t, "pb b", nextRun())
}

// A pool claims shared wake-ups only while it has a free slot for each, and
// asks the claimed queues before the others hot, highest priority first.
func TestClaimsTakeASlotEachAndGoFirst(t *testing.T) {
	f := newFixture(t, false)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"t"}, Concurrency: 2}, noop)
	require.NoError(t, err)
	p.claimWindow = time.Hour // no claim expires while the test looks
	queue := func(tagset string, prio int) *poolQueue {
		key := queueKey{Type: "t", Tagset: tagset, Prio: prio}
		q := &poolQueue{key: key, name: key.name()}
		p.queues[q.name] = q
		return q
	}
	plain, a, b, c, high := queue("plain", 0), queue("a", 0), queue("b", 0), queue("c", 0), queue("high", 1)
	names := func(qs []*poolQueue) []string {
		var out []string
		for _, q := range qs {
			out = append(out, q.key.Tagset)
		}
		return out
	}

	p.markHot([]*poolQueue{plain, high})
	require.True(t, p.claimWake(a.name))
	require.True(t, p.claimWake(b.name))
	require.False(t, p.claimWake(c.name), "a third claim with two slots")
	require.True(t, p.claimWake(a.name), "a claim renewed takes no other slot")
	require.False(t, p.claimWake("t.unknown.0"), "a queue not served")
	require.Equal(t, []string{"high", "a", "b", "plain"}, names(p.takeHot(10)))

	// A queue hot already keeps its place when claimed: one claimed again
	// and again must not keep overtaking the others.
	p.mu.Lock()
	for name, claim := range p.claims {
		claim.timer.Stop()
		delete(p.claims, name)
	}
	p.mu.Unlock()
	p.markHot([]*poolQueue{plain, c})
	require.True(t, p.claimWake(c.name))
	require.Equal(t, []string{"plain"}, names(p.takeHot(1)))
	require.Equal(t, []string{"c"}, names(p.takeHot(10)))
	require.Empty(t, p.takeHot(10))

	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	require.False(t, p.claimWake(a.name), "a stopping pool claims nothing")
}

// A pool starting beside many queues asks only those holding jobs, learned
// from each queue stream's subjects, and runs every job
// queued before it started with no backup poll to find them.
func TestPoolStartAsksTheQueuesHoldingJobs(t *testing.T) {
	f := newFixture(t, true)
	const sets = 48 // three queues a shard on average: most shards are listed
	allKeys, params := manyTagSets()
	for i := range sets {
		f.submit(params(i))
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == sets }, "every job queued")
	first := f.pool(PoolConfig{Types: []string{"t"}, Tags: allKeys, Concurrency: 8}, noop)
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == 0 }, "every job run")
	require.NoError(t, first.Stop(context.Background()))

	holding := map[string]bool{}
	var ids []string
	for i := 0; i < sets; i += 4 {
		j := f.submit(params(i))
		ids = append(ids, j.ID)
		holding[queueKey{Type: "t", Tagset: TagsetID(params(i).Tags)}.name()] = true
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == uint64(len(ids)) }, "the new jobs queued")

	// How a pool knowing every queue splits them, the new jobs queued.
	probe, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"t"}, Tags: allKeys}, noop)
	require.NoError(t, err)
	var known []*poolQueue
	for i := range sets {
		key := queueKey{Type: "t", Tagset: TagsetID(params(i).Tags)}
		known = append(known, &poolQueue{key: key, name: key.name()})
	}
	look := probe.queuesHolding(context.Background(), known)
	asked := map[*poolQueue]bool{}
	for _, q := range look {
		asked[q] = true
	}
	var skipped []*poolQueue
	for _, q := range known {
		if !asked[q] {
			require.False(t, holding[q.name], "queue %s holds a job and was skipped", q.name)
			skipped = append(skipped, q)
		}
	}
	require.NotEmpty(t, skipped, "every queue asked, as before the listing")

	// One skipped gets a job: asked again, it is to be asked (and those of
	// shards with too few skipped ones to list).
	late := skipped[0]
	for i := range sets {
		if known[i] == late {
			ids = append(ids, f.submit(params(i)).ID)
		}
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == uint64(len(ids)) }, "the late job queued")
	again := probe.queuesHolding(context.Background(), skipped)
	require.Contains(t, again, late)
	require.Less(t, len(again), len(skipped))

	f.pool(PoolConfig{Types: []string{"t"}, Tags: allKeys, BackupPoll: time.Hour}, noop)
	for _, id := range ids {
		f.waitState(id, statemachine.StateSucceeded)
	}
}

// The backup pass finds a job no wake-up announced, and an idle pool's
// backup passes ask the queue streams what they hold, not every queue.
func TestBackupPassFindsAJobWithNoWakeUp(t *testing.T) {
	f := newFixture(t, true)
	const sets = 48
	allKeys, params := manyTagSets()
	var ids []string
	for i := range sets {
		ids = append(ids, f.submit(params(i)).ID)
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == sets }, "every job queued")

	var mu sync.Mutex
	asks, looks := 0, map[string]int{} // fetches; reads of each queue stream
	for _, subject := range []string{"$JS.API.CONSUMER.MSG.NEXT.>", "$JS.API.STREAM.INFO.*"} {
		sub, err := f.env.NC.Subscribe(subject, func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			if strings.HasPrefix(m.Subject, "$JS.API.STREAM.INFO.JJ_QUEUE_") {
				looks[m.Subject]++
			} else if strings.Contains(m.Subject, ".JJ_QUEUE_") {
				asks++
			}
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	const poll = 200 * time.Millisecond
	p := f.pool(PoolConfig{Types: []string{"t"}, Tags: allKeys, Concurrency: 8, BackupPoll: poll}, noop)
	for _, id := range ids {
		f.waitState(id, statemachine.StateSucceeded)
	}

	// Idle: ten backup passes ask far fewer than ten times every queue.
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == 0 }, "every job acknowledged")
	mu.Lock()
	asks, looks = 0, map[string]int{}
	mu.Unlock()
	natstest.Eventually(t, 40*poll, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range looks {
			if n >= 10 {
				return true
			}
		}
		return false
	}, "ten backup passes")
	mu.Lock()
	require.Less(t, asks, 10*sets/2, "asks of an idle pool in ten backup passes, %d queues", sets)
	mu.Unlock()

	// Deaf to wake-ups, as if this one were lost, the pool finds the job.
	p.unsubscribe()
	late := f.submit(params(0))
	f.waitState(late.ID, statemachine.StateSucceeded)
}

// manyTagSets returns the tags of a pool serving every tag set of jobs of
// type "t" whose job i is in the (i+1)th non-empty subset of eight keys.
func manyTagSets() (all map[string]string, job func(i int) statemachine.SubmitParams) {
	all = map[string]string{}
	for k := range 8 {
		all[fmt.Sprintf("k%d", k)] = "1"
	}
	return all, func(i int) statemachine.SubmitParams {
		tags := map[string]string{}
		for k := range 8 {
			if (i+1)&(1<<k) != 0 {
				tags[fmt.Sprintf("k%d", k)] = "1"
			}
		}
		return statemachine.SubmitParams{Type: "t", Tags: tags}
	}
}
