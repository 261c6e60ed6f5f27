package server

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// A server started again after a process died holding events (delivered to
// its projector and enqueuer, never acknowledged) projects and enqueues
// them at once, not after the consumers' ack wait of 30 s.
func TestARestartProjectsWhatTheDeadProcessHeld(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	s.Stop()

	// The process that died: it appended a submit, and its projector and
	// enqueuer had the event in hand when it went.
	ns, err := natsserver.Start(natsserver.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	lg, err := events.Open(ctx, js, events.Config{})
	require.NoError(t, err)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "held"})
	require.NoError(t, err)
	for _, durable := range []string{projector.DurableDefault, workers.EnqueuerDurableDefault} {
		cons, err := js.Consumer(ctx, lg.Stream(), durable)
		require.NoError(t, err)
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		held := 0
		for range batch.Messages() {
			held++ // and never acknowledged
		}
		require.Equal(t, 1, held, "the submit in hand of %s", durable)
	}
	lg.Close()
	nc.Close()
	ns.Shutdown()

	s, err = Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := s.Reader.Get(ctx, job.ID)
		return err == nil
	}, "the view of job %s", job.ID)
	natstest.Eventually(t, 10*time.Second, func() bool {
		n, err := workers.Queued(ctx, s.JS)
		return err == nil && n == 1
	}, "job %s queued", job.ID)
}

// After a death, a view nats-server brought back for a job the log no
// longer has (purged) is removed by the next server, in the background.
func TestAfterADeathViewsOfPurgedJobsAreRemoved(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	job, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "ghost"})
	require.NoError(t, err)
	kept, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "kept"})
	require.NoError(t, err)
	for _, id := range []string{job.ID, kept.ID} {
		natstest.Eventually(t, 10*time.Second, func() bool {
			_, err := s.Reader.Get(ctx, id)
			return err == nil
		}, "the view of job %s", id)
	}
	// The events go, the view stays: what a death after a purge can leave.
	require.NoError(t, s.Log.Purge(ctx, job.ID, job.Version))
	s.Stop()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "jetjob.lock"), []byte("4242\n"), 0o644))

	s, err = Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := s.Reader.Get(ctx, job.ID)
		return errors.Is(err, events.ErrNotFound)
	}, "the view of purged job %s removed", job.ID)
	_, err = s.Reader.Get(ctx, kept.ID)
	require.NoError(t, err, "the view of a job in the log stays")
}

// A cluster without most of its servers cannot elect a leader, and answers
// nothing: the server says what JetStream needs rather than only that a
// call timed out.
func TestAClusterWithoutQuorumIsNamedAsSuch(t *testing.T) {
	peers := []*url.URL{{Scheme: "nats", Host: "127.0.0.1:1"}, {Scheme: "nats", Host: "127.0.0.1:2"}}
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.ServerName = "alone"
		o.Cluster = nserver.ClusterOpts{Name: "three", Host: "127.0.0.1", Port: -1}
		o.Routes = peers
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := Start(ctx, Options{NATSURL: env.URL, Replicas: 3})
	require.ErrorContains(t, err, "most of its servers up to elect a leader")
}

// Replicas asked of a NATS that is one server are refused as such, before
// any stream is made or the advice to delete streams is given.
func TestReplicasOnOneServerAreRefused(t *testing.T) {
	env := natstest.StartStock(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Start(ctx, Options{NATSURL: env.URL, Replicas: 3})
	require.ErrorIs(t, err, ErrNotClustered)
	_, js := natstest.Connect(t, env.URL)
	_, err = js.Stream(ctx, events.StreamDefault)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "no stream made")
}

// An embedded server records how its NATS takes appends best, and a server
// on that NATS, which cannot know, follows the record; one that fsyncs
// every append records batches again.
func TestAServerOnAnotherNATSFollowsTheEmbeddedOnesAppends(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, c := range []struct{ fsync, appends string }{
		{natsserver.FsyncInterval, events.AppendsStreamed},
		{natsserver.FsyncAlways, events.AppendsBatched},
	} {
		embedded, err := Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0", Fsync: c.fsync})
		require.NoError(t, err)
		require.Equal(t, c.appends, embedded.Log.Appends(), c.fsync)
		other, err := Start(ctx, Options{NATSURL: embedded.URL})
		require.NoError(t, err)
		require.Equal(t, c.appends, other.Log.Appends(), c.fsync)
		other.Stop()
		embedded.Stop()
	}
}

// The embedded server stages the event log's atomic batches in memory
// unless told to keep them on disk.
func TestTheEmbeddedServerStagesTheLogsBatchesAsConfigured(t *testing.T) {
	ctx := context.Background()
	for _, staging := range []string{natsserver.BatchStagingMemory, natsserver.BatchStagingDisk} {
		dir := t.TempDir()
		s, err := Start(ctx, Options{DataDir: dir, Listen: "127.0.0.1:0", BatchStaging: staging})
		require.NoError(t, err)
		_, err = os.Readlink(filepath.Join(dir, "jetstream", "$G", "streams", events.StreamDefault, "batches"))
		s.Stop()
		if staging == natsserver.BatchStagingDisk {
			require.Error(t, err, "no link to memory")
			require.Equal(t, natsserver.BatchStagingDisk, s.BatchStaging)
			continue
		}
		if why := natsserver.CanStageInMemory(); why != nil {
			t.Skipf("batches cannot be staged in memory here: %v", why)
		}
		require.NoError(t, err, "linked to memory")
		require.Equal(t, natsserver.BatchStagingMemory, s.BatchStaging)
	}
}

