// Package consume reads JetStream streams through consumers for jetjob's
// services: Loop feeds a durable consumer's messages, in batches, to the
// long-running ones (projector, enqueuer); Pass reads a stream once, for a
// rebuild or a purge; LastSeqOnLeader asks a stream's leader where a
// subject ends.
package consume

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Process handles a batch and acknowledges what it handled. An error makes
// Loop offer the same batch again.
type Process func(ctx context.Context, batch []jetstream.Msg) error

// Batching says how Loop forms batches.
type Batching struct {
	// Max is the most messages in a batch.
	Max int
	// Linger, when positive, is how long Loop waits for more messages after
	// a batch of at least LingerAfter, before it processes the next: under
	// load, fewer and fuller batches cost less (a projector writes a job's
	// view once for all of its events in a batch), while a quiet system,
	// whose batches are small, is never kept waiting.
	Linger      time.Duration
	LingerAfter int
	// LeaderLost, when set, is called (in a goroutine of its own, one
	// call at a time, until Loop's ctx ends) when the consumer's leader
	// changed or stopped answering: the messages the old leader delivered
	// that never arrived are otherwise delivered again only after AckWait.
	// Its ctx ends as Loop returns, and Loop returns once the call has.
	LeaderLost func(context.Context)
}

// retryPause spaces the retries of a failed batch, doubling with each one
// to retryPauseMax.
const (
	retryPause    = 200 * time.Millisecond
	retryPauseMax = 2 * time.Second
)

// pullHeartbeat is how often the consumer's leader tells a waiting pull
// request that it still holds it. A pull request can be lost with no word:
// sent to a leader that froze (SIGSTOP, a partition) before it told its
// followers, or taken by it as it thawed, still believing itself leader,
// and dropped when it learned otherwise. nats.go's Consume asks again
// only once two heartbeats are missed, and by default they come every
// 15 s: a 3-node cluster with one node frozen for 12 s left the views 35 s
// behind the log. Idle, it costs a message a second per loop.
const pullHeartbeat = time.Second

// retrySaidEvery spaces the lines of a batch failing again and again (a
// server that cannot write): each retry said flooded the log.
const retrySaidEvery = 30 * time.Second

