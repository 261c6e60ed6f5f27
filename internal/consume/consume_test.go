package consume

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/internal/natstest"
)

// Messages a stopped loop received but did not process go back to the
// consumer at once, not after AckWait.
func TestStoppedLoopHandsBackWhatItDidNotProcess(t *testing.T) {
	ctx := context.Background()
	env, cons := slowRedeliveryConsumer(t)
	publish(t, env, 50)

	loopCtx, stop := context.WithCancel(ctx)
	inFirst, release := make(chan struct{}), make(chan struct{})
	ended := make(chan struct{})
	processed := 0
	go func() {
		defer close(ended)
		Loop(loopCtx, cons, Batching{Max: 4}, zap.NewNop(), func(_ context.Context, batch []jetstream.Msg) error {
			if processed == 0 {
				close(inFirst)
				<-release
			}
			processed += len(batch)
			for _, m := range batch {
				_ = m.Ack()
			}
			return nil
		})
	}()
	<-inFirst
	// Let the loop receive more than it processes.
	natstest.Eventually(t, 10*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending > 4
	}, "messages in hand")
	stop()
	close(release)
	<-ended

	// Everything not processed is delivered again within seconds, where
	// AckWait is an hour.
	deliveredAgain(t, cons, 50-processed, "the unprocessed messages delivered again")
}

// A batch whose processing the stop cuts short goes back at once too, but
// for the messages it acknowledged (the enqueuer of a server stopping in the
// middle of a batch: seen as 100 messages held for AckWait).
func TestStoppedLoopHandsBackTheBatchItCutShort(t *testing.T) {
	ctx := context.Background()
	env, cons := slowRedeliveryConsumer(t)

	loopCtx, stop := context.WithCancel(ctx)
	firstDone, ended := make(chan struct{}), make(chan struct{})
	calls, acked := 0, 0
	go func() {
		defer close(ended)
		Loop(loopCtx, cons, Batching{Max: 8, Linger: time.Hour, LingerAfter: 1}, zap.NewNop(), func(ctx context.Context, batch []jetstream.Msg) error {
			calls++
			if calls == 1 {
				// After it, the next batch lingers (up to an hour)
				// until it holds 8.
				require.NoError(t, batch[0].Ack())
				close(firstDone)
				return nil
			}
			// Half acknowledged, then stopped in the middle.
			for _, m := range batch[:len(batch)/2] {
				require.NoError(t, m.Ack())
				acked++
			}
			stop()
			<-ctx.Done()
			return ctx.Err()
		})
	}()
	publish(t, env, 1)
	<-firstDone
	publish(t, env, 8)
	<-ended
	require.Equal(t, 4, acked)

	deliveredAgain(t, cons, 4, "the unacknowledged half delivered again")
}

// After a batch of at least LingerAfter, the next batch waits for more
// messages (up to Max, or Linger); after a smaller one, it goes at once.
func TestLoopLingersOnlyAfterABusyBatch(t *testing.T) {
	for _, tc := range []struct {
		name        string
		lingerAfter int
		want        []int
	}{
		{name: "busy", lingerAfter: 1, want: []int{1, 4}},
		{name: "quiet", lingerAfter: 2, want: []int{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := natstest.Start(t)
			ctx, stop := context.WithCancel(context.Background())
			_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
			require.NoError(t, err)
			cons, err := env.JS.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
			require.NoError(t, err)
			var mu sync.Mutex
			var sizes []int
			got := func() []int {
				mu.Lock()
				defer mu.Unlock()
				return slices.Clone(sizes)
			}
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				// An hour's linger: a batch that lingers fills up to Max.
				Loop(ctx, cons, Batching{Max: 4, Linger: time.Hour, LingerAfter: tc.lingerAfter}, zap.NewNop(),
					func(_ context.Context, batch []jetstream.Msg) error {
						mu.Lock()
						sizes = append(sizes, len(batch))
						mu.Unlock()
						for _, m := range batch {
							_ = m.Ack()
						}
						return nil
					})
			}()
			t.Cleanup(func() { stop(); <-ended })
			publish := func() {
				_, err := env.JS.Publish(ctx, "s.x", []byte("m"))
				require.NoError(t, err)
			}
			publish()
			natstest.Eventually(t, 10*time.Second, func() bool { return len(got()) == 1 }, "the first batch processed")
			for range tc.want[1] {
				publish()
			}
			natstest.Eventually(t, 10*time.Second, func() bool { return len(got()) == 2 }, "the second batch processed")
			require.Equal(t, tc.want, got())
		})
	}
}

// slowRedeliveryConsumer is a durable consumer of a new stream S whose
// AckWait is an hour: a message it delivers again within seconds was handed
// back.
func slowRedeliveryConsumer(t *testing.T) (*natstest.Env, jetstream.Consumer) {
	t.Helper()
	env := natstest.Start(t)
	ctx := context.Background()
	_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
	require.NoError(t, err)
	cons, err := env.JS.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{
		Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour})
	require.NoError(t, err)
	return env, cons
}

