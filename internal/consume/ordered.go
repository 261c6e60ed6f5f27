package consume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// deleteTimeout bounds the request that removes a finished reader's
// consumer; the reader's own context may already be done.
const deleteTimeout = 5 * time.Second

// DeleteOrdered removes an ordered consumer its reader has finished with.
// Stopping one leaves it on the server until its inactive threshold, five
// minutes by default, and while it stays the server recounts its pending
// messages on every purge of more than one message from its stream: a walk
// of the stream's subjects once the purges pass it. A purge pass that left
// one behind every few seconds made purging slower the more jobs were kept.
func DeleteOrdered(js jetstream.JetStream, stream string, cons jetstream.Consumer) error {
	info := cons.CachedInfo()
	if info == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	if err := js.DeleteConsumer(ctx, stream, info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s of %s: %w", info.Name, stream, err)
	}
	return nil
}
