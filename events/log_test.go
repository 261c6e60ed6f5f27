package events_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/provision"
)

func openLog(t *testing.T, cfg events.Config) (*events.Log, *natstest.Env) {
	t.Helper()
	env := natstest.Start(t)
	l, err := events.Open(context.Background(), env.JS, cfg)
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l, env
}

func mustEvent(t *testing.T, job, typ string) events.Event {
	t.Helper()
	ev, err := events.New(job, typ, struct{}{})
	require.NoError(t, err)
	return ev
}

func TestAppendExpectsLastSequence(t *testing.T) {
	ctx := context.Background()
	l, _ := openLog(t, events.Config{})

	seq1, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)

	_, err = l.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), 0)
	require.ErrorIs(t, err, events.ErrConflict)
	var ce *events.ConflictError
	require.True(t, errors.As(err, &ce))
	require.Equal(t, "job1", ce.JobID)

	seq2, err := l.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), seq1)
	require.NoError(t, err)
	require.Greater(t, seq2, seq1)

	recs, err := l.Load(ctx, "job1")
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, events.TypeSubmitted, recs[0].Type)
	require.Equal(t, seq1, recs[0].Seq)
	require.Equal(t, uint64(0), recs[0].PrevSeq)
	require.Equal(t, seq2, recs[1].Seq)
	require.Equal(t, seq1, recs[1].PrevSeq)

	last, err := l.LastSeq(ctx, "job1")
	require.NoError(t, err)
	require.Equal(t, seq2, last)

	_, err = l.Load(ctx, "nosuchjob")
	require.ErrorIs(t, err, events.ErrNotFound)
	_, err = l.Load(ctx, "bad.id")
	require.ErrorIs(t, err, events.ErrInvalidJobID)
}

// Holds asks the stream's leader whether a job has any message left: true
// while it has, false once it was purged or never was.
func TestHoldsTellsAJobInTheLogFromOneGone(t *testing.T) {
	ctx := context.Background()
	l, _ := openLog(t, events.Config{})
	seq, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = l.Append(ctx, mustEvent(t, "job2", events.TypeSubmitted), 0)
	require.NoError(t, err)
	for id, want := range map[string]bool{"job1": true, "job2": true, "job3": false} {
		held, err := l.Holds(ctx, id)
		require.NoError(t, err)
		require.Equal(t, want, held, id)
	}
	require.NoError(t, l.Purge(ctx, "job1", seq))
	held, err := l.Holds(ctx, "job1")
	require.NoError(t, err)
	require.False(t, held, "purged")
	held, err = l.Holds(ctx, "job2")
	require.NoError(t, err)
	require.True(t, held, "another job's purge leaves it")
	_, err = l.Holds(ctx, "bad.id")
	require.ErrorIs(t, err, events.ErrInvalidJobID)
}

func TestResentEventIsNotAConflict(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{MaxBatch: 1})
	ev := mustEvent(t, "job1", events.TypeSubmitted)
	seq, err := l.Append(ctx, ev, 0)
	require.NoError(t, err)
	// The same event again, as after a lost ack: deduplicated by message ID.
	again, err := l.Append(ctx, ev, 0)
	require.NoError(t, err)
	require.Equal(t, seq, again)
	recs, err := l.Load(ctx, "job1")
	require.NoError(t, err)
	require.Len(t, recs, 1)
	_ = env
}

// A resent event whose history cannot be read back (the reads go
// unanswered, as on a machine too loaded to answer them in time) may have
// landed: the resend says the outcome is unknown, not that another writer
// moved the job. A failed read was taken for a history without the event,
// and a submit that had landed, its batch's ack lost, was reported as a
// conflict (TestManyJobsOverlappingTagSetsRunExactlyOnce, under load).
func TestResentEventUnreadIsNotAConflict(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{MaxBatch: 1})
	ev := mustEvent(t, "job1", events.TypeSubmitted)
	_, err := l.Append(ctx, ev, 0)
	require.NoError(t, err)
	// No direct gets: each read of the history is answered "no responders"
	// until the publish timeout.
	st, err := env.JS.Stream(ctx, l.Stream())
	require.NoError(t, err)
	cfg := st.CachedInfo().Config
	cfg.AllowDirect = false
	_, err = env.JS.UpdateStream(ctx, cfg)
	require.NoError(t, err)
	resender, err := events.Attach(env.JS, events.Config{MaxBatch: 1, PublishTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(resender.Close)
	_, err = resender.Append(ctx, ev, 0)
	require.ErrorIs(t, err, events.ErrOutcomeUnknown)
	require.NotErrorIs(t, err, events.ErrConflict)
}

// appendModes are the ways a Log commits appends: one at a time, in atomic
// batches (the default, for a server that fsyncs each append), streaming
// each as it comes (the embedded server with fsync interval), and offered
// to a server's relay first.
var appendModes = map[string]events.Config{
	"one at a time": {MaxBatch: 1},
	"batches":       {MaxBatch: 100},
	"streaming":     {MinBatch: events.MaxBatchLimit + 1},
	// Relayed with no server relaying: straight to the stream after all.
	"relayed": {MaxBatch: 100, Relay: true},
}

func TestConcurrentConflictingAppendsExactlyOneWins(t *testing.T) {
	for name, cfg := range appendModes {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l, _ := openLog(t, cfg)
			seq, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
			require.NoError(t, err)

			var wg sync.WaitGroup
			var mu sync.Mutex
			wins, conflicts := 0, 0
			for range 100 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := l.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), seq)
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						wins++
					} else if errors.Is(err, events.ErrConflict) {
						conflicts++
					} else {
						t.Errorf("unexpected error: %v", err)
					}
				}()
			}
			wg.Wait()
			require.Equal(t, 1, wins)
			require.Equal(t, 99, conflicts)
			recs, err := l.Load(ctx, "job1")
			require.NoError(t, err)
			require.Len(t, recs, 2)
		})
	}
}