// Loop runs until ctx ends, or until the consumer can no longer be consumed
// (it was deleted): it blocks for the first message, takes whatever else has
// arrived (up to b.Max, lingering as b says), and calls process, so a quiet
// system handles each message at once and a busy one handles hundreds per
// round. The caller decides what to do when it returns with ctx still live.
func Loop(ctx context.Context, cons jetstream.Consumer, b Batching, logger *zap.Logger, process Process) {
	max := b.Max
	msgs := make(chan jetstream.Msg, max*2)
	stopped := make(chan struct{})
	// Calls of b.LeaderLost owed: one at a time, and one more for what
	// happened during a call (a leader elected while the call for the
	// missed heartbeats before it was running).
	leaderLost := make(chan struct{}, 1)
	if b.LeaderLost != nil {
		// Waited for as Loop returns, also when it ends with ctx live (its
		// consumer gone): a call must not outlive the loop it serves.
		lostCtx, cancel := context.WithCancel(ctx)
		ended := make(chan struct{})
		defer func() {
			cancel()
			<-ended
		}()
		go func() {
			defer close(ended)
			for {
				select {
				case <-lostCtx.Done():
					return
				case <-leaderLost:
					b.LeaderLost(lostCtx)
				}
			}
		}()
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-stopped:
			_ = m.Nak()
		}
	}, jetstream.PullMaxMessages(max*2), jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if ctx.Err() != nil {
				return
			}
			logger.Debug("consume", zap.Error(err))
			if errors.Is(err, jetstream.ErrConsumerLeadershipChanged) || errors.Is(err, jetstream.ErrNoHeartbeat) {
				select {
				case leaderLost <- struct{}{}:
				default: // one call owed already
				}
			}
		}))
	if err != nil {
		logger.Error("start consuming", zap.Error(err))
		return
	}
	// Messages received but not processed are handed back at once: left
	// unacknowledged, they would wait AckWait (30 s) before another server,
	// or this one restarted, got them.
	defer func() {
		close(stopped)
		// Drain, unlike Stop, still hands the messages buffered in the
		// client to the callback, which now gives them back. The wait is
		// bounded: a stop must not hang on a broken connection.
		cc.Drain()
		select {
		case <-cc.Closed():
		case <-time.After(5 * time.Second):
		}
		for {
			select {
			case m := <-msgs:
				handBack([]jetstream.Msg{m})
			default:
				return
			}
		}
	}()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	busy := false
	for {
		var batch []jetstream.Msg
		select {
		case <-ctx.Done():
			return
		case <-cc.Closed():
			logger.Warn("the consumer can no longer be consumed")
			return
		case m := <-msgs:
			batch = append(batch, m)
		}
	fill:
		for len(batch) < max {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if busy {
			linger.Reset(b.Linger)
		wait:
			for len(batch) < max {
				select {
				case m := <-msgs:
					batch = append(batch, m)
				case <-linger.C:
					break wait
				case <-ctx.Done():
					handBack(batch)
					return
				}
			}
			linger.Stop()
		}
		busy = b.Linger > 0 && len(batch) >= b.LingerAfter
		pause := retryPause
		var saidAt time.Time
		for failed := 0; ; failed++ {
			err := process(ctx, batch)
			if ctx.Err() != nil {
				// Cut short: what it did not acknowledge goes back at once.
				handBack(batch)
				return
			}
			if err == nil {
				if failed > 0 && !saidAt.IsZero() {
					logger.Info("a failed batch went through", zap.Int("tries", failed+1))
				}
				break
			}
			if time.Since(saidAt) >= retrySaidEvery {
				logger.Warn("batch failed; retrying it", zap.Int("tries", failed+1), zap.Error(err))
				saidAt = time.Now()
			}
			select {
			case <-ctx.Done():
				handBack(batch)
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, retryPauseMax)
		}
	}
}

// handBack naks a batch's messages, as the deferred drain does those never
// processed: left unacknowledged, they would wait out AckWait. A message
// acknowledged already stays so (the client sends nothing for it, and the
// server ignores a nak of a message no longer pending).
func handBack(batch []jetstream.Msg) {
	for _, m := range batch {
		_ = m.Nak()
	}
}

// availableGrace is how long Available waits for a message once the
// consumer has none: nats-server acknowledges a publish before it tells
// the stream's consumers, so a message published just before may not be
// deliverable yet.
const availableGrace = 100 * time.Millisecond

// Available processes every message available now, in batches of up to max,
// and returns how many there were. Tests call it instead of running Loop.
func Available(ctx context.Context, cons jetstream.Consumer, max int, process Process) (int, error) {
	total := 0
	for {
		batch, err := fetchNoWait(cons, max)
		if err == nil && len(batch) == 0 {
			batch, err = fetchWithin(cons, availableGrace)
		}
		if err != nil {
			return total, err
		}
		if len(batch) == 0 {
			return total, nil
		}
		if err := process(ctx, batch); err != nil {
			return total, err
		}
		total += len(batch)
	}
}

func fetchNoWait(cons jetstream.Consumer, max int) ([]jetstream.Msg, error) {
	b, err := cons.FetchNoWait(max)
	if err != nil {
		return nil, err
	}
	return collect(b), nil
}

// fetchWithin waits up to d for one message.
func fetchWithin(cons jetstream.Consumer, d time.Duration) ([]jetstream.Msg, error) {
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(d))
	if err != nil {
		return nil, err
	}
	return collect(b), nil
}

func collect(b jetstream.MessageBatch) []jetstream.Msg {
	var batch []jetstream.Msg
	for m := range b.Messages() {
		batch = append(batch, m)
	}
	return batch
}
