package workers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Stream, bucket and subject names, stable across versions.
const (
	// QueueShards is how many streams the work queue is spread over, by
	// type and tag set. The server's cost of each ack on a work queue grows
	// with the number of consumers of its stream (it asks each one whether
	// it still wants the message), and there is one consumer per tag set:
	// with 1,000 tag sets in one stream that was the server's largest cost.
	QueueShards = 16
	// queuePrefix is jj.wq.<shard>.<type>.<tagset>.<prio>.<job-id>.
	queuePrefix       = "jj.wq."
	queueStreamPrefix = "JJ_QUEUE_"
	// legacyQueueStream held the whole queue before it was sharded; its
	// messages are hints rebuilt from the log, so it is deleted on upgrade
	// and the enqueuer's reconcile pass queues its jobs again.
	legacyQueueStream = "JJ_QUEUE"
	TimersStream      = "JJ_TIMERS"
	timerPrefix       = "jj.timer."
	duePrefix         = "jj.due."
	LogsStream        = "JJ_LOGS"
	logPrefix         = "jj.log."
	TagsetsBucket     = "jj_tagsets"
	wakePrefix        = "jj.wake."
	// wakeAllPrefix: a wake-up passed on to every pool (Pool.onWake).
	wakeAllPrefix = "jj.wakeall."
	// wakeGroup: the pools that share each wake-up on wakePrefix.
	wakeGroup      = "jetjob-pools"
	noTags         = "none"
	LogLinesPerJob = 10_000
	// QueueAckWait is how long a fetched queue message may stay unacknowledged
	// (its worker died, or was cut off from the server, between fetch and
	// acquire) before another worker gets it. A worker acknowledges right
	// after its acquire, and a second acquire of a job in hand is refused,
	// so a short wait costs at most a refused acquire.
	QueueAckWait = 10 * time.Second
)

