package consume

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Pass reads a stream once with an ordered consumer, from where cfg starts
// it up to the last message the stream held when the pass began, handing
// fn each message and its metadata until fn returns false.
func Pass(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	// Deleted after the iterator stops (defers run last first): a running
	// ordered consumer makes itself again when it finds its consumer gone.
	// A delete that fails leaves it to its inactive threshold.
	defer func() { _ = DeleteOrdered(js, stream, cons) }()
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	defer it.Stop()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			it.Stop() // unblocks Next
		case <-stopped:
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("read %s: %w", stream, ctx.Err())
			}
			return fmt.Errorf("read %s: %w", stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		if !fn(m, meta) || meta.Sequence.Stream >= state.LastSeq || meta.NumPending == 0 {
			return nil
		}
	}
}
