package workers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/provision"
)

// Stream, bucket and subject names, stable across versions.
const (
	QueueStream    = "JJ_QUEUE"
	queuePrefix    = "jj.q."
	TimersStream   = "JJ_TIMERS"
	timerPrefix    = "jj.timer."
	duePrefix      = "jj.due."
	LogsStream     = "JJ_LOGS"
	logPrefix      = "jj.log."
	TagsetsBucket  = "jj_tagsets"
	wakePrefix     = "jj.wake."
	noTags         = "none"
	LogLinesPerJob = 10_000
	// QueueAckWait is how long a fetched queue message may stay unacknowledged
	// (a worker died between fetch and acquire) before another worker gets it.
	QueueAckWait = 30 * time.Second
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
func (k queueKey) filter() string   { return queuePrefix + k.name() + ".*" }
func (k queueKey) subject(jobID string) string {
	return queuePrefix + k.name() + "." + jobID
}
func (k queueKey) wake() string { return wakePrefix + k.name() }

// consumerConfig is the consumer of the queue. Its state is held in memory,
// not on disk: the queue stream is a work queue, so a message acknowledged
// is gone from the stream, and one that was not is delivered again by a
// consumer made anew after a restart, which is all a stored state would
// have said (the state machine fences a second delivery of a job in hand).
// Storing it cost every consumer a file write per flush, fsync'd on a
// durable server: with many tag sets, more of the server's time than
// anything else.
func (k queueKey) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: k.consumer(), FilterSubject: k.filter(), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: QueueAckWait, MaxDeliver: -1, MaxAckPending: 100_000,
		MaxRequestBatch: 1000, InactiveThreshold: 0, MemoryStorage: true,
	}
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

// EnsureTopology creates or upgrades the queue, timers and logs streams and
// the tag set registry. Everything in them can be rebuilt from the event log,
// so they flush to disk asynchronously.
func EnsureTopology(ctx context.Context, js jetstream.JetStream) error {
	streams := []jetstream.StreamConfig{{
		Name:              QueueStream,
		Description:       "jetjob work queue: one message per pending job",
		Subjects:          []string{queuePrefix + ">"},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		PersistMode:       jetstream.AsyncPersistMode,
	}, {
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
	}}
	for _, cfg := range streams {
		if _, err := provision.Stream(ctx, js, cfg); err != nil {
			return err
		}
	}
	_, err := provision.KeyValue(ctx, js, provision.KeyValueConfig{Bucket: TagsetsBucket, AsyncPersist: true})
	return err
}
