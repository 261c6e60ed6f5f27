package projector

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

// Run with: go test -run XXX -bench . ./projector/
// Each figure is reported as a rate; the log is filled before the clock runs.

// benchEnv is a server that flushes on its own timer, so that filling the
// log is not bound by fsync (views are written without fsync anyway).
func benchEnv(b testing.TB) (jetstream.JetStream, *events.Log, *events.Heartbeats) {
	b.Helper()
	ctx := context.Background()
	srv, err := natsserver.Start(natsserver.Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Fsync: natsserver.FsyncInterval})
	require.NoError(b, err)
	b.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(b, err)
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1<<16))
	require.NoError(b, err)
	lg, err := events.Open(ctx, js, events.Config{})
	require.NoError(b, err)
	b.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, js)
	require.NoError(b, err)
	return js, lg, hb
}

// fillLog appends submitted, acquired and succeeded events for n jobs, a
// chunk of jobs at a time, each phase of a chunk pipelined, and returns how
// many events it appended. With a small chunk a job's events are close
// together in the log, as when jobs run as soon as they are submitted; with
// chunk = n every event of a job is in another projector batch.
func fillLog(b testing.TB, js jetstream.JetStream, lg *events.Log, n, chunk int) int {
	b.Helper()
	for lo := 0; lo < n; lo += chunk {
		fillChunk(b, js, lg, min(chunk, n-lo))
	}
	return 3 * n
}

func fillChunk(b testing.TB, js jetstream.JetStream, lg *events.Log, n int) {
	ids := make([]string, n)
	prev := make([]uint64, n)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7()).String()
	}
	phase := func(typ string, data func(i int) any) {
		futures := make([]jetstream.PubAckFuture, n)
		wait := func(lo, hi int) {
			for i := lo; i < hi; i++ {
				select {
				case ack := <-futures[i].Ok():
					prev[i] = ack.Sequence
				case err := <-futures[i].Err():
					b.Fatal(err)
				}
			}
		}
		const window = 4096 // well within the connection's window of unanswered publishes
		for i, id := range ids {
			ev, err := events.New(id, typ, data(i))
			require.NoError(b, err)
			raw, err := events.Encode(ev)
			require.NoError(b, err)
			m := nats.NewMsg(lg.Subject(id))
			m.Data = raw
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(prev[i], 10))
			futures[i], err = js.PublishMsgAsync(m)
			require.NoError(b, err)
			if i >= window {
				wait(i-window, i-window+1)
			}
		}
		wait(max(0, n-window), n)
	}
	phase(events.TypeSubmitted, func(int) any {
		return events.Submitted{Type: "bench", Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"v": "1"}, MaxAttempts: 3}
	})
	phase(events.TypeAcquired, func(int) any { return events.Acquired{WorkerID: "w", Attempt: 1} })
	phase(events.TypeSucceeded, func(i int) any { return events.Succeeded{Lease: prev[i], Result: json.RawMessage(`{"ok":true}`)} })
}

// BenchmarkProject measures a started projector catching up with a log of
// 30,000 jobs (90,000 events).
func BenchmarkProject(b *testing.B) {
	for _, bc := range []struct {
		name  string
		chunk int
	}{{"events_apart", 30_000}, {"events_together", 100}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			for range b.N {
				b.StopTimer()
				js, lg, hb := benchEnv(b)
				n := fillLog(b, js, lg, 30_000, bc.chunk)
				p, err := New(js, lg, hb, Config{})
				require.NoError(b, err)
				b.StartTimer()
				start := time.Now()
				require.NoError(b, p.Start(ctx))
				natstest.Eventually(b, time.Minute, func() bool {
					c, err := js.Consumer(ctx, lg.Stream(), DurableDefault)
					require.NoError(b, err)
					return c.CachedInfo().AckFloor.Stream == uint64(n)
				}, "caught up")
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
				p.Stop()
			}
		})
	}
}

// BenchmarkRebuild measures a rebuild of 30,000 jobs' views from 90,000
// events: into an empty bucket, over views that are all current (as on a
// healthy running system: nothing to write), and over views that all
// differ (each is written over).
func BenchmarkRebuild(b *testing.B) {
	ctx := context.Background()
	for _, bucket := range []string{"empty", "current", "stale"} {
		b.Run(bucket, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				js, lg, hb := benchEnv(b)
				n := fillLog(b, js, lg, 30_000, 30_000)
				p, err := New(js, lg, hb, Config{})
				require.NoError(b, err)
				if bucket != "empty" {
					_, err = p.Rebuild(ctx)
					require.NoError(b, err)
				}
				if bucket == "stale" {
					spoilViews(b, js)
				}
				b.StartTimer()
				stats, err := p.Rebuild(ctx)
				require.NoError(b, err)
				require.Equal(b, n, stats.Events)
				b.ReportMetric(stats.EventsPerSec, "events/s")
			}
		})
	}
}

// spoilViews writes every view of the bucket over with bytes that differ.
func spoilViews(b *testing.B, js jetstream.JetStream) {
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, BucketDefault)
	require.NoError(b, err)
	keys, err := kv.ListKeys(ctx)
	require.NoError(b, err)
	for key := range keys.Keys() {
		_, err := js.PublishAsync("$KV."+BucketDefault+"."+key, []byte(`{}`))
		require.NoError(b, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("spoiled views not acknowledged")
	}
}

// BenchmarkList measures listings of a bucket of 100,000 views: all of
// them, and a state that none has.
func BenchmarkList(b *testing.B) {
	ctx := context.Background()
	js, lg, hb := benchEnv(b)
	jobs := 100_000
	fillLog(b, js, lg, jobs, jobs)
	p, err := New(js, lg, hb, Config{})
	require.NoError(b, err)
	_, err = p.Rebuild(ctx)
	require.NoError(b, err)
	r, err := NewReader(ctx, js)
	require.NoError(b, err)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		page, err := r.List(ctx, Filter{Type: "bench"})
		require.NoError(b, err)
		require.Len(b, page.Views, jobs)
		b.ReportMetric(float64(jobs)/time.Since(start).Seconds(), "all_views/s")
		start = time.Now()
		page, err = r.List(ctx, Filter{States: []statemachine.State{statemachine.StateRunning}})
		require.NoError(b, err)
		require.Empty(b, page.Views)
		b.ReportMetric(float64(jobs)/time.Since(start).Seconds(), "none_of_views/s")
	}
}