// TagsetID is the stable short name of a tag set in subjects.
func TagsetID(tags map[string]string) string {
	if len(tags) == 0 {
		return noTags
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, tags[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// queueKey names one (type, tag set, priority) queue.
type queueKey struct {
	Type   string            `json:"type"`
	Tagset string            `json:"tagset"`
	Prio   int               `json:"prio"`
	Tags   map[string]string `json:"tags,omitempty"`
}

func (k queueKey) name() string     { return fmt.Sprintf("%s.%s.%d", k.Type, k.Tagset, k.Prio) }
func (k queueKey) consumer() string { return fmt.Sprintf("q_%s_%s_%d", k.Type, k.Tagset, k.Prio) }
func (k queueKey) filter() string   { return k.prefix() + ".*" }
func (k queueKey) subject(jobID string) string {
	return k.prefix() + "." + jobID
}
func (k queueKey) prefix() string { return shardPrefix(k.shard()) + k.name() }

// shardPrefix starts every subject of one queue stream.
func shardPrefix(shard int) string { return fmt.Sprintf("%s%02d.", queuePrefix, shard) }

// shard spreads the tag sets of a type over the queue streams; the
// priorities of a tag set share one.
func (k queueKey) shard() int {
	h := fnv.New32a()
	h.Write([]byte(k.Type))
	h.Write([]byte{0})
	h.Write([]byte(k.Tagset))
	return int(h.Sum32() % QueueShards)
}

func (k queueKey) stream() string { return queueStream(k.shard()) }

// QueueStream names the work-queue stream of one shard, 0 to QueueShards-1
// (the <shard> of a queue subject); another is refused with
// statemachine.ErrInvalid, since no server makes its stream.
func QueueStream(shard int) (string, error) {
	if shard < 0 || shard >= QueueShards {
		return "", fmt.Errorf("%w: work queue shard %d, expected 0-%d", statemachine.ErrInvalid, shard, QueueShards-1)
	}
	return queueStream(shard), nil
}

// queueStream is QueueStream of a shard known to be in range.
func queueStream(shard int) string { return fmt.Sprintf("%s%02d", queueStreamPrefix, shard) }

// Queued counts the messages in the work queue: the jobs waiting for a
// worker, those fetched but not yet acquired, and the messages of jobs
// canceled while pending, which stay until a worker fetches them or the
// purger removes them. ErrNoQueues where no jetjob server laid out the
// queue.
func Queued(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	if js == nil {
		return 0, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	var n uint64
	for _, name := range QueueStreams() {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("count queued jobs: %w", notLaidOut(err, name))
		}
		n += st.CachedInfo().State.Msgs
	}
	return n, nil
}

// QueueStreams names every work-queue stream.
func QueueStreams() []string {
	names := make([]string, QueueShards)
	for i := range names {
		names[i] = queueStream(i)
	}
	return names
}
func (k queueKey) wake() string { return wakePrefix + k.name() }

// queueMaxFetch is the most messages one fetch from a queue may ask for.
const queueMaxFetch = 1000

// consumerConfig is the consumer of the queue. On a queue stream of one
// replica its state is held in memory, not on disk: the queue stream is a
// work queue, so a message acknowledged is gone from the stream, and one
// that was not is delivered again by a consumer made anew after a restart,
// which is all a stored state would have said (the state machine fences a
// second delivery of a job in hand). Storing it cost every consumer a file
// write per flush, fsync'd on a durable server: with many tag sets, more of
// the server's time than anything else. A replicated consumer is a group of
// its own, and one held in memory does not outlive a restart of one of its
// servers: with another server down, the restarted one came back with no
// state, and the group stayed without a leader, its jobs pending, until the
// third came back. So on a replicated stream the state is stored.
func (k queueKey) consumerConfig(memory bool) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: k.consumer(), FilterSubject: k.filter(), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: QueueAckWait, MaxDeliver: -1, MaxAckPending: 100_000,
		MaxRequestBatch: queueMaxFetch, InactiveThreshold: 0, MemoryStorage: memory,
	}
}

// queueConsumerConfig is the consumer of the queue, held in memory if its
// stream has one replica (see consumerConfig).
func queueConsumerConfig(ctx context.Context, js jetstream.JetStream, k queueKey) (jetstream.ConsumerConfig, error) {
	st, err := js.Stream(ctx, k.stream())
	if err != nil {
		return jetstream.ConsumerConfig{}, fmt.Errorf("look up queue stream %s: %w", k.stream(), err)
	}
	return k.consumerConfig(st.CachedInfo().Config.Replicas <= 1), nil
}

func parseKeyName(name string) (queueKey, bool) {
	parts := strings.Split(name, ".")
	if len(parts) != 3 {
		return queueKey{}, false
	}
	prio, err := strconv.Atoi(parts[2])
	if err != nil {
		return queueKey{}, false
	}
	return queueKey{Type: parts[0], Tagset: parts[1], Prio: prio}, true
}

// subsetOf reports whether every tag of the job is among the worker's.
func subsetOf(job, worker map[string]string) bool {
	for k, v := range job {
		if wv, ok := worker[k]; !ok || wv != v {
			return false
		}
	}
	return true
}

// notLaidOut is err, from looking up stream name, as ErrNoQueues when the
// stream is not there (no jetjob server of this version laid out the work
// queue on this NATS) or JetStream does not answer at all: a caller can
// tell it from an outage with errors.Is.
func notLaidOut(err error, name string) error {
	switch {
	case provision.NoJetStream(err):
		return fmt.Errorf("%w: %s %w", ErrNoQueues, provision.NoJetStreamSays, err)
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrBucketNotFound):
		// JetStream's error stays in the chain, for a caller that looked
		// for it before.
		return fmt.Errorf("%w: %s is missing; start the jetjob server first (%w)", ErrNoQueues, name, err)
	}
	return err
}

// checkQueues returns ErrNoQueues unless a jetjob server of this version
// has laid out the work queue on this NATS.
func checkQueues(ctx context.Context, js jetstream.JetStream) error {
	_, err := js.Stream(ctx, queueStream(0))
	switch {
	case err == nil:
		return nil
	case provision.NoJetStream(err):
		return fmt.Errorf("%w: %s %v", ErrNoQueues, provision.NoJetStreamSays, err)
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("look up the work queue: %w", err)
	}
	if _, err := js.Stream(ctx, legacyQueueStream); err == nil {
		return fmt.Errorf("%w: it is the single stream %s of an older jetjob server; upgrade the servers before their workers", ErrNoQueues, legacyQueueStream)
	}
	return fmt.Errorf("%w: stream %s is missing; start the jetjob server first", ErrNoQueues, queueStream(0))
}