// A server whose NATS cluster loses its quorum after the start's first
// request (a node died, and its cluster elects a leader) waits for the
// cluster on every later request, and starts once the cluster is back.
func TestAStartWaitsOutAnElectionAfterItsFirstRequest(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	core, logs := observer.New(zap.InfoLevel)
	asking := make(chan struct{})
	var once sync.Once
	logger := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		if strings.HasPrefix(e.Message, "JetStream did not answer; asking again") {
			once.Do(func() { close(asking) })
		}
		return nil
	}))
	lost := make(chan struct{})
	o := Options{NATSURL: c.URL, Replicas: 3, Logger: logger, HangAfter: time.Minute, CancelGrace: time.Minute,
		RetainFinished: time.Hour, PurgeEvery: time.Minute}
	o.firstAnswered = func() {
		c.Servers[1].Shutdown()
		c.Servers[2].Shutdown()
		close(lost)
	}
	go func() {
		<-lost
		select {
		case <-asking:
		case <-time.After(time.Minute):
			return
		}
		c.Restart(1)
		c.Restart(2)
	}()
	s, err := Start(context.Background(), o)
	if err != nil {
		for _, e := range logs.All() {
			t.Log(e.Time.Format("15:04:05.000"), e.Message, e.ContextMap())
		}
	}
	require.NoError(t, err, "start over a cluster that elected a leader meanwhile")
	t.Cleanup(s.Stop)
	require.NotZero(t, logs.FilterMessageSnippet("asking again").Len(), "the wait is in the server's log")
	_, _, err = s.Machine.Submit(context.Background(), statemachine.SubmitParams{Type: "after-election"})
	require.NoError(t, err)
}

// A start on a NATS that refuses its user ends at once with that refusal,
// where it waited for the NATS to say that it was not reachable (2 s for
// credentials, 30 s for TLS), the refusal unsaid.
func TestAStartOnANATSThatRefusesItsUserEndsAtOnce(t *testing.T) {
	ctx := context.Background()
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.Users = []*nserver.User{{Username: "jetjob", Password: "pw"}}
	}, nats.UserInfo("jetjob", "pw"))
	u, err := url.Parse(env.URL)
	require.NoError(t, err)
	u.User = url.UserPassword("jetjob", "wrong")
	_, err = Start(ctx, Options{NATSURL: u.String()})
	require.Error(t, err)
	require.True(t, Refused(err), "told as a refusal: %v", err)
	require.ErrorIs(t, err, nats.ErrAuthorization)
}

// A server on an external NATS connects with Options.NATSOptions: its
// credentials and TLS.
func TestAStartOnAnExternalNATSTakesItsOptions(t *testing.T) {
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.Users = []*nserver.User{{Username: "jetjob", Password: "pw"}}
	}, nats.UserInfo("jetjob", "pw"))
	s, err := Start(context.Background(), Options{NATSURL: env.URL, NATSOptions: []nats.Option{nats.UserInfo("jetjob", "pw")}})
	require.NoError(t, err)
	s.Stop()
}

// A server on a NATS reached through a leaf node makes and serves
// everything by the hub's JetStream domain; the embedded server, which has
// none, refuses one.
func TestAStartThroughALeafNodeGoesByItsDomain(t *testing.T) {
	l := natstest.StartLeafed(t, "hub")
	// Generous: through the leaf, the hub queues each API request, and a
	// loaded machine answers them slowly.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{NATSURL: l.LeafURL, JSDomain: "hub", NoMaintenance: true})
	require.NoError(t, err)
	defer s.Stop()
	j, _, err := s.Machine.Submit(ctx, statemachine.SubmitParams{Type: "leaf"})
	require.NoError(t, err)
	natstest.Eventually(t, time.Minute, func() bool {
		v, err := s.Reader.Get(ctx, j.ID)
		return err == nil && v.State == statemachine.StatePending
	}, "the view of job %s", j.ID)

	_, err = Start(ctx, Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0", JSDomain: "hub"})
	require.ErrorIs(t, err, ErrInvalidOptions)
}

// A server started again finds every stream and bucket as the first start
// left it, and updates none: the views bucket was updated at every second
// start, made with its format in its metadata, and then laid out without
// it (its configuration's hash differing). Each update is a round through
// a cluster's meta leader, and one racing a consumer's creation (a
// dashboard's watch of the views) is a data race inside nats-server.
func TestASecondStartUpdatesNoStream(t *testing.T) {
	env := natstest.StartStock(t, nil)
	o := Options{NATSURL: env.URL, HangAfter: time.Minute, CancelGrace: time.Minute, RetainFinished: time.Hour, PurgeEvery: time.Minute}
	s, err := Start(context.Background(), o)
	require.NoError(t, err)
	s.Stop()
	updated := natstest.StreamUpdates(t, env.NC)
	s, err = Start(context.Background(), o)
	require.NoError(t, err)
	s.Stop()
	require.Empty(t, updated(), "streams updated by the second start")
}
