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
// registry entry goes first, as a delete that pools and enqueuers watching
// the registry see: pools stop asking the queue, enqueuers forget they made
// it. A job enqueued in between, by an enqueuer that had not seen the
// delete yet, is found in the queue stream once the consumer is gone, and
// the queue is made again at once; one enqueued later still, by an
// enqueuer cut off from the registry, is found by its reconcile pass,
// which makes the queue of every pending job missing from the registry.
//
// It returns the names of the queues removed.
func (l *Leftovers) ForgetIdleQueues(ctx context.Context, idleFor time.Duration, now time.Time) ([]string, error) {
	entries, err := l.registeredQueues(ctx)
	if err != nil {
		return nil, err
	}
	var forgotten []string
	withConsumer := map[string]bool{}
	for shard, st := range l.queues {
		var idle []queueKey
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
			if e, ok := entries[key.name()]; ok && now.Sub(e.Created()) < idleFor {
				continue // registered again lately, by an enqueuer that started
			}
			if e, ok := entries[key.name()]; ok {
				// The registered key carries the tags, which a queue made
				// again needs for its pools.
				_ = json.Unmarshal(e.Value(), &key)
			}
			idle = append(idle, key)
		}
		if err := list.Err(); err != nil {
			return forgotten, fmt.Errorf("forget idle queues: list consumers of %s: %w", QueueStream(shard), err)
		}
		for _, key := range idle {
			gone, err := l.forgetQueue(ctx, key, true)
			if err != nil {
				return forgotten, err
			}
			if gone {
				forgotten = append(forgotten, key.name())
			}
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
		gone, err := l.forgetQueue(ctx, key, false)
		if err != nil {
			return forgotten, err
		}
		if gone {
			forgotten = append(forgotten, name)
		}
	}
	// The deletes' markers are kept a while, for pools and enqueuers that
	// were away when they were written to see them when they come back.
	if err := l.registry.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(max(idleFor, registryMarkersKept))); err != nil {
		return forgotten, fmt.Errorf("forget idle queues: clean up %s: %w", TagsetsBucket, err)
	}
	return forgotten, nil
}

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

// forgetQueue removes one queue's registration and consumer, then makes
// them again if a job was enqueued meanwhile; true when the queue stayed
// removed.
func (l *Leftovers) forgetQueue(ctx context.Context, key queueKey, hasConsumer bool) (bool, error) {
	st := l.queues[key.shard()]
	if err := l.registry.Delete(ctx, key.name()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, fmt.Errorf("forget queue %s: unregister: %w", key.name(), err)
	}
	if hasConsumer {
		if err := st.DeleteConsumer(ctx, key.consumer()); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false, fmt.Errorf("forget queue %s: %w", key.name(), err)
		}
	}
	m, err := st.GetLastMsgForSubject(ctx, key.filter())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("forget queue %s: look for jobs: %w", key.name(), err)
	}
	if key.Tags == nil && key.Tagset != noTags {
		// Registered nowhere: the job has the tags that pools match.
		var job statemachine.Job
		if json.Unmarshal(m.Data, &job) != nil || TagsetID(job.Tags) != key.Tagset {
			return false, nil // the reconcile pass reads them from the job's view
		}
		key.Tags = job.Tags
	}
	if err := registerQueue(ctx, l.js, l.registry, key); err != nil {
		return false, fmt.Errorf("forget queue %s: a job came: %w", key.name(), err)
	}
	return false, nil
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