func TestConcurrentAppendsToManyJobsGetTheirOwnSequences(t *testing.T) {
	for name, cfg := range appendModes {
		t.Run(name, func(t *testing.T) { testConcurrentAppendsToManyJobs(t, cfg) })
	}
}

func testConcurrentAppendsToManyJobs(t *testing.T, cfg events.Config) {
	ctx := context.Background()
	l, _ := openLog(t, cfg)
	var wg sync.WaitGroup
	seqs := make([]uint64, 500)
	for i := range seqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq, err := l.Append(ctx, mustEvent(t, fmt.Sprintf("job%d", i), events.TypeSubmitted), 0)
			require.NoError(t, err)
			seqs[i] = seq
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i, seq := range seqs {
		require.False(t, seen[seq], "sequence %d given twice", seq)
		seen[seq] = true
		recs, err := l.Load(ctx, fmt.Sprintf("job%d", i))
		require.NoError(t, err)
		require.Len(t, recs, 1)
		require.Equal(t, seq, recs[0].Seq)
	}
}

func TestLoadReportsGarbageWithoutFailing(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	seq, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = env.JS.PublishMsg(ctx, &nats.Msg{Subject: l.Subject("job1"), Data: []byte("not json")})
	require.NoError(t, err)
	recs, err := l.Load(ctx, "job1")
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.NoError(t, recs[0].Err)
	require.ErrorIs(t, recs[1].Err, events.ErrMalformed)
	require.Greater(t, recs[1].Seq, seq)
}

// TestStaleAppendInABatchFailsAlone: one stale expectation among concurrent
// appends to other jobs refuses that append only, whichever way the batch
// is committed.
func TestStaleAppendInABatchFailsAlone(t *testing.T) {
	ctx := context.Background()
	l, _ := openLog(t, events.Config{MinBatch: 2})
	seq, err := l.Append(ctx, mustEvent(t, "old", events.TypeSubmitted), 0)
	require.NoError(t, err)
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 50)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i == 25 {
					_, errs[i] = l.Append(ctx, mustEvent(t, "old", events.TypeCanceled), 0)
					return
				}
				_, errs[i] = l.Append(ctx, mustEvent(t, fmt.Sprintf("r%d-job%d", round, i), events.TypeSubmitted), 0)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if i == 25 {
				require.ErrorIs(t, err, events.ErrConflict)
				continue
			}
			require.NoError(t, err)
		}
	}
	last, err := l.LastSeq(ctx, "old")
	require.NoError(t, err)
	require.Equal(t, seq, last)
	last, err = l.LastSeq(ctx, "never")
	require.NoError(t, err)
	require.Zero(t, last)
}

// TestSameJobAppendsInOneFlushAreOrdered: two appends to one job waiting
// together go into different commits, so the second sees the first.
func TestSameJobAppendsInOneFlushAreOrdered(t *testing.T) {
	ctx := context.Background()
	l, _ := openLog(t, events.Config{})
	seq, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)
	var wg sync.WaitGroup
	res := make([]error, 20)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, res[i] = l.Append(ctx, mustEvent(t, "job1", events.TypePromoted), seq)
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range res {
		if err == nil {
			wins++
		} else {
			require.ErrorIs(t, err, events.ErrConflict)
		}
	}
	require.Equal(t, 1, wins)
}

