package consume

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/natstest"
)

// Messages a stopped loop received but did not process go back to the
// consumer at once, not after AckWait.
func TestStoppedLoopHandsBackWhatItDidNotProcess(t *testing.T) {
	env := natstest.Start(t)
	ctx := context.Background()
	_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
	require.NoError(t, err)
	cons, err := env.JS.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{
		Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour})
	require.NoError(t, err)
	for range 50 {
		_, err := env.JS.Publish(ctx, "s.x", []byte("m"))
		require.NoError(t, err)
	}

	loopCtx, stop := context.WithCancel(ctx)
	inFirst, release := make(chan struct{}), make(chan struct{})
	ended := make(chan struct{})
	processed := 0
	go func() {
		defer close(ended)
		Loop(loopCtx, cons, 4, zap.NewNop(), func(_ context.Context, batch []jetstream.Msg) error {
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
		return got == 50-processed
	}, "the unprocessed messages delivered again")
}
