package provision_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/workers"
)

// TestConsumerReplacedWithoutLosingMessages: a consumer whose ack policy or
// storage the server cannot change in place is replaced, and the new one
// delivers every message the old one had not had acknowledged, on a limits
// stream (resuming after the ack floor) and on a work queue (which only
// takes consumers that start at its beginning).
func TestConsumerReplacedWithoutLosingMessages(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention jetstream.RetentionPolicy
		old, new  jetstream.ConsumerConfig
	}{
		{"ack policy on a limits stream", jetstream.LimitsPolicy,
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckAllPolicy},
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy}},
		{"storage on a limits stream", jetstream.LimitsPolicy,
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy},
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, MemoryStorage: true}},
		{"storage on a work queue", jetstream.WorkQueuePolicy,
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy},
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, MemoryStorage: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			env := natstest.Start(t)
			_, err := provision.Stream(ctx, env.JS, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Retention: tc.retention})
			require.NoError(t, err)
			for i := 1; i <= 10; i++ {
				_, err := env.JS.Publish(ctx, fmt.Sprintf("s.%d", i), nil)
				require.NoError(t, err)
			}
			tc.old.Durable, tc.new.Durable = "c", "c"
			old, replacedFrom, err := provision.Consumer(ctx, env.JS, "S", tc.old)
			require.NoError(t, err)
			require.Zero(t, replacedFrom)
			// Acknowledge the first four.
			batch, err := old.FetchNoWait(4)
			require.NoError(t, err)
			for m := range batch.Messages() {
				require.NoError(t, m.DoubleAck(ctx))
			}

			c, replacedFrom, err := provision.Consumer(ctx, env.JS, "S", tc.new)
			require.NoError(t, err)
			require.Equal(t, uint64(5), replacedFrom)
			require.Equal(t, tc.new.AckPolicy, c.CachedInfo().Config.AckPolicy)
			require.Equal(t, tc.new.MemoryStorage, c.CachedInfo().Config.MemoryStorage)
			batch, err = c.FetchNoWait(100)
			require.NoError(t, err)
			var got []string
			for m := range batch.Messages() {
				got = append(got, m.Subject())
			}
			require.Equal(t, []string{"s.5", "s.6", "s.7", "s.8", "s.9", "s.10"}, got)

			// Provisioning again with the same config changes nothing.
			_, replacedFrom, err = provision.Consumer(ctx, env.JS, "S", tc.new)
			require.NoError(t, err)
			require.Zero(t, replacedFrom)
		})
	}
}

// TestReplicasAreSetOrKept: through WithReplicas every stream is made or set
// to that many replicas; without it a new stream has one and an existing one
// keeps its own, so that replicas raised by hand are never lowered.
func TestReplicasAreSetOrKept(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	replicas := func(name string) int {
		t.Helper()
		s, err := js.Stream(ctx, name)
		require.NoError(t, err)
		return s.CachedInfo().Config.Replicas
	}
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}

	_, err := provision.Stream(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, 1, replicas("S"), "a new stream, no replicas asked for")

	_, err = provision.Stream(ctx, provision.WithReplicas(js, 3), cfg)
	require.NoError(t, err)
	require.Equal(t, 3, replicas("S"), "raised")

	cfg.Description = "an upgrade"
	_, err = provision.Stream(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, 3, replicas("S"), "an upgrade without replicas asked for keeps them")

	_, err = provision.KeyValue(ctx, provision.WithReplicas(js, 3), provision.KeyValueConfig{Bucket: "b", AsyncPersist: true})
	require.NoError(t, err)
	require.Equal(t, 3, replicas("KV_b"), "a new bucket, replicated, so persisting as it replicates")

	// One made to persist asynchronously on one node cannot be replicated.
	_, err = provision.KeyValue(ctx, js, provision.KeyValueConfig{Bucket: "async", AsyncPersist: true})
	require.NoError(t, err)
	_, err = provision.KeyValue(ctx, provision.WithReplicas(js, 3), provision.KeyValueConfig{Bucket: "async", AsyncPersist: true})
	require.ErrorIs(t, err, provision.ErrAsyncNotReplicable)
	require.ErrorContains(t, err, "KV_async")
	require.Equal(t, 1, replicas("KV_async"))
}

