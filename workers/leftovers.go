package workers

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/statemachine"
)

// Leftovers deletes what a finished job may have left in the queue and
// timers streams, for the purger: the queue message of a job canceled while
// pending (only a worker of its tag set would fetch and drop it, and there
// may never be one again), and the timer and due messages of a job that was
// scheduled or retried (the timers stream keeps a fired timer's due message);
// and the queues no job has used for a while (ForgetIdleQueues).
type Leftovers struct {
	js       jetstream.JetStream
	queues   [QueueShards]jetstream.Stream
	timers   jetstream.Stream
	registry jetstream.KeyValue
	// removalGrace is how long ForgetIdleQueues waits before it looks for
	// jobs enqueued to the queues it removed.
	removalGrace time.Duration
}

// AttachLeftovers binds to the queue and timers streams that EnsureTopology
// created; ErrNoQueues, naming the one missing, where none did.
func AttachLeftovers(ctx context.Context, js jetstream.JetStream) (*Leftovers, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	l := &Leftovers{js: js, removalGrace: removalGraceDefault}
	var err error
	for shard := range l.queues {
		if l.queues[shard], err = js.Stream(ctx, queueStream(shard)); err != nil {
			return nil, fmt.Errorf("bind queue: %w", notLaidOut(err, queueStream(shard)))
		}
	}
	if l.timers, err = js.Stream(ctx, TimersStream); err != nil {
		return nil, fmt.Errorf("bind timers: %w", notLaidOut(err, TimersStream))
	}
	if l.registry, err = js.KeyValue(ctx, TagsetsBucket); err != nil {
		return nil, fmt.Errorf("bind tag sets: %w", notLaidOut(err, "bucket "+TagsetsBucket))
	}
	return l, nil
}

// Forget deletes the queue, timer and due messages of a finished job. It
// must run while the job's history still exists: until then no job can be
// submitted again under its ID and enqueue a message Forget would delete.
func (l *Leftovers) Forget(ctx context.Context, job statemachine.Job) error {
	if err := statemachine.ValidateJobID(job.ID); err != nil {
		return err
	}
	if !job.State.Finished() {
		return fmt.Errorf("%w: forget the queue messages of job %s: it is %s, not finished", statemachine.ErrInvalid, job.ID, job.State)
	}
	if statemachine.ValidateToken("type", job.Type) == nil {
		key := queueKey{Type: job.Type, Tagset: TagsetID(job.Tags), Prio: job.Priority}
		if err := l.queues[key.shard()].Purge(ctx, jetstream.WithPurgeSubject(key.subject(job.ID))); err != nil {
			return fmt.Errorf("forget queue message of job %s: %w", job.ID, err)
		}
	}
	if job.RunAt == nil {
		// Never scheduled (no run-at given, no retry): it never had a
		// timer, and a purge spares two requests.
		return nil
	}
	for _, subject := range []string{timerPrefix + job.ID, duePrefix + job.ID} {
		if err := l.timers.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
			return fmt.Errorf("forget timers of job %s: %w", job.ID, err)
		}
	}
	return nil
}
