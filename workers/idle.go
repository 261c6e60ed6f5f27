package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/statemachine"
)

// QueueIdleAfterDefault is how long a queue goes unused before
// ForgetIdleQueues removes it, unless its caller says otherwise.
const QueueIdleAfterDefault = time.Hour

// ForgetIdleQueues removes the queues, one per (type, tag set, priority),
// that hold no job and have not been used for idleFor before now: each
// one's consumer and its entry in the tag set registry. Without it a system
// whose jobs carry ever new tag sets (a user's or a repository's) keeps a
// consumer for each forever, every ack on a queue stream costs more the
// more consumers it has, and every worker serving those tags polls them.
//
// A queue removed is made again by the first enqueuer to need it. The
// registry entries go first, as deletes that pools and enqueuers watching
// the registry see: pools stop asking the queues, enqueuers forget they
// made them. Then the consumers go. An enqueuer that has not seen a delete
// yet may still enqueue a job to its queue, so 2 s later the removed
// queues are looked at again, and those holding a job are made again. A
// job enqueued later still, by an enqueuer cut off from the registry for
// longer, is found by that enqueuer's reconcile pass, which makes the
// queue of every pending job missing from the registry.
//
// It returns the names of the queues removed.
func (l *Leftovers) ForgetIdleQueues(ctx context.Context, idleFor time.Duration, now time.Time) ([]string, error) {
	idle, err := l.idleQueues(ctx, idleFor, now)
	if err != nil || len(idle) == 0 {
		return nil, err
	}
	var removed []queueKey
	var unregisterErr error
	for _, q := range idle {
		// One that fails may be half removed: it is looked at again too.
		removed = append(removed, q.key)
		if unregisterErr = l.unregister(ctx, q.key, q.hasConsumer); unregisterErr != nil {
			break
		}
	}
	// An enqueuer that has not yet seen a removal may still publish to the
	// queue: its publish is in flight, or it checked that it made the
	// queue just before the delete reached it. The wait and the look after
	// it go on when ctx ends (the server stops), else such a job would
	// wait for a reconcile pass.
	time.Sleep(l.removalGrace)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recheckTimeout)
	defer cancel()
	remade, recheckErr := l.recheckAll(rctx, removed)
	var forgotten []string
	for i, key := range removed {
		failed := unregisterErr != nil && i == len(removed)-1
		if !remade[key.name()] && !failed {
			forgotten = append(forgotten, key.name())
		}
	}
	if err := errors.Join(unregisterErr, recheckErr); err != nil {
		return forgotten, err
	}
	// The deletes' markers are kept a while, for pools and enqueuers that
	// were away when they were written to see them when they come back.
	if err := l.registry.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(max(idleFor, registryMarkersKept))); err != nil {
		return forgotten, fmt.Errorf("forget idle queues: clean up %s: %w", TagsetsBucket, err)
	}
	return forgotten, nil
}

// idleQueue is a queue to remove, and whether it has a consumer.
type idleQueue struct {
	key         queueKey
	hasConsumer bool
}

// idleQueues finds the queues that hold no job and were not used for
// idleFor before now.
func (l *Leftovers) idleQueues(ctx context.Context, idleFor time.Duration, now time.Time) ([]idleQueue, error) {
	entries, err := l.registeredQueues(ctx)
	if err != nil {
		return nil, err
	}
	var idle []idleQueue
	withConsumer := map[string]bool{}
	for shard, st := range l.queues {
		list := st.ListConsumers(ctx)
		for info := range list.Info() {
			key, ok := keyOfFilter(info.Config.FilterSubject)
			if !ok || key.consumer() != info.Name || key.shard() != shard {
				continue // not a queue's consumer
			}
			withConsumer[key.name()] = true
			if info.NumPending > 0 || info.NumAckPending > 0 || now.Sub(lastUse(info)) < idleFor {
				continue
			}
			if e, ok := entries[key.name()]; ok {
				if now.Sub(e.Created()) < idleFor {
					continue // registered again lately, by an enqueuer that started
				}
				// The registered key carries the tags, which a queue made
				// again needs for its pools.
				_ = json.Unmarshal(e.Value(), &key)
			}
			idle = append(idle, idleQueue{key: key, hasConsumer: true})
		}
		if err := list.Err(); err != nil {
			return nil, fmt.Errorf("forget idle queues: list consumers of %s: %w", queueStream(shard), err)
		}
	}
	// Registered queues without a consumer: consumers live in memory, so a
	// restart of the NATS server loses those of the queues no pool serves.
	for name, e := range entries {
		if withConsumer[name] || now.Sub(e.Created()) < idleFor {
			continue
		}
		var key queueKey
		if json.Unmarshal(e.Value(), &key) != nil || key.name() != name {
			continue
		}
		idle = append(idle, idleQueue{key: key})
	}
	return idle, nil
}