func TestLoadPagesThroughLongHistories(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	const n = 1300 // more than two pages of 512
	for i := 0; i < n; i++ {
		b, err := events.Encode(mustEvent(t, "long", events.TypePromoted))
		require.NoError(t, err)
		_, err = env.JS.PublishAsync(l.Subject("long"), b)
		require.NoError(t, err)
		if i%10 == 0 {
			// An unrelated job interleaved in the stream.
			_, err = env.JS.PublishAsync(l.Subject("other"), b)
			require.NoError(t, err)
		}
	}
	// 1,430 publishes, each fsync'd before its ack: 10 s ran out on a
	// loaded machine under -race, the acks still coming.
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		t.Fatal("publishes not acknowledged")
	}
	recs, err := l.Load(ctx, "long")
	require.NoError(t, err)
	require.Len(t, recs, n)
	for i := 1; i < n; i++ {
		require.Greater(t, recs[i].Seq, recs[i-1].Seq)
		require.NoError(t, recs[i].Err)
		require.Equal(t, "long", recs[i].JobID)
	}
	tail, err := l.LoadAfter(ctx, "long", recs[n-3].Seq)
	require.NoError(t, err)
	require.Len(t, tail, 2)
	require.Equal(t, recs[n-2].Seq, tail[0].Seq)
	none, err := l.LoadAfter(ctx, "long", recs[n-1].Seq)
	require.NoError(t, err)
	require.Empty(t, none)
}

func TestAppendAfterCloseAndWithDoneContext(t *testing.T) {
	for name, cfg := range appendModes {
		t.Run(name, func(t *testing.T) { testAppendAfterCloseAndWithDoneContext(t, cfg) })
	}
}

func testAppendAfterCloseAndWithDoneContext(t *testing.T, cfg events.Config) {
	l, _ := openLog(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.ErrorIs(t, err, context.Canceled)
	_, err = l.Append(context.Background(), mustEvent(t, "bad.id", events.TypeSubmitted), 0)
	require.ErrorIs(t, err, events.ErrInvalidJobID)
	l.Close()
	l.Close()
	_, err = l.Append(context.Background(), mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.ErrorIs(t, err, events.ErrClosed)
}

// Closes at once, from several goroutines, each return once the log is
// closed; two could both close its channel, and panic.
func TestClosesAtOnce(t *testing.T) {
	env := natstest.Start(t)
	for range 5000 {
		lg, err := events.Attach(env.JS, events.Config{})
		require.NoError(t, err)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				<-start
				lg.Close()
			})
		}
		close(start)
		wg.Wait()
	}
}

// An append whose caller gives up while it is in flight may be stored: its
// error says so and names the job, and no append that failed otherwise is
// stored.
func TestAppendsCutShortReportAnUnknownOutcome(t *testing.T) {
	for name, cfg := range appendModes {
		t.Run(name, func(t *testing.T) { testAppendsCutShort(t, cfg) })
	}
}

func testAppendsCutShort(t *testing.T, cfg events.Config) {
	l, _ := openLog(t, cfg)
	for round := 0; round < 10; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(round+1)*200*time.Microsecond)
		ids, errs, _, wait := appendAll(t, ctx, l, fmt.Sprintf("cut%d", round), 400)
		wait()
		cancel()
		requireOutcomes(t, l, ids, errs, context.DeadlineExceeded)
	}
}

// appendAll starts n concurrent first appends, to jobs prefix-0 to
// prefix-(n-1); answered counts those answered so far, and wait returns once
// all are, their errors in errs.
func appendAll(t *testing.T, ctx context.Context, l *events.Log, prefix string, n int) (ids []string, errs []error, answered *atomic.Int64, wait func()) {
	ids, errs, answered = make([]string, n), make([]error, n), new(atomic.Int64)
	var wg sync.WaitGroup
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Append(ctx, mustEvent(t, ids[i], events.TypeSubmitted), 0)
			answered.Add(1)
		}()
	}
	return ids, errs, answered, wg.Wait
}

// requireOutcomes checks each append's answer against the log: an
// acknowledged append is stored, one that failed plainly is not, and an
// unknown outcome names its job and, when cause is set, wraps it. It returns
// how many failed plainly.
func requireOutcomes(t *testing.T, l *events.Log, ids []string, errs []error, cause error) int {
	t.Helper()
	// Read as LoadAfter reads, without Load's question to the stream's
	// leader before it says a job is not found: these tests run on one
	// server, whose answer is the stream's, and thousands of appends not
	// stored made the question take minutes under -race. Read 16 at a
	// time: one round trip after the other, the reads took 40% of the
	// time of the tests that check thousands of appends.
	stored, lerrs := make([]bool, len(ids)), make([]error, len(ids))
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				recs, err := l.LoadAfter(context.Background(), ids[i], 0)
				stored[i], lerrs[i] = len(recs) > 0, err
			}
		}()
	}
	wg.Wait()
	failed := 0
	for i := range ids {
		require.NoError(t, lerrs[i], "load %s", ids[i])
		stored := stored[i]
		var unknown *events.OutcomeUnknownError
		switch {
		case errs[i] == nil:
			require.True(t, stored, "acknowledged append of %s not stored", ids[i])
		case errors.As(errs[i], &unknown):
			require.Equal(t, ids[i], unknown.JobID)
			if cause != nil {
				require.ErrorIs(t, errs[i], cause)
			}
		default:
			failed++
			require.False(t, stored, "append of %s failed (%v) yet is stored", ids[i], errs[i])
		}
	}
	return failed
}