// A stream jetjob makes, or one made before with no limit of its own (which
// nats-server reads as its default of 1,000), allows ConsumersMax
// consumers; a limit asked for is kept.
func TestStreamsAllowConsumersMax(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	maxConsumers := func(name string) int {
		t.Helper()
		s, err := env.JS.Stream(ctx, name)
		require.NoError(t, err)
		return s.CachedInfo().Config.MaxConsumers
	}
	_, err := provision.Stream(ctx, env.JS, jetstream.StreamConfig{Name: "NEW", Subjects: []string{"new.>"}})
	require.NoError(t, err)
	require.Equal(t, provision.ConsumersMax, maxConsumers("NEW"))

	old := jetstream.StreamConfig{Name: "OLD", Subjects: []string{"old.>"}, MaxConsumers: -1}
	_, err = env.JS.CreateStream(ctx, old)
	require.NoError(t, err)
	_, err = provision.Stream(ctx, env.JS, old)
	require.NoError(t, err)
	require.Equal(t, provision.ConsumersMax, maxConsumers("OLD"), "upgraded")

	_, err = provision.KeyValue(ctx, env.JS, provision.KeyValueConfig{Bucket: "b"})
	require.NoError(t, err)
	require.Equal(t, provision.ConsumersMax, maxConsumers("KV_b"))

	_, err = provision.Stream(ctx, env.JS, jetstream.StreamConfig{Name: "SET", Subjects: []string{"set.>"}, MaxConsumers: 7})
	require.NoError(t, err)
	require.Equal(t, 7, maxConsumers("SET"))
}

// Servers started together on a fresh cluster provision the same streams
// at once, each through its own node; each one's next request, right after
// its provisioning returned, must find the stream. A lookup there could be
// told "stream not found" for a few milliseconds: a jetjob server started
// beside another on a fresh 3-node cluster in a soak exited with "look up
// stream JJ_EVENTS: no events stream on this NATS".
func TestAStreamProvisionedAtOnceOnEveryNodeIsFoundRightAfter(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	var jss []jetstream.JetStream
	for _, u := range strings.Split(c.URL, ",") {
		_, js := natstest.Connect(t, u)
		jss = append(jss, provision.WithReplicas(js, 3))
	}
	for round := range 10 {
		cfg := jetstream.StreamConfig{Name: fmt.Sprintf("S%d", round), Subjects: []string{fmt.Sprintf("s%d.>", round)}}
		var wg sync.WaitGroup
		errs := make([]error, len(jss))
		for i, js := range jss {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := provision.Stream(ctx, js, cfg); err != nil {
					if provision.Transient(err) {
						return // a loaded machine's slow answer: not what this looks at
					}
					errs[i] = err
					return
				}
				if _, err := js.Stream(ctx, cfg.Name); err != nil && !provision.Transient(err) {
					errs[i] = err // "stream not found" among them
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "round %d, provisioned through node %d, then looked up", round, i)
		}
	}
}

// A start that finds a stream as Stream last set it leaves it alone: each
// start updated every stream, and an update racing a consumer's creation
// on that stream is a data race inside nats-server (fileStore.UpdateConfig
// against ConsumerStore). A changed configuration, a stream made or
// changed by someone else, and one set to other replicas are still
// updated.
func TestAStreamAsLastSetIsNotUpdatedAgain(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	updates := natstest.StreamUpdates(t, env.NC)
	// updated counts the updates asked for since the last call: a
	// Stream call waits for its update's answer, sent after the request.
	updated := func() int {
		t.Helper()
		return len(updates())
	}
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, MaxAge: time.Hour, Metadata: map[string]string{"mine": "1"}}
	_, err := provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Zero(t, updated(), "made, not updated")
	_, err = provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Zero(t, updated(), "found as set: left alone")

	cfg.MaxAge = 2 * time.Hour
	s, err := provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Equal(t, 1, updated(), "a changed configuration is set")
	require.Equal(t, 2*time.Hour, s.CachedInfo().Config.MaxAge)
	_, err = provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Zero(t, updated(), "and then left alone")

	// Changed by someone else, its metadata replaced (the hash with it):
	// set again.
	info, err := env.JS.Stream(ctx, "S")
	require.NoError(t, err)
	other := info.CachedInfo().Config
	other.Metadata = map[string]string{"mine": "2"}
	_, err = env.JS.UpdateStream(ctx, other)
	require.NoError(t, err)
	require.Equal(t, 1, updated())
	s, err = provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Equal(t, 1, updated(), "a stream whose hash is gone is set again")
	require.Equal(t, "1", s.CachedInfo().Config.Metadata["mine"])
	require.NotEmpty(t, s.CachedInfo().Config.Metadata[provision.ConfigMetadataKey])
}