// removalGraceDefault is long enough for a removal to reach every enqueuer
// on a healthy NATS, and for what they published before to land (2 s in
// ForgetIdleQueues' doc).
const removalGraceDefault = 2 * time.Second

// recheckTimeout bounds the look for jobs after a removal.
const recheckTimeout = 10 * time.Second

// registryMarkersKept is the least time a removed queue's delete marker
// stays in the registry.
const registryMarkersKept = 30 * time.Minute

// registeredQueues reads every live entry of the tag set registry.
func (l *Leftovers) registeredQueues(ctx context.Context) (map[string]jetstream.KeyValueEntry, error) {
	w, err := l.registry.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("forget idle queues: read %s: %w", TagsetsBucket, err)
	}
	defer func() { _ = w.Stop() }()
	entries := map[string]jetstream.KeyValueEntry{}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("forget idle queues: read %s: %w", TagsetsBucket, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("forget idle queues: read %s: watch ended", TagsetsBucket)
			}
			if e == nil {
				return entries, nil
			}
			entries[e.Key()] = e
		}
	}
}

// unregister removes a queue's registration, then its consumer: a pool
// that finds the consumer gone makes it again unless the queue is
// unregistered.
func (l *Leftovers) unregister(ctx context.Context, key queueKey, hasConsumer bool) error {
	if err := l.registry.Delete(ctx, key.name()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget queue %s: unregister: %w", key.name(), err)
	}
	if hasConsumer {
		if err := l.queues[key.shard()].DeleteConsumer(ctx, key.consumer()); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("forget queue %s: %w", key.name(), err)
		}
	}
	return nil
}

// recheckAll makes again each removed queue that a job was enqueued to,
// and names them.
func (l *Leftovers) recheckAll(ctx context.Context, keys []queueKey) (map[string]bool, error) {
	remade := map[string]bool{}
	var errs []error
	for _, key := range keys {
		ok, err := l.recheck(ctx, key)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			remade[key.name()] = true
		}
	}
	return remade, errors.Join(errs...)
}

// recheck makes a removed queue again if it holds a job, and says so.
func (l *Leftovers) recheck(ctx context.Context, key queueKey) (bool, error) {
	m, err := l.queues[key.shard()].GetLastMsgForSubject(ctx, key.filter())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("forget queue %s: look for jobs: %w", key.name(), err)
	}
	if key.Tags == nil && key.Tagset != noTags {
		// Registered nowhere: the job has the tags that pools match.
		var job statemachine.Job
		if json.Unmarshal(m.Data, &job) != nil || TagsetID(job.Tags) != key.Tagset {
			return true, nil // left to the reconcile pass, which reads them from the job's view
		}
		key.Tags = job.Tags
	}
	if err := registerQueue(ctx, l.js, l.registry, key); err != nil {
		return false, fmt.Errorf("forget queue %s: a job came: %w", key.name(), err)
	}
	// Pools learn of it from the registry; the wake-up also makes one whose
	// registry watch missed it look it up.
	_ = l.js.Conn().Publish(key.wake(), nil)
	return true, nil
}

// lastUse is when a queue's consumer was made or last delivered a job,
// whichever is later, by the server's clock.
func lastUse(info *jetstream.ConsumerInfo) time.Time {
	last := info.Created
	if d := info.Delivered.Last; d != nil && d.After(last) {
		last = *d
	}
	return last
}

// keyOfFilter reads a queue's key back from its consumer's filter,
// jj.wq.<shard>.<type>.<tagset>.<prio>.*.
func keyOfFilter(filter string) (queueKey, bool) {
	rest, ok := strings.CutPrefix(filter, queuePrefix)
	if !ok {
		return queueKey{}, false
	}
	rest, ok = strings.CutSuffix(rest, ".*")
	if !ok {
		return queueKey{}, false
	}
	_, name, ok := strings.Cut(rest, ".")
	if !ok {
		return queueKey{}, false
	}
	return parseKeyName(name)
}