func TestSubjects(t *testing.T) {
	l, _ := openLog(t, events.Config{})
	require.Equal(t, events.StreamDefault, l.Stream())
	require.Equal(t, events.SubjectPrefixDefault+"job1", l.Subject("job1"))
	id, ok := l.JobIDFromSubject(l.Subject("job1"))
	require.True(t, ok)
	require.Equal(t, "job1", id)
	_, ok = l.JobIDFromSubject("other.job1")
	require.False(t, ok)
	_, ok = l.JobIDFromSubject(events.SubjectPrefixDefault)
	require.False(t, ok)
}

// TestAcknowledgedAppendsSurviveARestart: an append that returned is in
// the log after the server crashes and restarts.
func TestAcknowledgedAppendsSurviveARestart(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	var wg sync.WaitGroup
	seqs := make([]uint64, 200)
	for i := range seqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq, err := l.Append(ctx, mustEvent(t, fmt.Sprintf("job%d", i), events.TypeSubmitted), 0)
			require.NoError(t, err)
			seqs[i] = seq
		}()
	}
	wg.Wait()
	env.Restart(t)
	l2, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(l2.Close)
	for i, seq := range seqs {
		last, err := l2.LastSeq(ctx, fmt.Sprintf("job%d", i))
		require.NoError(t, err)
		require.Equal(t, seq, last)
	}
}

func TestAppendedEventsCarryTheirTypeInAHeader(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{MinBatch: 2})
	var wg sync.WaitGroup
	errs := make([]error, 20)
	evs := make([]events.Event, 20)
	for i := range evs {
		evs[i] = mustEvent(t, fmt.Sprintf("job%d", i), events.TypeSubmitted)
	}
	for i := range evs { // batched as well as single appends
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Append(ctx, evs[i], 0)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	seq, err := l.LastSeq(ctx, "job3")
	require.NoError(t, err)
	_, err = l.Append(ctx, mustEvent(t, "job3", events.TypeCanceled), seq)
	require.NoError(t, err)
	s, err := env.JS.Stream(ctx, l.Stream())
	require.NoError(t, err)
	for i := range 20 {
		m, err := s.GetLastMsgForSubject(ctx, l.Subject(fmt.Sprintf("job%d", i)))
		require.NoError(t, err)
		want := events.TypeSubmitted
		if i == 3 {
			want = events.TypeCanceled
		}
		require.Equal(t, want, events.TypeOf(m.Header), "job%d", i)
	}
}