func publish(t *testing.T, env *natstest.Env, n int) {
	t.Helper()
	for range n {
		_, err := env.JS.Publish(context.Background(), "s.x", []byte("m"))
		require.NoError(t, err)
	}
}

// deliveredAgain waits until the consumer has delivered n messages more,
// acknowledging each.
func deliveredAgain(t *testing.T, cons jetstream.Consumer, n int, what string) {
	t.Helper()
	got := 0
	natstest.Eventually(t, 10*time.Second, func() bool {
		b, err := cons.FetchNoWait(100)
		if err != nil {
			return false
		}
		for m := range b.Messages() {
			got++
			_ = m.Ack()
		}
		return got == n
	}, what)
}

// A batch failing again and again (a server that cannot write) is said
// once, not at every retry, and once more when it goes through.
func TestABatchFailingAgainIsSaidOnce(t *testing.T) {
	ctx := context.Background()
	env, cons := slowRedeliveryConsumer(t)
	publish(t, env, 1)
	core, logs := observer.New(zapcore.InfoLevel)
	loopCtx, stop := context.WithCancel(ctx)
	defer stop()
	tries, done := 0, make(chan struct{})
	go Loop(loopCtx, cons, Batching{Max: 4}, zap.New(core), func(_ context.Context, batch []jetstream.Msg) error {
		tries++
		if tries < 4 {
			return errors.New("insufficient resources")
		}
		for _, m := range batch {
			_ = m.Ack()
		}
		close(done)
		return nil
	})
	<-done
	natstest.Eventually(t, 10*time.Second, func() bool { return logs.Len() == 2 }, "the failure and the recovery said")
	require.Equal(t, "batch failed; retrying it", logs.All()[0].Message)
	require.Equal(t, "a failed batch went through", logs.All()[1].Message)
	require.Equal(t, int64(4), logs.All()[1].ContextMap()["tries"])
}

// The leader's message get goes by the handle's API prefix: through a leaf
// node, a domain's, the plain $JS.API. being denied there.
func TestLastSeqOnLeaderGoesByTheHandlesDomain(t *testing.T) {
	ctx := context.Background()
	leafed := natstest.StartLeafed(t, "hub")
	nc, js := leafed.Connect(t)
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LEADER", Subjects: []string{"leader.>"}})
	require.NoError(t, err)
	for range 2 {
		_, err := js.Publish(ctx, "leader.a", nil)
		require.NoError(t, err)
	}
	msgGet := MsgGetSubject(js, "LEADER")
	require.Equal(t, "$JS.hub.API.STREAM.MSG.GET.LEADER", msgGet)
	last, err := LastSeqOnLeader(ctx, nc, msgGet, "leader.a")
	require.NoError(t, err)
	require.Equal(t, uint64(2), last)
	last, err = LastSeqOnLeader(ctx, nc, msgGet, "leader.none")
	require.NoError(t, err)
	require.Zero(t, last)

	// Without a domain, as before.
	_, plain := natstest.Connect(t, leafed.HubURL)
	require.Equal(t, "$JS.API.STREAM.MSG.GET.LEADER", MsgGetSubject(plain, "LEADER"))
}

// Loop returns only once its LeaderLost call in progress has: a projector's
// Stop otherwise returned with a reset of its consumer still running, which
// then logged (a zaptest logger panics at a line after its test) and, had
// Loop ended with its ctx live (its consumer deleted), reset a consumer
// nobody consumed for up to AckWait.
func TestLoopReturnsOnceItsLeaderLostCallHasEnded(t *testing.T) {
	ctx := context.Background()
	env, _ := slowRedeliveryConsumer(t)
	proxy := natstest.NewProxy(t, env.URL)
	_, js := natstest.Connect(t, proxy.URL)
	cons, err := js.Consumer(ctx, "S", "d")
	require.NoError(t, err)

	called, release, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once sync.Once
	loopCtx, stop := context.WithCancel(ctx)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		Loop(loopCtx, cons, Batching{Max: 4, LeaderLost: func(ctx context.Context) {
			first := false
			once.Do(func() { first = true; close(called) })
			if !first {
				return
			}
			<-ctx.Done()
			<-release
			close(finished)
		}}, zap.NewNop(), func(_ context.Context, batch []jetstream.Msg) error {
			for _, m := range batch {
				_ = m.Ack()
			}
			return nil
		})
	}()
	// The server's heartbeats held: missed after 2 s, as from a frozen leader.
	proxy.StallAnswers()
	select {
	case <-called:
	case <-time.After(20 * time.Second):
		t.Fatal("LeaderLost not called within 20s of the heartbeats' loss")
	}
	proxy.Restore()
	stop()
	select {
	case <-returned:
		t.Fatal("Loop returned while its LeaderLost call was still running")
	case <-time.After(3 * time.Second):
	}
	close(release)
	select {
	case <-returned:
	case <-time.After(20 * time.Second):
		t.Fatal("Loop did not return within 20s of its LeaderLost call's end")
	}
	select {
	case <-finished:
	default:
		t.Fatal("LeaderLost's call had not ended when Loop returned")
	}
}
