package events_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
)

// relayFixture is a server's log serving the relay and a worker's log
// relaying to it, each on its own connection, with a count of the relayed
// requests seen on the wire.
type relayFixture struct {
	env     *natstest.Env
	server  *events.Log
	worker  *events.Log
	relayed *atomic.Int64
	// unwatch stops the count: its subscriber, which never answers, is a
	// responder on the relay subject.
	unwatch func()
}

func newRelayFixture(t *testing.T, workerCfg events.Config) *relayFixture {
	t.Helper()
	f := &relayFixture{env: natstest.Start(t), relayed: new(atomic.Int64)}
	var err error
	f.server, err = events.Open(context.Background(), f.env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(f.server.Close)
	_, js := natstest.Connect(t, f.env.URL)
	workerCfg.Relay = true
	f.worker, err = events.Attach(js, workerCfg)
	require.NoError(t, err)
	t.Cleanup(f.worker.Close)
	watch, _ := natstest.Connect(t, f.env.URL)
	sub, err := watch.Subscribe(events.RelaySubject(events.StreamDefault), func(*nats.Msg) { f.relayed.Add(1) })
	require.NoError(t, err)
	require.NoError(t, watch.Flush())
	f.unwatch = func() {
		_ = sub.Unsubscribe()
		_ = watch.Flush()
	}
	t.Cleanup(f.unwatch)
	return f
}

func TestRelayedAppendsAreStoredAndExpectTheLastSequence(t *testing.T) {
	ctx := context.Background()
	f := newRelayFixture(t, events.Config{})
	stop, err := f.server.ServeRelay()
	require.NoError(t, err)
	t.Cleanup(stop)

	// A few appends at a time, as a worker process running a few jobs makes.
	var ids []string
	var errs []error
	for round := range 25 {
		roundIDs, roundErrs, _, wait := appendAll(t, ctx, f.worker, fmt.Sprintf("relayed%d", round), 8)
		wait()
		ids, errs = append(ids, roundIDs...), append(errs, roundErrs...)
	}
	for i, err := range errs {
		require.NoError(t, err, "append of %s", ids[i])
	}
	requireOutcomes(t, f.server, ids, errs, nil)
	natstest.Eventually(t, 5*time.Second, func() bool { return f.relayed.Load() == 200 }, "every append relayed")

	// A bulk of them at once makes batches of its own.
	ids, errs, _, wait := appendAll(t, ctx, f.worker, "bulk", 1000)
	wait()
	for i, err := range errs {
		require.NoError(t, err, "append of %s", ids[i])
	}
	require.Less(t, f.relayed.Load(), int64(200+800), "a bulk of appends was relayed")

	seq, err := f.worker.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = f.worker.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), 0)
	require.ErrorIs(t, err, events.ErrConflict)
	next, err := f.worker.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), seq)
	require.NoError(t, err)
	recs, err := f.server.Load(ctx, "job1")
	require.NoError(t, err)
	require.Equal(t, []uint64{seq, next}, []uint64{recs[0].Seq, recs[1].Seq})
}

// With a server that stops relaying with appends in flight, or none
// relaying, every append still lands, straight on the stream.
func TestAppendsGoStraightToTheStreamWithoutARelay(t *testing.T) {
	ctx := context.Background()
	f := newRelayFixture(t, events.Config{})
	stop, err := f.server.ServeRelay()
	require.NoError(t, err)
	ids, errs, answered, wait := appendAll(t, ctx, f.worker, "cut", 500)
	natstest.Eventually(t, time.Minute, func() bool { return answered.Load() >= 100 }, "appends answered")
	stop()
	f.server.Close()
	wait()
	for i, err := range errs {
		require.NoError(t, err, "append of %s", ids[i])
	}
	requireOutcomes(t, f.worker, ids, errs, nil)
	require.Positive(t, f.relayed.Load())

	f.unwatch()
	for i := range 3 {
		_, err = f.worker.Append(ctx, mustEvent(t, fmt.Sprintf("alone%d", i), events.TypeSubmitted), 0)
		require.NoError(t, err)
	}
}