// A load asked of a stream not served yet (a moment after a restart) is asked
// again until the publish timeout, then fails with ErrUnavailable.
func TestLoadWaitsForTheStreamToBeServed(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	cfg := events.Config{Stream: "LATE", SubjectPrefix: "late.", PublishTimeout: 10 * time.Second}
	early, err := events.Attach(env.JS, cfg)
	require.NoError(t, err)
	t.Cleanup(early.Close)
	loaded := make(chan error, 1)
	go func() {
		_, err := early.Load(ctx, "job1")
		loaded <- err
	}()
	l, err := events.Open(ctx, env.JS, cfg)
	require.NoError(t, err)
	t.Cleanup(l.Close)
	select {
	case err := <-loaded:
		require.ErrorIs(t, err, events.ErrNotFound, "served now, and the job has no events")
	case <-time.After(15 * time.Second):
		t.Fatal("the load never returned")
	}

	never, err := events.Attach(env.JS, events.Config{Stream: "NEVER", SubjectPrefix: "never.", PublishTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(never.Close)
	_, err = never.Load(ctx, "job1")
	require.ErrorIs(t, err, events.ErrUnavailable)
}

// An append to a log attached where no server provisioned one fails at
// once with ErrNoLog, rather than after the tries a leader election is given
// and with an outcome said to be unknown.
func TestAnAppendWithNoStreamSaysSo(t *testing.T) {
	env := natstest.Start(t)
	l, err := events.Attach(env.JS, events.Config{Stream: "NONE", SubjectPrefix: "none."})
	require.NoError(t, err)
	t.Cleanup(l.Close)
	_, err = l.Append(context.Background(), mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.ErrorIs(t, err, events.ErrNoLog)
	require.NotErrorIs(t, err, events.ErrOutcomeUnknown)
}

// TestAppendsCutByALostConnectionReportAnUnknownOutcome: when the connection
// closes under appends in flight, an append told it failed with a plain
// error was not stored; the others are stored or say the outcome is unknown.
func TestAppendsCutByALostConnectionReportAnUnknownOutcome(t *testing.T) {
	for name, cfg := range appendModes {
		t.Run(name, func(t *testing.T) { testAppendsCutByALostConnection(t, cfg) })
	}
}

func testAppendsCutByALostConnection(t *testing.T, cfg events.Config) {
	env := natstest.Start(t)
	ctx := context.Background()
	setup, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	setup.Close()
	for round := range 5 {
		nc, err := nats.Connect(env.URL, nats.NoReconnect())
		require.NoError(t, err)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		// An ack that never comes must not be waited for until the
		// publish timeout: the connection's end answers it.
		cfg.PublishTimeout = time.Hour
		l, err := events.Attach(js, cfg)
		require.NoError(t, err)
		ids, errs, answered, wait := appendAll(t, ctx, l, fmt.Sprintf("lost%d", round), 2000)
		natstest.Eventually(t, time.Minute, func() bool { return answered.Load() >= int64(100*(round+1)) }, "appends answered")
		nc.Close() // mid-flight
		natstest.Eventually(t, time.Minute, func() bool { return answered.Load() == 2000 }, "every append answered after the connection closed")
		wait()
		l.Close()
		failed := requireOutcomes(t, setup, ids, errs, nil)
		for i, err := range errs {
			var unknown *events.OutcomeUnknownError
			if err != nil && !errors.As(err, &unknown) {
				require.ErrorIs(t, err, events.ErrNotSent, "append of %s", ids[i])
			}
		}
		t.Logf("round %d: %d appends not sent", round, failed)
	}
}

// An append made after the connection closed is known not stored: it says
// so, rather than that its outcome is unknown.
func TestAppendAfterTheConnectionClosedIsNotSent(t *testing.T) {
	env := natstest.Start(t)
	setup, err := events.Open(context.Background(), env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(setup.Close)
	for name, cfg := range appendModes {
		nc, err := nats.Connect(env.URL, nats.NoReconnect())
		require.NoError(t, err)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		l, err := events.Attach(js, cfg)
		require.NoError(t, err)
		nc.Close()
		id := "closed-" + strings.ReplaceAll(name, " ", "-")
		_, err = l.Append(context.Background(), mustEvent(t, id, events.TypeSubmitted), 0)
		require.ErrorIs(t, err, events.ErrNotSent, name)
		require.NotErrorIs(t, err, events.ErrOutcomeUnknown, name)
		l.Close()
		_, err = setup.Load(context.Background(), id)
		require.ErrorIs(t, err, events.ErrNotFound, name)
	}
}

func TestLogConfigThatCannotRunIsRefused(t *testing.T) {
	env := natstest.Start(t)
	_, err := events.Open(context.Background(), env.JS, events.Config{MaxBatch: events.MaxBatchLimit + 1})
	require.ErrorIs(t, err, events.ErrInvalidConfig)
	// Negatives were read as their defaults, not refused.
	for name, cfg := range map[string]events.Config{
		"negative min batch":       {MinBatch: -1},
		"negative flushers":        {Flushers: -1},
		"negative publish timeout": {PublishTimeout: -time.Second},
		"negative publish retries": {PublishRetries: -1},
		// Names NATS would refuse only at the first request, or, for a
		// prefix without its closing dot, take and make a log no append
		// reaches (its subjects "x>" match no job's "xID").
		"stream with a dot":          {Stream: "a.b"},
		"stream with a space":        {Stream: "a b"},
		"stream with a wildcard":     {Stream: "a*"},
		"prefix without a dot":       {SubjectPrefix: "x"},
		"prefix of a wildcard":       {SubjectPrefix: "*."},
		"prefix of a full wildcard":  {SubjectPrefix: "a.>."},
		"prefix with an empty token": {SubjectPrefix: "a..b."},
		"prefix with a space":        {SubjectPrefix: "a b."},
		"prefix a system subject":    {SubjectPrefix: "$JS.ev."},
	} {
		_, err = events.Attach(env.JS, cfg)
		require.ErrorIs(t, err, events.ErrInvalidConfig, name)
	}
	_, err = events.Open(context.Background(), nil, events.Config{})
	require.ErrorIs(t, err, events.ErrInvalidConfig)
	_, err = events.Attach(nil, events.Config{})
	require.ErrorIs(t, err, events.ErrInvalidConfig)
	_, err = events.OpenHeartbeats(context.Background(), nil)
	require.ErrorIs(t, err, events.ErrInvalidConfig, "heartbeats without jetstream")
}

// A prefix that NATS takes for a literal subject, with characters beyond
// letters, digits, '-' and '_' (a ':' or a '@' of a naming scheme, a
// letter not in ASCII), made a log that appends and loads before its check
// came: it is still taken.
func TestLogTakesAPrefixNATSTakes(t *testing.T) {
	env := natstest.Start(t)
	ctx := context.Background()
	for i, prefix := range []string{"acme:jobs.", "jobs@eu.v1.", "jöbs.", "a+b=c."} {
		stream := fmt.Sprintf("S%d", i)
		l, err := events.Open(ctx, env.JS, events.Config{Stream: stream, SubjectPrefix: prefix})
		require.NoError(t, err, prefix)
		seq, err := l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
		require.NoError(t, err, prefix)
		recs, err := l.Load(ctx, "job1")
		require.NoError(t, err, prefix)
		require.Len(t, recs, 1, prefix)
		require.Equal(t, seq, recs[0].Seq, prefix)
		l.Close()
	}
}

// TestAppendWaitsOutALeaderElection: on a 3-server cluster, appends made
// while the log's stream has no leader (two servers of three down) are
// stored once one comes back and a leader is elected, not failed at once as
// of unknown outcome.
func TestAppendWaitsOutALeaderElection(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []events.Config{{MaxBatch: 1, PublishRetries: 2}, {PublishRetries: 2}} {
		c := natstest.StartCluster(t, 3)
		_, js := natstest.Connect(t, c.URL)
		l, err := events.Open(ctx, provision.WithReplicas(js, 3), cfg)
		require.NoError(t, err)
		t.Cleanup(l.Close)
		_, err = l.Append(ctx, mustEvent(t, "warm", events.TypeSubmitted), 0)
		require.NoError(t, err)

		c.Servers[1].Shutdown()
		c.Servers[2].Shutdown()
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, errs[i] = l.Append(actx, mustEvent(t, fmt.Sprintf("job%d", i), events.TypeSubmitted), 0)
			}()
		}
		// What a restarting node takes, less than the publish timeout the
		// wait is bounded by.
		time.Sleep(time.Second)
		c.Restart(1)
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "max batch %d: append %d", cfg.MaxBatch, i)
		}
	}
}