// A start with replicas asked for (--replicas 3) sets a stream to them even
// when the stream's recorded configuration hash matches: the replicas were
// lowered by hand since, the metadata kept (as nats stream edit keeps it),
// and the start left the stream at one replica, its data on one node,
// though README says --replicas sets existing streams to that many.
func TestReplicasAskedForAreSetOnAStreamLoweredByHand(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}
	_, err := provision.Stream(ctx, provision.WithReplicas(js, 3), cfg)
	require.NoError(t, err)

	s, err := js.Stream(ctx, "S")
	require.NoError(t, err)
	lowered := s.CachedInfo().Config
	require.Equal(t, 3, lowered.Replicas)
	lowered.Replicas = 1
	_, err = js.UpdateStream(ctx, lowered)
	require.NoError(t, err)

	s, err = provision.Stream(ctx, provision.WithReplicas(js, 3), cfg)
	require.NoError(t, err)
	require.Equal(t, 3, s.CachedInfo().Config.Replicas)
}

// A start asking for fewer replicas than a stream has (raised by hand,
// with `nats stream edit`, say) leaves them: a start does not take away
// redundancy an operator gave, where it set the stream back to what it
// asked for. It still raises a stream that has fewer.
func TestReplicasRaisedByHandAreNotLowered(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}
	_, err := provision.Stream(ctx, provision.WithReplicas(js, 1), cfg)
	require.NoError(t, err)

	s, err := js.Stream(ctx, "S")
	require.NoError(t, err)
	raised := s.CachedInfo().Config
	require.Equal(t, 1, raised.Replicas)
	raised.Replicas = 3
	_, err = js.UpdateStream(ctx, raised)
	require.NoError(t, err)

	for _, n := range []int{1, 2} {
		s, err = provision.Stream(ctx, provision.WithReplicas(js, n), cfg)
		require.NoError(t, err)
		require.Equal(t, 3, s.CachedInfo().Config.Replicas, "a start with --replicas %d", n)
	}
	cfg.Description = "an upgrade"
	s, err = provision.Stream(ctx, provision.WithReplicas(js, 1), cfg)
	require.NoError(t, err)
	require.Equal(t, "an upgrade", s.CachedInfo().Config.Description)
	require.Equal(t, 3, s.CachedInfo().Config.Replicas, "an upgrade keeps them too")
}

// A version from before the hash updates a stream to its own configuration
// keeping the metadata, hash and all: after a rollback to it and a new
// upgrade, the hash matched and the stream kept the older version's
// configuration. What the configuration sets is checked on the stream as
// it is; a field it leaves to the server or the operator is not.
func TestAStreamChangedWithItsHashKeptIsSetAgain(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, MaxAge: time.Hour, Metadata: map[string]string{"mine": "1"}}
	_, err := provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)

	change := func(edit func(*jetstream.StreamConfig)) {
		t.Helper()
		s, err := env.JS.Stream(ctx, "S")
		require.NoError(t, err)
		older := s.CachedInfo().Config
		edit(&older)
		_, err = env.JS.UpdateStream(ctx, older)
		require.NoError(t, err)
	}
	change(func(c *jetstream.StreamConfig) { c.MaxAge = 3 * time.Hour; c.Subjects = []string{"s.>", "t.>"} })
	s, err := provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Equal(t, time.Hour, s.CachedInfo().Config.MaxAge)
	require.Equal(t, []string{"s.>"}, s.CachedInfo().Config.Subjects)

	change(func(c *jetstream.StreamConfig) { c.Metadata["mine"] = "2" })
	s, err = provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Equal(t, "1", s.CachedInfo().Config.Metadata["mine"])

	change(func(c *jetstream.StreamConfig) { c.Description = "the operator's"; c.MaxMsgs = 1000 })
	s, err = provision.Stream(ctx, env.JS, cfg)
	require.NoError(t, err)
	require.Equal(t, "the operator's", s.CachedInfo().Config.Description, "a field the configuration does not set is left alone")
	require.EqualValues(t, 1000, s.CachedInfo().Config.MaxMsgs)
}

// jetjob's own streams and buckets, laid out a second time, are found as
// set: none is updated. A field the server stores other than as given
// would update it at every start, as before the hash.
func TestJetjobsLayoutIsLeftAloneTheSecondTime(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	layOut := func() {
		t.Helper()
		_, err := events.Open(ctx, env.JS, events.Config{})
		require.NoError(t, err)
		_, err = events.OpenHeartbeats(ctx, env.JS)
		require.NoError(t, err)
		require.NoError(t, workers.EnsureTopology(ctx, env.JS))
		_, err = provision.KeyValue(ctx, env.JS, provision.KeyValueConfig{Bucket: "B", TTL: time.Minute, Metadata: map[string]string{"format": "1"}})
		require.NoError(t, err)
	}
	layOut()
	updated := natstest.StreamUpdates(t, env.NC)
	layOut()
	require.Empty(t, updated())
}