// A relay that takes an append and never answers leaves its outcome
// unknown: the worker appends it itself, and it is stored once; the next
// appends go straight to the stream.
func TestAnUnansweredRelayIsResolvedOnTheStream(t *testing.T) {
	ctx := context.Background()
	f := newRelayFixture(t, events.Config{PublishTimeout: 200 * time.Millisecond})
	silent, _ := natstest.Connect(t, f.env.URL)
	var taken atomic.Int64
	sub, err := silent.QueueSubscribe(events.RelaySubject(events.StreamDefault), "jetjob-relay", func(*nats.Msg) { taken.Add(1) })
	require.NoError(t, err)
	require.NoError(t, silent.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	seq, err := f.worker.Append(ctx, mustEvent(t, "unanswered", events.TypeSubmitted), 0)
	require.NoError(t, err)
	recs, err := f.server.Load(ctx, "unanswered")
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, seq, recs[0].Seq)

	_, err = f.worker.Append(ctx, mustEvent(t, "unanswered", events.TypeCanceled), seq)
	require.NoError(t, err)
	require.Equal(t, int64(1), taken.Load(), "the next append was relayed again")
}

// What is no append this log would publish is refused, and the server
// serves on.
func TestTheRelayRefusesWhatIsNoAppend(t *testing.T) {
	f := newRelayFixture(t, events.Config{})
	stop, err := f.server.ServeRelay()
	require.NoError(t, err)
	t.Cleanup(stop)
	nc, _ := natstest.Connect(t, f.env.URL)
	for _, m := range []*nats.Msg{
		{Subject: events.RelaySubject(events.StreamDefault), Data: []byte("x")},
		{Subject: events.RelaySubject(events.StreamDefault), Header: nats.Header{"Jj-Relay-Job": {"bad.id"}, "Nats-Msg-Id": {"e1"}, "Nats-Expected-Last-Subject-Sequence": {"0"}}},
		{Subject: events.RelaySubject(events.StreamDefault), Header: nats.Header{"Jj-Relay-Job": {"j1"}, "Nats-Msg-Id": {"e1"}, "Nats-Expected-Last-Subject-Sequence": {"-1"}}},
		// Headers an append would have, and a body no event.
		{Subject: events.RelaySubject(events.StreamDefault), Data: []byte("not an event"), Header: nats.Header{"Jj-Relay-Job": {"j1"}, "Nats-Msg-Id": {"e1"}, "Nats-Expected-Last-Subject-Sequence": {"0"}, events.TypeHeader: {events.TypeSubmitted}}},
		// An event of another job than the headers name.
		relayRequestFor(t, mustEvent(t, "j2", events.TypeSubmitted), "j1"),
	} {
		resp, err := nc.RequestMsg(m, 5*time.Second)
		require.NoError(t, err)
		require.Equal(t, "refused", resp.Header.Get("Jj-Relay-Outcome"))
	}
	_, err = f.worker.Append(context.Background(), mustEvent(t, "after", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = f.server.Load(context.Background(), "j1")
	require.ErrorIs(t, err, events.ErrNotFound)
}

// relayRequestFor is the request a relaying log sends for ev, naming job in
// its headers.
func relayRequestFor(t *testing.T, ev events.Event, job string) *nats.Msg {
	t.Helper()
	data, err := events.Encode(ev)
	require.NoError(t, err)
	return &nats.Msg{Subject: events.RelaySubject(events.StreamDefault), Data: data, Header: nats.Header{
		"Jj-Relay-Job": {job}, "Nats-Msg-Id": {ev.ID}, "Nats-Expected-Last-Subject-Sequence": {"0"}, events.TypeHeader: {ev.Type}}}
}