// An append that fails while its stream has lost its quorum reports either
// that it was not stored, and then it never is, or that it may have been:
// a resend told that an earlier send is still being stored (nats-server's
// "duplicate message id is in process") once passed for "not stored", and
// the job appeared when the servers came back.
func TestAnAppendReportedNotStoredNeverLands(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	l, err := events.Open(ctx, provision.WithReplicas(js, 3), events.Config{MaxBatch: 1, PublishRetries: 3, PublishTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(l.Close)
	_, err = l.Append(ctx, mustEvent(t, "warm", events.TypeSubmitted), 0)
	require.NoError(t, err)

	// The stream's leader stays up, so that it takes the appends and cannot
	// commit them.
	st, err := js.Stream(ctx, l.Stream())
	require.NoError(t, err)
	var down []int
	for i, srv := range c.Servers {
		if srv.Name() != st.CachedInfo().Cluster.Leader {
			srv.Shutdown()
			down = append(down, i)
		}
	}
	require.Len(t, down, 2)
	errs := make([]error, 10)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Append(ctx, mustEvent(t, fmt.Sprintf("cut%d", i), events.TypeSubmitted), 0)
		}()
	}
	wg.Wait()
	for _, i := range down {
		c.Restart(i)
	}
	probe := 0
	natstest.Eventually(t, 30*time.Second, func() bool {
		probe++
		_, err := l.Append(ctx, mustEvent(t, fmt.Sprint("back", probe), events.TypeSubmitted), 0)
		return err == nil
	}, "the log takes appends again")
	for i, err := range errs {
		require.Error(t, err, "append %d during the outage", i)
		if errors.Is(err, events.ErrOutcomeUnknown) {
			continue
		}
		_, lerr := l.Load(ctx, fmt.Sprintf("cut%d", i))
		require.ErrorIs(t, lerr, events.ErrNotFound, "append %d was reported not stored: %v", i, err)
	}
}

// TestLoadMarksAnotherJobsEventMalformed: an event naming another job, found
// on a job's subject, is not one of its events: Load marks it, so that
// every reader of the history (the state machine, history, the projector)
// skips it alike.
func TestLoadMarksAnotherJobsEventMalformed(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	seq, err := l.Append(ctx, mustEvent(t, "jobA", events.TypeSubmitted), 0)
	require.NoError(t, err)
	foreign, err := events.Encode(mustEvent(t, "jobB", events.TypeCanceled))
	require.NoError(t, err)
	_, err = env.JS.Publish(ctx, l.Subject("jobA"), foreign)
	require.NoError(t, err)

	recs, err := l.Load(ctx, "jobA")
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.NoError(t, recs[0].Err)
	require.Equal(t, seq, recs[0].Seq)
	require.ErrorIs(t, recs[1].Err, events.ErrMalformed)
	require.ErrorContains(t, recs[1].Err, `event of job "jobB" on the subject of job jobA`)
}