// EnsureTopology creates or upgrades the queue, timers and logs streams and
// the tag set registry. The queue streams and the registry are rebuilt from
// the event log, so they flush to disk asynchronously; the timers stream
// follows the server's fsync setting; job log lines flush asynchronously
// and are not rebuilt.
func EnsureTopology(ctx context.Context, js jetstream.JetStream) error {
	if js == nil {
		return fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	err := js.DeleteStream(ctx, legacyQueueStream)
	switch {
	case provision.NoJetStream(err):
		return fmt.Errorf("lay out the work queue: %s %w", provision.NoJetStreamSays, err)
	case err != nil && !errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("delete the unsharded queue stream: %w", err)
	}
	var streams []jetstream.StreamConfig
	for shard := range QueueShards {
		streams = append(streams, jetstream.StreamConfig{
			Name:              queueStream(shard),
			Description:       "jetjob work queue: one message per pending job",
			Subjects:          []string{shardPrefix(shard) + ">"},
			Retention:         jetstream.WorkQueuePolicy,
			Storage:           jetstream.FileStorage,
			MaxMsgsPerSubject: 1,
			MaxMsgs:           -1,
			MaxBytes:          -1,
			Duplicates:        2 * time.Minute,
			AllowDirect:       true,
			PersistMode:       jetstream.AsyncPersistMode,
		})
	}
	streams = append(streams, []jetstream.StreamConfig{{
		Name:              TimersStream,
		Description:       "jetjob timers: scheduled jobs and retries become pending here",
		Subjects:          []string{timerPrefix + "*", duePrefix + "*"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		AllowMsgSchedules: true,
		AllowRollup:       true,
		Discard:           jetstream.DiscardOld,
		// Fsync'd like the log: a timer lost in a crash would hold its job
		// back until the enqueuer's reconcile pass notices.
	}, {
		Name:              LogsStream,
		Description:       "jetjob job logs, bounded per job",
		Subjects:          []string{logPrefix + "*"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: LogLinesPerJob,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		AllowDirect:       true,
		PersistMode:       jetstream.AsyncPersistMode,
	}}...)
	for _, cfg := range streams {
		if _, err := provision.Stream(ctx, js, cfg); err != nil {
			return err
		}
	}
	_, err = provision.KeyValue(ctx, js, provision.KeyValueConfig{Bucket: TagsetsBucket, AsyncPersist: true})
	return err
}

// RemoveQueues removes every queue of the job types that match: each
// (type, tag set, priority) queue's consumer, the messages still in it and
// its registration in jj_tagsets, and returns how many it removed. It is
// for types that no job will have again, such as a benchmark's own on a
// shared NATS: an enqueuer that registered a queue remembers it, and would
// publish a later job of that type to a queue nobody consumes until it
// restarts.
func RemoveQueues(ctx context.Context, js jetstream.JetStream, match func(jobType string) bool) (int, error) {
	if js == nil {
		return 0, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	kv, err := js.KeyValue(ctx, TagsetsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("remove queues: %w", err)
	}
	names, err := kv.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("remove queues: list %s: %w", TagsetsBucket, err)
	}
	var keys []queueKey
	for name := range names.Keys() {
		if key, ok := parseKeyName(name); ok && match(key.Type) {
			keys = append(keys, key)
		}
	}
	registry, err := js.Stream(ctx, "KV_"+TagsetsBucket)
	if err != nil {
		return 0, fmt.Errorf("remove queues: %w", err)
	}
	for i, key := range keys {
		if err := js.DeleteConsumer(ctx, key.stream(), key.consumer()); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return i, fmt.Errorf("remove queue %s: %w", key.name(), err)
		}
		st, err := js.Stream(ctx, key.stream())
		if err != nil {
			return i, fmt.Errorf("remove queue %s: %w", key.name(), err)
		}
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(key.filter())); err != nil {
			return i, fmt.Errorf("remove queue %s: purge: %w", key.name(), err)
		}
		// From the bucket's stream, as the purger forgets a view: no
		// delete marker is left behind.
		if err := registry.Purge(ctx, jetstream.WithPurgeSubject("$KV."+TagsetsBucket+"."+key.name())); err != nil {
			return i, fmt.Errorf("remove queue %s: unregister: %w", key.name(), err)
		}
	}
	return len(keys), nil
}
