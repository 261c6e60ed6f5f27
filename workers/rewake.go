package workers

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// A wake-up goes to one worker connection of those serving its type (the
// pools' queue group), and a connection whose process stopped reading
// (frozen by SIGSTOP or a debugger, a paused VM, a swap storm) keeps its
// place in the group until NATS drops it, minutes later: the wake-ups it
// is sent are lost, and their jobs waited for a pool's backup poll while
// other pools sat idle. So the enqueuer remembers, for each queue, the last
// job it sent a wake-up for, and looks a RewakeAfter later whether that
// job's queue message is still there. If it is, every pool is woken; a
// job still queued after that is looked for again at growing intervals,
// up to rewakeMax (every pool busy, or none serving its tags). One lookup
// per queue once its wake-ups stop, not per job.

// wokenQueue is a queue's last wake-up, and when to look at it again.
type wokenQueue struct {
	key     queueKey
	jobID   string
	check   time.Time
	backoff time.Duration
}

// wake sends each queue's wake-up, and remembers its job.
func (e *Enqueuer) wake(queues map[string]wokenQueue) {
	if len(queues) == 0 {
		return
	}
	check := e.cfg.Now().Add(e.cfg.RewakeAfter)
	e.wokenMu.Lock()
	for name, w := range queues {
		if cur := e.woken[name]; cur != nil && cur.backoff > e.cfg.RewakeAfter {
			// Found still queued before (every pool busy, or none
			// serving it): the new job keeps the queue's pace, or a
			// submit a second would look it up and wake every pool as
			// often.
			cur.jobID = w.jobID
			continue
		}
		w.check, w.backoff = check, e.cfg.RewakeAfter
		e.woken[name] = &w
	}
	e.wokenMu.Unlock()
	for _, w := range queues {
		_ = e.nc.Publish(w.key.wake(), nil)
	}
}

// rewakePoll is how often the enqueuer looks for wake-ups due a check.
const rewakePoll = 250 * time.Millisecond

// rewakeLoop runs rewakeLost until ctx ends.
func (e *Enqueuer) rewakeLoop(ctx context.Context) {
	tick := time.NewTicker(rewakePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			e.rewakeLost(ctx)
		}
	}
}

// rewakeLost wakes every pool for each queue whose last wake-up's job is
// still queued past its check, and forgets the queues whose job was taken.
// It returns how many queues it woke.
func (e *Enqueuer) rewakeLost(ctx context.Context) int {
	now := e.cfg.Now()
	var due []wokenQueue
	e.wokenMu.Lock()
	for _, w := range e.woken {
		if !now.Before(w.check) {
			due = append(due, *w)
		}
	}
	e.wokenMu.Unlock()
	woke := 0
	for _, w := range due {
		if ctx.Err() != nil {
			return woke
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := e.queues[w.key.shard()].GetLastMsgForSubject(lctx, w.key.subject(w.jobID))
		cancel()
		taken := errors.Is(err, jetstream.ErrMsgNotFound)
		if err != nil && !taken {
			e.logger.Debug("look up a woken job's queue message", zap.String("queue", w.key.name()), zap.Error(err))
			continue // looked up again at the next poll
		}
		e.wokenMu.Lock()
		cur := e.woken[w.key.name()]
		if cur != nil && cur.jobID == w.jobID && cur.check.Equal(w.check) {
			if taken {
				delete(e.woken, w.key.name())
			} else {
				cur.backoff = min(2*cur.backoff, rewakeMax)
				cur.check = now.Add(cur.backoff)
			}
		}
		e.wokenMu.Unlock()
		if !taken {
			// Every pool: the one the wake-up went to may not be reading.
			passOnWake(e.nc, w.key.name())
			woke++
		}
	}
	return woke
}
