// Package provision creates JetStream streams and key-value buckets, or
// upgrades them in place when their configuration has changed.
package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrAsyncNotReplicable: a stream made to persist asynchronously (on one
// node) cannot be replicated, and the server cannot change how a stream
// persists.
var ErrAsyncNotReplicable = errors.New("it persists asynchronously, which a replicated stream cannot: " +
	"delete it and start the server again to make it anew (README: Replicas)")

// ReplicasMax is the most replicas a NATS stream can have.
const ReplicasMax = 5

// replicated is a JetStream through which Stream gives every stream n
// replicas.
type replicated struct {
	jetstream.JetStream
	n int
}

// WithReplicas returns js, through which Stream (and KeyValue) makes every
// stream it creates with n replicas, and raises to n every stream that has
// fewer: on a NATS cluster, what survives the loss of a node. A stream with
// more (an operator raised them by hand) keeps them: replicas are never
// lowered. n 0 returns js as it is: a new stream gets one replica, and an
// existing one keeps its own.
func WithReplicas(js jetstream.JetStream, n int) jetstream.JetStream {
	if n <= 0 {
		return js
	}
	return replicated{JetStream: js, n: min(n, ReplicasMax)}
}

// Unreplicable lists the streams, of those whose names match, that persist
// asynchronously and so cannot be given n replicas: what a deployment must
// delete (and have made anew) before it moves to n, all of it said at once.
func Unreplicable(ctx context.Context, js jetstream.JetStream, n int, match func(stream string) bool) ([]string, error) {
	if n <= 1 {
		return nil, nil
	}
	var out []string
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if match(info.Config.Name) && info.Config.PersistMode == jetstream.AsyncPersistMode && info.Config.Replicas < n {
			out = append(out, info.Config.Name)
		}
	}
	if err := streams.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// ConsumersMax is the most consumers each of jetjob's streams allows. Left
// unset, nats-server allows 1,000 (its default), which counts
// what grows with a fleet: each worker pool's watches of the tag set
// registry and the settings, each dashboard's watch of the views, each
// follower of a job's log, and each queue's consumer in its shard. Past it
// a worker could not start, and a new tag set's jobs would stay pending.
// A limit the account sets, if lower, still holds.
const ConsumersMax = 100_000

// Stream creates the stream, or updates it to cfg when it exists, allowing
// ConsumersMax consumers unless cfg says otherwise. The server
// refuses to change a stream's persist mode, so an existing stream keeps its
// own; its replicas are raised as WithReplicas says, never lowered; its metadata keeps every
// entry cfg does not set (an entry another part of jetjob recorded, such as
// the views' format, outlives the next start); everything else is upgraded.
// A stream that Stream last set to this same cfg, and that has the
// replicas asked for, is left as it is: each
// start updated every stream, and an update racing a consumer's creation
// on the same stream is a data race inside nats-server (v2.15.3,
// fileStore.UpdateConfig against ConsumerStore), seen under -race in tests
// where a server started beside running workers; on a cluster each update
// is also a round through the meta leader. What Stream set is recorded as
// a hash in the stream's metadata (ConfigMetadataKey).
func Stream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.MaxConsumers <= 0 {
		cfg.MaxConsumers = ConsumersMax
	}
	want := 0
	if r, ok := js.(replicated); ok {
		want = r.n
	}
	existing, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		cfg.Replicas = max(want, 1)
		if cfg.Replicas > 1 {
			// The server persists a replicated stream only as it
			// replicates it; what async persistence saved there is moot.
			cfg.PersistMode = jetstream.DefaultPersistMode
		}
		cfg.Metadata = withConfigHash(cfg.Metadata, configHash(cfg))
		s, err := js.CreateStream(ctx, cfg)
		for pause := 50 * time.Millisecond; isStoreFailure(err) && pause <= 200*time.Millisecond; pause *= 2 {
			// The server could not make the stream's store this time (seen
			// once in CI, as a 500, on a fresh server); creating is safe to
			// repeat.
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
			case <-time.After(pause):
			}
			s, err = js.CreateStream(ctx, cfg)
		}
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it first; fall through to an update.
			return Stream(ctx, js, cfg)
		}
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
		if err := visible(ctx, js, cfg.Name); err != nil {
			return nil, err
		}
		return s, nil
	case NoJetStream(err):
		return nil, fmt.Errorf("look up stream %s: %s %w", cfg.Name, NoJetStreamSays, err)
	case err != nil:
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Name, err)
	}
	cfg.PersistMode = existing.CachedInfo().Config.PersistMode
	// Replicas asked for are a floor: more, raised by hand, are the
	// operator's redundancy, which a start does not take away (as River
	// or Temporal do not lower what an operator set); fewer are raised.
	cfg.Replicas = max(existing.CachedInfo().Config.Replicas, want)
	hash := configHash(cfg)
	kept := existing.CachedInfo().Config.Metadata
	// The hash says only what was last set through Stream. The stream as
	// it is is checked too: lowered by hand since, its metadata kept, a
	// stream was left on fewer replicas than the start asked for; and a
	// version from before the hash updates a stream keeping its metadata,
	// so that after a rollback and a new upgrade the hash matched a
	// configuration the stream no longer had.
	if hash != "" && kept[ConfigMetadataKey] == hash && existing.CachedInfo().Config.Replicas == cfg.Replicas &&
		holds(existing.CachedInfo().Config, cfg) {
		return existing, nil
	}
	if len(kept) > 0 {
		merged := maps.Clone(kept)
		maps.Copy(merged, cfg.Metadata)
		cfg.Metadata = merged
	}
	cfg.Metadata = withConfigHash(cfg.Metadata, hash)
	if cfg.Replicas > 1 && cfg.PersistMode == jetstream.AsyncPersistMode {
		return nil, fmt.Errorf("update stream %s to %d replicas: %w", cfg.Name, cfg.Replicas, ErrAsyncNotReplicable)
	}
	s, err := js.UpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("update stream %s: %w", cfg.Name, err)
	}
	if err := visible(ctx, js, cfg.Name); err != nil {
		return nil, err
	}
	return s, nil
}