// TestJobsStoredBefore: the jobs with an event stored before a time, once
// each, in the order of their oldest event still in the log.
func TestJobsStoredBefore(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	a1, err := l.Append(ctx, mustEvent(t, "jobA", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = l.Append(ctx, mustEvent(t, "jobB", events.TypeSubmitted), 0)
	require.NoError(t, err)
	a2, err := l.Append(ctx, mustEvent(t, "jobA", events.TypeCanceled), a1)
	require.NoError(t, err)
	split := time.Now()
	_, err = l.Append(ctx, mustEvent(t, "jobC", events.TypeSubmitted), 0)
	require.NoError(t, err)

	for _, tc := range []struct {
		before time.Time
		want   []string
	}{
		{split.Add(-time.Hour), nil},
		{split, []string{"jobA", "jobB"}},
		{time.Now().Add(time.Hour), []string{"jobA", "jobB", "jobC"}},
	} {
		got, err := l.JobsStoredBefore(ctx, tc.before)
		require.NoError(t, err)
		require.Equal(t, tc.want, got, "before %s", tc.before)
	}
	require.NoError(t, l.Purge(ctx, "jobA", a2))
	got, err := l.JobsStoredBefore(ctx, split)
	require.NoError(t, err)
	require.Equal(t, []string{"jobB"}, got, "a purged job's events are gone from the head")

	// A reader left on the log would cost every later purge a recount for
	// five minutes (nats.go deletes the consumers a reading replaced in the
	// background, within moments).
	natstest.Eventually(t, 5*time.Second, func() bool {
		stream, err := env.JS.Stream(ctx, l.Stream())
		return err == nil && stream.CachedInfo().State.Consumers == 0
	}, "passes leave no consumer on the log")
}

// TestAttachedLogsFollowTheRecordedAppends: a log follows how the server
// that provisioned the stream recorded appends are best sent, also while
// appends are in flight, and a server that does not know leaves the record.
func TestAttachedLogsFollowTheRecordedAppends(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	embedded, err := events.Open(ctx, env.JS, events.Config{MinBatch: events.MaxBatchLimit + 1, RecordAppends: true})
	require.NoError(t, err)
	t.Cleanup(embedded.Close)
	require.Equal(t, events.AppendsStreamed, embedded.Appends())

	onItsNATS, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(onItsNATS.Close)
	require.Equal(t, events.AppendsBatched, onItsNATS.Appends())
	require.NoError(t, onItsNATS.Follow(ctx))
	require.Equal(t, events.AppendsStreamed, onItsNATS.Appends(), "the record outlived an Open that does not record")

	// A minute a try: 2,000 appends at once, streamed with fsync always,
	// took more than the default 5 s a try for some under load (a load
	// average of 40 on 2 cores), which then failed as of unknown outcome.
	worker, err := events.Attach(env.JS, events.Config{PublishTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(worker.Close)
	require.Equal(t, events.AppendsBatched, worker.Appends())

	// Each switch happens with appends queued the other way.
	switchWhileAppending := func(prefix string) {
		ids, errs, answered, wait := appendAll(t, ctx, worker, prefix, 2000)
		natstest.Eventually(t, time.Minute, func() bool { return answered.Load() >= 100 }, "appends answered")
		require.NoError(t, worker.Follow(ctx))
		wait()
		for i, err := range errs {
			require.NoError(t, err, "append of %s", ids[i])
		}
		requireOutcomes(t, worker, ids, errs, nil)
	}
	switchWhileAppending("to-streamed")
	require.Equal(t, events.AppendsStreamed, worker.Appends())

	seq, err := worker.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
	require.NoError(t, err)
	_, err = worker.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), 0)
	require.ErrorIs(t, err, events.ErrConflict, "streamed appends still expect the last sequence")
	_, err = worker.Append(ctx, mustEvent(t, "job1", events.TypeCanceled), seq)
	require.NoError(t, err)

	restarted, err := events.Open(ctx, env.JS, events.Config{RecordAppends: true}) // now with fsync always
	require.NoError(t, err)
	t.Cleanup(restarted.Close)
	switchWhileAppending("to-batched")
	require.Equal(t, events.AppendsBatched, worker.Appends())
}

// recordAppends records in the stream's metadata that appends go as given,
// as an embedded server with that fsync setting does, and returns the log
// that did, closed: it still reads.
func recordAppends(t *testing.T, js jetstream.JetStream, appends string) *events.Log {
	t.Helper()
	cfg := events.Config{RecordAppends: true}
	if appends == events.AppendsStreamed {
		cfg.MinBatch = events.MaxBatchLimit + 1
	}
	l, err := events.Open(context.Background(), js, cfg)
	require.NoError(t, err)
	l.Close()
	return l
}

// A log that follows the record reads it again after a reconnect: an
// embedded server restarted with another fsync setting restarts its NATS.
func TestAFollowingLogFollowsAgainAfterAReconnect(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	recordAppends(t, env.JS, events.AppendsStreamed)
	_, js := natstest.Connect(t, env.URL)
	worker, err := events.Attach(js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(worker.Close)
	require.NoError(t, worker.Follow(ctx))
	require.Equal(t, events.AppendsStreamed, worker.Appends())

	_, admin := natstest.Connect(t, env.URL)
	recordAppends(t, admin, events.AppendsBatched)
	require.Equal(t, events.AppendsStreamed, worker.Appends(), "no reconnect yet")
	env.Bounce(t)
	natstest.Eventually(t, 20*time.Second, func() bool { return worker.Appends() == events.AppendsBatched }, "followed again after the reconnect")
	_, err = worker.Append(ctx, mustEvent(t, "after", events.TypeSubmitted), 0)
	require.NoError(t, err)
}

// An append a flusher handed on, as one queued the other way when the log
// switched, is answered before Close returns: a closed log's ErrClosed
// means not stored.
func TestCloseAnswersAppendsQueuedAcrossASwitch(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	setup := recordAppends(t, env.JS, events.AppendsStreamed)
	closedUnstored := 0
	for round := range 20 {
		_, js := natstest.Connect(t, env.URL)
		l, err := events.Attach(js, events.Config{})
		require.NoError(t, err)
		ids, errs, _, wait := appendAll(t, ctx, l, fmt.Sprintf("switch%d", round), 200)
		require.NoError(t, l.Follow(ctx))
		l.Close()
		wait()
		for _, err := range errs {
			if errors.Is(err, events.ErrClosed) {
				closedUnstored++
			}
		}
		requireOutcomes(t, setup, ids, errs, nil)
	}
	t.Logf("%d appends refused by the closed log", closedUnstored)
}

// A read whose request reached the server just before the connection was
// lost is asked again once reconnected, rather than failing after the
// publish timeout: a keyed submit repeated during a server restart, which
// reads the job its key made, failed with "no answer within 5s".
func TestAReadAsksAgainWhenAnAnswerIsLost(t *testing.T) {
	ctx := context.Background()
	l, env := openLog(t, events.Config{})
	_, err := l.Append(ctx, mustEvent(t, "lost-answer", events.TypeSubmitted), 0)
	require.NoError(t, err)
	proxy := natstest.NewProxy(t, env.URL)
	nc, err := nats.Connect(proxy.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	reader, err := events.Attach(js, events.Config{PublishTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(reader.Close)

	for _, read := range []struct {
		name string
		fn   func() error
	}{
		{"load", func() error {
			recs, err := reader.Load(ctx, "lost-answer")
			if err == nil && len(recs) != 1 {
				err = fmt.Errorf("%d events, expected 1", len(recs))
			}
			return err
		}},
		{"last sequence", func() error {
			seq, err := reader.LastSeq(ctx, "lost-answer")
			if err == nil && seq == 0 {
				err = errors.New("no last sequence")
			}
			return err
		}},
	} {
		t.Run(read.name, func(t *testing.T) {
			require.NoError(t, read.fn()) // the reader's inbox is subscribed
			proxy.Stall()
			done := make(chan error, 1)
			go func() { done <- read.fn() }()
			natstest.Eventually(t, 5*time.Second, proxy.Holding, "the read's request on its way")
			proxy.Cut() // and the request with it
			proxy.Restore()
			require.NoError(t, <-done)
		})
	}
}

// A log attached where no jetjob server provisioned one, or on a NATS
// without JetStream, says so with ErrNoLog from Follow (the README's Go
// snippet calls it first) and from an append, at once: with no JetStream to
// take it, the append was not stored, and no leader election is coming.
func TestNoLogSaysSoFromFollowAndAppend(t *testing.T) {
	for name, jetStream := range map[string]bool{"no stream": true, "no JetStream": false} {
		t.Run(name, func(t *testing.T) {
			env := natstest.StartStock(t, func(o *server.Options) { o.JetStream = jetStream })
			l, err := events.Attach(env.JS, events.Config{})
			require.NoError(t, err)
			t.Cleanup(l.Close)
			ctx := context.Background()
			require.ErrorIs(t, l.Follow(ctx), events.ErrNoLog)
			start := time.Now()
			_, err = l.Append(ctx, mustEvent(t, "job1", events.TypeSubmitted), 0)
			require.ErrorIs(t, err, events.ErrNoLog)
			require.NotErrorIs(t, err, events.ErrOutcomeUnknown)
			require.Less(t, time.Since(start), 5*time.Second, "an append with no JetStream waited as for an election")
			if !jetStream {
				// Provisioning there says why it cannot, as a server
				// started with --nats on it does.
				_, err = events.Open(ctx, env.JS, events.Config{})
				require.ErrorContains(t, err, "no JetStream on this NATS")
				_, err = events.OpenHeartbeats(ctx, env.JS)
				require.ErrorContains(t, err, "no JetStream on this NATS")
			}
		})
	}
}

// A stream's subjects are where its jobs' histories are. Open with another
// subject prefix on an existing stream rewrote them: every history was left
// on subjects the stream no longer takes, and every other log's appends
// went unanswered. It is refused, and the stream left as it was.
func TestOpenWithAnotherPrefixLeavesTheStreamAlone(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	ev, err := events.New("job-1", events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 1})
	require.NoError(t, err)
	_, err = lg.Append(ctx, ev, 0)
	require.NoError(t, err)

	_, err = events.Open(ctx, env.JS, events.Config{SubjectPrefix: "other."})
	require.ErrorIs(t, err, events.ErrInvalidConfig)
	s, err := env.JS.Stream(ctx, events.StreamDefault)
	require.NoError(t, err)
	require.Equal(t, []string{events.SubjectPrefixDefault + ">"}, s.CachedInfo().Config.Subjects)
	recs, err := lg.Load(ctx, "job-1")
	require.NoError(t, err)
	require.Len(t, recs, 1)
}