// ConfigMetadataKey is the stream metadata entry in which Stream records
// a hash of the configuration it last set.
const ConfigMetadataKey = "jetjob_config"

// configHash is a hash of cfg as Stream sets it, but for the metadata
// entries the stream keeps from before (only cfg's own count).
func configHash(cfg jetstream.StreamConfig) string {
	cfg.Metadata = maps.Clone(cfg.Metadata)
	delete(cfg.Metadata, ConfigMetadataKey)
	b, err := json.Marshal(cfg)
	if err != nil {
		// A StreamConfig always marshals; an empty hash matches no
		// stream, which is then updated, as before the hash.
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// holds reports whether the stream's configuration has every field want
// sets (is not zero in want) as want sets it, and each of want's metadata
// entries. A field want leaves zero is the server's default or the
// operator's, and not looked at; so are replicas and persist mode, which
// Stream settles apart.
func holds(stream, want jetstream.StreamConfig) bool {
	sv, wv := reflect.ValueOf(stream), reflect.ValueOf(want)
	for i := range wv.NumField() {
		switch wv.Type().Field(i).Name {
		case "Metadata", "Replicas", "PersistMode":
			continue
		}
		if f := wv.Field(i); !f.IsZero() && !reflect.DeepEqual(f.Interface(), sv.Field(i).Interface()) {
			return false
		}
	}
	for k, v := range want.Metadata {
		if got, ok := stream.Metadata[k]; k != ConfigMetadataKey && (!ok || got != v) {
			return false
		}
	}
	return true
}

// withConfigHash is metadata, copied, with the hash recorded.
func withConfigHash(metadata map[string]string, hash string) map[string]string {
	out := maps.Clone(metadata)
	if out == nil {
		out = map[string]string{}
	}
	out[ConfigMetadataKey] = hash
	return out
}

// VisibleWaitMax bounds how long Stream waits for a stream it made or
// updated to be found by a lookup.
const VisibleWaitMax = 5 * time.Second

// visible waits until a lookup finds the stream. On a NATS cluster, a
// stream made (by this process or by another making it at the same time)
// can be "not found" for a few milliseconds after its creation was
// answered: two jetjob servers started together on a fresh cluster, one
// exited with "look up stream JJ_EVENTS: no events stream on this NATS"
// from the lookup right after its own provisioning, and a bucket bound
// right after it is made can meet the same.
func visible(ctx context.Context, js jetstream.JetStream, name string) error {
	pause := 5 * time.Millisecond
	deadline := time.Now().Add(VisibleWaitMax)
	for {
		_, err := js.Stream(ctx, name)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			// Found, or a failure that is not about this stream: what
			// provisioning did stands, and the next request meets the rest.
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stream %s made but not found for %v: %w", name, VisibleWaitMax, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for stream %s to be found: %w", name, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// KeyValueConfig describes a bucket that provision lays out itself, so that
// it can choose the stream's persist mode, which jetstream's own bucket
// constructor does not expose.
type KeyValueConfig struct {
	Bucket  string
	History uint8
	// AsyncPersist flushes writes to disk asynchronously: only for buckets
	// that can be rebuilt from the event log.
	AsyncPersist bool
	// TTL expires values this old; zero keeps them.
	TTL time.Duration
	// Metadata is set on the bucket's stream (added to what it has).
	Metadata map[string]string
}

// KeyValue creates or upgrades the bucket and binds to it.
func KeyValue(ctx context.Context, js jetstream.JetStream, cfg KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.History == 0 {
		cfg.History = 1
	}
	dup := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < dup {
		dup = cfg.TTL
	}
	scfg := jetstream.StreamConfig{
		Name:              "KV_" + cfg.Bucket,
		Subjects:          []string{"$KV." + cfg.Bucket + ".>"},
		MaxMsgsPerSubject: int64(cfg.History),
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgSize:        -1,
		MaxAge:            cfg.TTL,
		Storage:           jetstream.FileStorage,
		Replicas:          1,
		AllowRollup:       true,
		DenyDelete:        true,
		AllowDirect:       true,
		Duplicates:        dup,
		Discard:           jetstream.DiscardNew,
		Metadata:          cfg.Metadata,
	}
	if cfg.AsyncPersist {
		scfg.PersistMode = jetstream.AsyncPersistMode
	}
	if _, err := Stream(ctx, js, scfg); err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// IsNotFound reports whether err says a stream, consumer, bucket or key is missing.
func IsNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrMsgNotFound)
}

// Consumer creates the durable consumer cfg.Durable, or updates it to cfg.
// What the server cannot update in place is handled so that no message is
// skipped or replayed needlessly: a consumer whose ack policy or storage
// differs is replaced by one resuming after its ack floor, and where an
// existing consumer starts is kept, since it no longer matters.
func Consumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (c jetstream.Consumer, replacedFrom uint64, err error) {
	old, err := js.Consumer(ctx, stream, cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return nil, 0, fmt.Errorf("look up consumer %s: %w", cfg.Durable, err)
	case old.CachedInfo().Config.AckPolicy != cfg.AckPolicy, old.CachedInfo().Config.MemoryStorage != cfg.MemoryStorage:
		floor := old.CachedInfo().AckFloor.Stream
		if err := js.DeleteConsumer(ctx, stream, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, 0, fmt.Errorf("replace consumer %s: %w", cfg.Durable, err)
		}
		replacedFrom = floor + 1
		// A work queue holds only what is not yet acknowledged, and takes
		// only consumers that start at its beginning.
		if st, err := js.Stream(ctx, stream); err != nil || st.CachedInfo().Config.Retention != jetstream.WorkQueuePolicy {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
		}
	default:
		cfg.DeliverPolicy, cfg.OptStartSeq = old.CachedInfo().Config.DeliverPolicy, old.CachedInfo().Config.OptStartSeq
	}
	if c, err = js.CreateOrUpdateConsumer(ctx, stream, cfg); err != nil {
		return nil, 0, fmt.Errorf("create consumer %s: %w", cfg.Durable, err)
	}
	return c, replacedFrom, nil
}

// isStoreFailure: the server answered a create with an internal error.
func isStoreFailure(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 500
}
