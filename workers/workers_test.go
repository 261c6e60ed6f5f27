package workers

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

type fixture struct {
	t   *testing.T
	env *natstest.Env
	log *events.Log
	m   *statemachine.Machine
	enq *Enqueuer
	// proxiedLog configures the log of proxiedPool's pool.
	proxiedLog events.Config
}

func newFixture(t *testing.T, startEnqueuer bool) *fixture {
	t.Helper()
	return fixtureOn(t, natstest.Start(t), startEnqueuer)
}

// fixtureOn builds the fixture on a running server, as a process started
// after it would.
func fixtureOn(t *testing.T, env *natstest.Env, startEnqueuer bool) *fixture {
	t.Helper()
	ctx := context.Background()
	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	require.NoError(t, EnsureTopology(ctx, env.JS))
	_, err = events.OpenHeartbeats(ctx, env.JS)
	require.NoError(t, err)
	enq, err := NewEnqueuer(env.JS, m, EnqueuerConfig{})
	require.NoError(t, err)
	f := &fixture{t: t, env: env, log: lg, m: m, enq: enq}
	if startEnqueuer {
		require.NoError(t, enq.Start(ctx))
		t.Cleanup(enq.Stop)
	}
	return f
}

func (f *fixture) pool(cfg PoolConfig, h Handler, before ...func(*Pool)) *Pool {
	f.t.Helper()
	if cfg.BackupPoll == 0 {
		cfg.BackupPoll = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptestLogger(f.t)
	}
	p, err := NewPool(f.env.JS, f.m, cfg, h)
	require.NoError(f.t, err)
	for _, fn := range before {
		fn(p)
	}
	require.NoError(f.t, p.Start(context.Background()))
	f.t.Cleanup(func() { _ = p.Stop(context.Background()) })
	return p
}

func (f *fixture) submit(p statemachine.SubmitParams) statemachine.Job {
	f.t.Helper()
	j, _, err := f.m.Submit(context.Background(), p)
	require.NoError(f.t, err)
	return j
}

func (f *fixture) waitState(id string, want statemachine.State) statemachine.Job {
	f.t.Helper()
	var j statemachine.Job
	natstest.Eventually(f.t, 10*time.Second, func() bool {
		var err error
		j, err = f.m.Load(context.Background(), id)
		return err == nil && j.State == want
	}, "job %s %s (is %s)", id, want, func() statemachine.State { return j.State }())
	return j
}

func (f *fixture) types(id string) []string {
	f.t.Helper()
	recs, err := f.log.Load(context.Background(), id)
	require.NoError(f.t, err)
	var out []string
	for _, r := range recs {
		out = append(out, r.Type)
	}
	return out
}

func noop(context.Context, *Job) error { return nil }

// waitLines waits until the job's log holds n lines of the stream and
// returns them.
func (f *fixture) waitLines(jobID, stream string, n int) []LogLine {
	f.t.Helper()
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(f.t, err)
	var lines []LogLine
	natstest.Eventually(f.t, 10*time.Second, func() bool {
		all, err := logs.Read(context.Background(), jobID)
		lines = lines[:0]
		for _, l := range all {
			if l.Stream == stream {
				lines = append(lines, l)
			}
		}
		return err == nil && len(lines) == n
	}, "%d %s lines of job %s", n, stream, jobID)
	return lines
}

func TestCanceledPendingJobIsNeverAcquired(t *testing.T) {
	f := newFixture(t, true)
	canceled := f.submit(statemachine.SubmitParams{Type: "build"})
	_, err := f.m.Cancel(context.Background(), canceled.ID, "outdated")
	require.NoError(t, err)
	// Wait until the enqueuer has queued it, so that a worker meets its message.
	later := f.submit(statemachine.SubmitParams{Type: "build"})
	var mu sync.Mutex
	ran := map[string]bool{}
	f.pool(PoolConfig{Types: []string{"build"}}, func(_ context.Context, j *Job) error {
		mu.Lock()
		ran[j.ID] = true
		mu.Unlock()
		return nil
	})
	f.waitState(later.ID, statemachine.StateSucceeded)
	mu.Lock()
	require.False(t, ran[canceled.ID])
	mu.Unlock()
	require.Equal(t, []string{events.TypeSubmitted, events.TypeCanceled}, f.types(canceled.ID))
}

func TestTagContainment(t *testing.T) {
	f := newFixture(t, true)
	var mu sync.Mutex
	ranOn := map[string]string{}
	record := func(name string) Handler {
		return func(_ context.Context, j *Job) error {
			mu.Lock()
			ranOn[j.ID] = name
			mu.Unlock()
			return nil
		}
	}
	// The narrow pool starts first and idles: it must never take the job.
	f.pool(PoolConfig{Types: []string{"provision"}, Tags: map[string]string{"scope": "organization"}}, record("narrow"))
	job := f.submit(statemachine.SubmitParams{Type: "provision", Tags: map[string]string{"scope": "organization", "env": "gpu"}})
	untagged := f.submit(statemachine.SubmitParams{Type: "provision"})
	f.waitState(untagged.ID, statemachine.StateSucceeded)
	j, err := f.m.Load(context.Background(), job.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, j.State)

	f.pool(PoolConfig{Types: []string{"provision"}, Tags: map[string]string{"scope": "organization", "env": "gpu", "zone": "a"}}, record("wide"))
	f.waitState(job.ID, statemachine.StateSucceeded)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "wide", ranOn[job.ID])
	require.Equal(t, "narrow", ranOn[untagged.ID])
}

func TestManyJobsOverlappingTagSetsRunExactlyOnce(t *testing.T) {
	f := newFixture(t, true)
	const jobs = 2000
	pools := []map[string]string{
		{"a": "1", "b": "1", "c": "1"},
		{"a": "1", "b": "1"},
		{"a": "1", "c": "1", "d": "1"},
		{"b": "1", "c": "1", "d": "1", "a": "1"},
	}
	var mu sync.Mutex
	runs := map[string]int{}
	bad := []string{}
	jobTags := map[string]map[string]string{}
	for i, tags := range pools {
		f.pool(PoolConfig{Types: []string{"t"}, Tags: tags, Concurrency: 20, WorkerID: fmt.Sprint("pool", i)}, func(_ context.Context, j *Job) error {
			mu.Lock()
			defer mu.Unlock()
			runs[j.ID]++
			if !subsetOf(j.Tags, tags) {
				bad = append(bad, j.ID)
			}
			return nil
		})
	}
	// Every subset of {a,b,c,d}: each is contained in the widest pool,
	// some in several.
	var sets []map[string]string
	keys := []string{"a", "b", "c", "d"}
	for mask := 0; mask < 16; mask++ {
		tags := map[string]string{}
		for i, k := range keys {
			if mask&(1<<i) != 0 {
				tags[k] = "1"
			}
		}
		sets = append(sets, tags)
	}
	params := make([]statemachine.SubmitParams, jobs)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t", Tags: sets[i%len(sets)]}
	}
	start := time.Now()
	results := f.m.SubmitMany(context.Background(), params)
	ids := make([]string, 0, jobs)
	for _, r := range results {
		require.NoError(t, r.Err)
		ids = append(ids, r.Job.ID)
		jobTags[r.Job.ID] = r.Job.Tags
	}
	natstest.Eventually(t, 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs) == jobs
	}, "all %d jobs ran", jobs)
	t.Logf("%d jobs over %d tag sets on %d pools: %.0f jobs/s", jobs, len(sets), len(pools), float64(jobs)/time.Since(start).Seconds())
	for _, id := range ids {
		f.waitState(id, statemachine.StateSucceeded)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, bad)
	for id, n := range runs {
		require.Equal(t, 1, n, "job %s ran %d times", id, n)
	}
}

func TestIdlePoolStartsNewJobQuickly(t *testing.T) {
	f := newFixture(t, true)
	started := make(chan time.Time, 1)
	f.pool(PoolConfig{Types: []string{"fast"}, BackupPoll: time.Minute}, func(_ context.Context, j *Job) error {
		started <- time.Now()
		return nil
	})
	// A first job registers the tag set; the pool then idles on wake-ups alone.
	f.submit(statemachine.SubmitParams{Type: "fast"})
	<-started
	var lat []time.Duration
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		f.submit(statemachine.SubmitParams{Type: "fast"})
		select {
		case s := <-started:
			lat = append(lat, s.Sub(t0))
		case <-time.After(10 * time.Second):
			t.Fatal("job not started within 10s: the wake-up was lost")
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("submit -> handler start: median %s, max %s", lat[len(lat)/2], lat[len(lat)-1])
}

// An idle pool asks each queue once per backup poll: the quick second
// looks at an empty queue follow a wake-up only, which can outrun the
// consumer's count of what it holds.
func TestIdlePoolAsksEachQueueOncePerBackupPoll(t *testing.T) {
	f := newFixture(t, true)
	asks := make(chan time.Time, 64)
	sub, err := f.env.NC.Subscribe("$JS.API.CONSUMER.MSG.NEXT.>", func(m *nats.Msg) {
		if strings.Contains(m.Subject, ".JJ_QUEUE_") {
			select {
			case asks <- time.Now():
			default:
			}
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	const poll = 500 * time.Millisecond
	done := make(chan struct{}, 1)
	f.pool(PoolConfig{Types: []string{"idle"}, BackupPoll: poll}, func(context.Context, *Job) error {
		done <- struct{}{}
		return nil
	})
	f.submit(statemachine.SubmitParams{Type: "idle"})
	<-done
	// The asks around the job (its wake-up may come late, and be looked
	// at again a few times within 131 ms) end in a quiet spell longer than
	// that; after it only backup polls ask.
	deadline := time.Now().Add(10 * time.Second)
	for quiet := false; !quiet; {
		select {
		case <-asks:
			require.True(t, time.Now().Before(deadline), "no quiet spell in 10 s")
		case <-time.After(300 * time.Millisecond):
			quiet = true
		}
	}
	var times []time.Time
	for len(times) < 4 {
		select {
		case at := <-asks:
			times = append(times, at)
		case <-time.After(10 * time.Second):
			t.Fatalf("the pool asked %d times in 10 s with a backup poll every %s", len(times), poll)
		}
	}
	for i := 1; i < len(times); i++ {
		require.Greater(t, times[i].Sub(times[i-1]), poll/2, "asks %d and %d of an idle queue", i-1, i)
	}
}

func TestCancelRunningJob(t *testing.T) {
	f := newFixture(t, true)
	running := make(chan struct{})
	causes := make(chan error, 1)
	f.pool(PoolConfig{Types: []string{"long"}}, func(ctx context.Context, j *Job) error {
		close(running)
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return ctx.Err()
	})
	j := f.submit(statemachine.SubmitParams{Type: "long"})
	<-running
	got, err := f.m.Cancel(context.Background(), j.ID, "no longer needed")
	require.NoError(t, err)
	require.Equal(t, statemachine.StateCanceling, got.State)
	select {
	case c := <-causes:
		require.ErrorIs(t, c, ErrCanceled)
	case <-time.After(2 * time.Second):
		t.Fatal("handler context not canceled within 2s")
	}
	done := f.waitState(j.ID, statemachine.StateCanceled)
	require.Equal(t, "no longer needed", done.CancelReason)
}

func TestFailedAttemptKeepsErrorAndLogs(t *testing.T) {
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"flaky"}}, func(_ context.Context, j *Job) error {
		j.Log("first line")
		j.Logf("attempt %d", j.Attempt)
		return NoRetry(&CodedError{Code: "bad_input", Err: errors.New("input rejected")})
	})
	j := f.submit(statemachine.SubmitParams{Type: "flaky", MaxAttempts: 3})
	done := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, "input rejected", done.Error)
	require.Equal(t, "bad_input", done.ErrorCode)
	require.Equal(t, 1, done.Attempt)
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		lines, err := logs.Read(context.Background(), j.ID)
		return err == nil && len(lines) == 2 && lines[0].Line == "first line" && lines[1].Line == "attempt 1"
	}, "two log lines")
	// A reader left on the stream would cost every later purge a recount
	// for five minutes (nats.go deletes the consumers a reading replaced
	// in the background, within moments).
	natstest.Eventually(t, 5*time.Second, func() bool {
		st, err := f.env.JS.Stream(context.Background(), LogsStream)
		return err == nil && st.CachedInfo().State.Consumers == 0
	}, "readings leave no consumer")
}

// brokenError is an error whose Error method panics when the pointer is nil,
// as a handler's own error type can.
type brokenError struct{ msg string }

func (e *brokenError) Error() string { return e.msg }

// A handler's error whose message cannot be read fails its attempt; it once
// panicked in the goroutine recording the result and took the worker down.
func TestAnErrorWithoutAMessageFailsTheAttempt(t *testing.T) {
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"odd"}}, func(_ context.Context, j *Job) error {
		switch j.Meta["returns"] {
		case "no-retry-nil":
			return NoRetry(nil)
		case "coded-nil":
			return NoRetry(&CodedError{Code: "gone"})
		default:
			var nilPtr *brokenError
			return NoRetry(nilPtr)
		}
	})
	for returns, want := range map[string]struct{ msg, code string }{
		"no-retry-nil": {"failed without retry", ""},
		"coded-nil":    {"failed with code gone", "gone"},
		"nil-pointer":  {"whose Error method panicked", ""},
	} {
		j := f.submit(statemachine.SubmitParams{Type: "odd", MaxAttempts: 3, Meta: map[string]string{"returns": returns}})
		done := f.waitState(j.ID, statemachine.StateFailed)
		require.Contains(t, done.Error, want.msg, returns)
		require.Equal(t, want.code, done.ErrorCode, returns)
		require.Equal(t, 1, done.Attempt, returns)
	}
}

// A typed handler gets the payload decoded and the attempt's numbers; the
// result it sets is recorded with the success; a payload it cannot decode
// fails the job at once; a result too large is refused and not recorded.
func TestATypedHandlersResultIsRecorded(t *testing.T) {
	type args struct {
		N int `json:"n"`
	}
	f := newFixture(t, true)
	refused := make(chan error, 1)
	kept := make(chan *Job, 1)
	f.pool(PoolConfig{Types: []string{"typed"}}, JSONHandler(func(_ context.Context, j *Job, a args) error {
		if a.N == 0 {
			kept <- j
			return nil
		}
		if a.N < 0 {
			refused <- j.SetResult(strings.Repeat("x", ResultLimit))
			return nil
		}
		return j.SetResult(map[string]int{"twice": 2 * a.N, "priority": j.Priority, "max_attempts": j.MaxAttempts})
	}))
	j := f.submit(statemachine.SubmitParams{Type: "typed", Priority: 3, MaxAttempts: 4, Payload: []byte(`{"n":21}`)})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.JSONEq(t, `{"twice":42,"priority":3,"max_attempts":4}`, string(done.Result))

	bad := f.submit(statemachine.SubmitParams{Type: "typed", MaxAttempts: 3, Payload: []byte(`{"n":"many"}`)})
	failed := f.waitState(bad.ID, statemachine.StateFailed)
	require.Equal(t, 1, failed.Attempt, "no retry would decode it")
	require.Contains(t, failed.Error, "decode the payload")

	big := f.submit(statemachine.SubmitParams{Type: "typed", Payload: []byte(`{"n":-1}`)})
	require.ErrorIs(t, <-refused, statemachine.ErrInvalid)
	succeeded := f.waitState(big.ID, statemachine.StateSucceeded)
	require.Empty(t, succeeded.Result)

	// A result set after the handler returned is refused, not dropped
	// unsaid.
	late := f.submit(statemachine.SubmitParams{Type: "typed", Payload: []byte(`{"n":0}`)})
	ended := f.waitState(late.ID, statemachine.StateSucceeded)
	require.ErrorIs(t, (<-kept).SetResult("too late"), ErrAttemptOver)
	require.Empty(t, ended.Result)
}

// The cause a handler sees when its attempt lost the job is the error a
// refused report matches.
func TestLeaseLostIsOneError(t *testing.T) {
	require.ErrorIs(t, ErrLeaseLost, statemachine.ErrLeaseLost)
}

// A handler that panics fails its attempt, and where it panicked is in the
// job's log and the worker's.
func TestAPanicsStackIsInTheJobsLog(t *testing.T) {
	f := newFixture(t, true)
	logger, said := observedLogger(t)
	f.pool(PoolConfig{Types: []string{"panics"}, Logger: logger}, func(context.Context, *Job) error {
		panicInHandler()
		return nil
	})
	j := f.submit(statemachine.SubmitParams{Type: "panics", MaxAttempts: 1})
	done := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, "handler panicked: the stack says where", done.Error)
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	var text strings.Builder
	natstest.Eventually(t, 10*time.Second, func() bool {
		lines, err := logs.Read(context.Background(), j.ID)
		require.NoError(t, err)
		text.Reset()
		for _, l := range lines {
			require.Equal(t, StreamStderr, l.Stream)
			text.WriteString(l.Line + "\n")
		}
		return strings.Contains(text.String(), "panicInHandler")
	}, "the stack in the job's log")
	require.True(t, strings.HasPrefix(text.String(), "handler panicked: the stack says where\n"), text.String())
	require.Equal(t, 1, said.FilterMessage("handler panicked").FilterField(zap.String("job", j.ID)).Len())
}

//go:noinline
func panicInHandler() { panic("the stack says where") }

// A handler that calls runtime.Goexit, as t.FailNow does, returns nothing
// and panics with nothing: its attempt fails and is retried, where it used
// to stay running until the hang detector failed it.
func TestAHandlerThatExitsItsGoroutineFailsItsAttempt(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	logger, said := observedLogger(t)
	var attempts atomic.Int32
	f.pool(PoolConfig{Types: []string{"exits"}, Concurrency: 1, Logger: logger}, func(_ context.Context, j *Job) error {
		if attempts.Add(1) == 1 {
			runtime.Goexit()
		}
		return j.SetResult("second attempt")
	})
	j := f.submit(statemachine.SubmitParams{Type: "exits", MaxAttempts: 2, Backoff: statemachine.BackoffConfig{Base: time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 2, done.Attempt)
	require.JSONEq(t, `"second attempt"`, string(done.Result))
	require.Equal(t, []string{events.TypeSubmitted, events.TypeAcquired, events.TypeAttemptFailed, events.TypePromoted,
		events.TypeAcquired, events.TypeSucceeded}, f.types(j.ID))
	require.Equal(t, 1, said.FilterMessage("handler exited without returning").FilterField(zap.String("job", j.ID)).Len())

	last := f.submit(statemachine.SubmitParams{Type: "exits", MaxAttempts: 1})
	attempts.Store(0)
	failed := f.waitState(last.ID, statemachine.StateFailed)
	require.Equal(t, ErrHandlerExited.Error(), failed.Error)
}

// Following a job's log rides out a clean server restart (it used to end
// with "server shutdown"), each line passed once.
func TestFollowRidesOutAServerRestart(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, false)
	logs, err := AttachLogs(ctx, f.env.JS)
	require.NoError(t, err)
	line := func(s string) {
		t.Helper()
		require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Stream: StreamStdout, Line: s}))
	}
	line("before")
	var mu sync.Mutex
	var got []string
	var finished atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- logs.Follow(ctx, "job-1", func(context.Context) bool { return finished.Load() }, func(l LogLine) {
			mu.Lock()
			got = append(got, l.Line)
			mu.Unlock()
		})
	}()
	seen := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= n }
	}
	natstest.Eventually(t, 5*time.Second, seen(1), "the first line")
	f.env.Bounce(t)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := f.env.JS.Stream(ctx, LogsStream)
		return err == nil
	}, "the server back")
	line("after")
	natstest.Eventually(t, 10*time.Second, seen(2), "the line after the restart")
	finished.Store(true)
	require.NoError(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"before", "after"}, got)
}

// A follow that its ctx ends says so: it returned nil, which a caller
// takes for every line of a finished job.
func TestFollowCutShortByItsContextSaysSo(t *testing.T) {
	f := newFixture(t, false)
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	require.NoError(t, logs.Append(context.Background(), "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Stream: StreamStdout, Line: "one"}))
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- logs.Follow(ctx, "job-1", func(context.Context) bool { return false }, func(l LogLine) { got <- l.Line })
	}()
	require.Equal(t, "one", <-got)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

// Progress outside 0-1 is clamped and NaN keeps only the message: JSON has
// no NaN or infinity, and the line would be lost.
func TestProgressOfAnyFractionIsRecorded(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"p"}}, func(_ context.Context, j *Job) error {
		j.Progress(math.NaN(), "nan")
		j.Progress(math.Inf(1), "inf")
		j.Progress(-3, "below")
		j.Progress(0.5, "half")
		return nil
	})
	j := f.submit(statemachine.SubmitParams{Type: "p"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	lines := f.waitLines(j.ID, StreamProgress, 4)
	require.Nil(t, lines[0].Progress)
	require.Equal(t, "nan", lines[0].Line)
	for i, want := range []float64{1, 0, 0.5} {
		require.NotNil(t, lines[i+1].Progress)
		require.Equal(t, want, *lines[i+1].Progress)
	}
}

// A handler that hangs past the pool's JobTimeout has its context canceled
// with ErrJobTimeout, and its attempt fails with code timeout and is
// retried; one that returns nil when told still succeeds.
func TestJobTimeoutFailsAHungAttempt(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	var mu sync.Mutex
	causes := map[int]error{}
	f.pool(PoolConfig{Types: []string{"slow"}, JobTimeout: 100 * time.Millisecond}, func(ctx context.Context, j *Job) error {
		<-ctx.Done()
		mu.Lock()
		causes[j.Attempt] = context.Cause(ctx)
		mu.Unlock()
		if j.Attempt == 2 {
			return nil // finished just as it was told to stop
		}
		return ctx.Err()
	})
	j := f.submit(statemachine.SubmitParams{Type: "slow", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: time.Millisecond, Cap: time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 2, done.Attempt)
	require.Len(t, done.Errors, 1)
	require.Equal(t, ErrorCodeTimeout, done.Errors[0].Code)
	require.Contains(t, done.Errors[0].Error, "job timeout of 100ms")
	mu.Lock()
	defer mu.Unlock()
	require.ErrorIs(t, causes[1], ErrJobTimeout)
	require.ErrorIs(t, causes[2], ErrJobTimeout)
}

// A JobTimeout of the longest duration, given for "no timeout", is none.
// Before, the wait after which a handler past its timeout is failed
// without it (the timeout, ShutdownGrace and a margin) wrapped to a
// negative, and every attempt was failed as it started: "ran past the job
// timeout of 2562047h47m16.854775807s". `jetjob worker --timeout
// 2562047h47m16s` did the same.
func TestJobTimeoutOfTheLongestDurationIsNoTimeout(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"endless"}, JobTimeout: math.MaxInt64}, func(ctx context.Context, j *Job) error {
		select { // a little work, not cut short
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(300 * time.Millisecond):
			return nil
		}
	})
	j := f.submit(statemachine.SubmitParams{Type: "endless", MaxAttempts: 1})
	var done statemachine.Job
	natstest.Eventually(t, 10*time.Second, func() bool {
		var err error
		done, err = f.m.Load(context.Background(), j.ID)
		return err == nil && done.State.Finished()
	}, "job %s finished", j.ID)
	require.Equal(t, statemachine.StateSucceeded, done.State, "errors: %+v", done.Errors)
}

// A handler that ignores its context past the timeout and the grace after
// it has its attempt failed without waiting for it; its late result is
// dropped.
func TestJobTimeoutFailsAHandlerThatIgnoresIt(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	release := make(chan struct{})
	returned := make(chan struct{})
	results := make(chan Result, 2)
	pool := f.pool(PoolConfig{Types: []string{"deaf"}, JobTimeout: 100 * time.Millisecond, ShutdownGrace: 200 * time.Millisecond,
		OnResult: func(r Result) { results <- r }},
		func(ctx context.Context, j *Job) error {
			defer close(returned)
			<-release
			return nil
		})
	// Registered after the pool's, so it runs before the pool's Stop: a
	// failed test must not leave Stop waiting for the handler forever.
	t.Cleanup(func() { close(release) })
	j := f.submit(statemachine.SubmitParams{Type: "deaf", MaxAttempts: 1})
	failed := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, ErrorCodeTimeout, failed.ErrorCode)
	require.Contains(t, failed.Error, "did not stop within 2.2s")
	select {
	case r := <-results:
		require.ErrorIs(t, r.Err, ErrJobTimeout)
		require.Equal(t, statemachine.StateFailed, r.Job.State)
	case <-time.After(10 * time.Second):
		t.Fatal("the failure was not passed to OnResult within 10s")
	}
	select {
	case <-returned:
		t.Fatal("the handler returned before it was released")
	default:
	}

	release <- struct{}{}
	<-returned
	// Stop waits for the handler's result to be recorded, or refused: its
	// success came too late, and the job stays failed.
	require.NoError(t, pool.Stop(context.Background()))
	seq, err := f.log.LastSeq(context.Background(), j.ID)
	require.NoError(t, err)
	require.Equal(t, failed.Version, seq, "nothing appended after the failure")
	require.Empty(t, results, "the refused success was passed on too")
}

// A handler whose attempt the pool failed past its timeout is not waited
// for by Stop: its job's outcome is recorded, and the handler may never
// return (a call that ignores its context). Stop waited for it, forever
// with a ctx without deadline, and with one said ErrNotRecorded, naming
// the failed job as one that stays running.
func TestStopDoesNotWaitForAHandlerItsTimeoutFailed(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	release := make(chan struct{})
	results := make(chan Result, 2)
	lateResult := make(chan struct{})
	pool := f.pool(PoolConfig{Types: []string{"deaf"}, JobTimeout: 100 * time.Millisecond, ShutdownGrace: 100 * time.Millisecond,
		HeartbeatInterval: 20 * time.Millisecond, OnResult: func(r Result) { results <- r }},
		func(ctx context.Context, j *Job) error {
			<-release
			return nil
		}, func(p *Pool) {
			record := p.recordResult
			p.recordResult = func(ctx context.Context, held statemachine.Job, end attemptEnd) {
				record(ctx, held, end)
				close(lateResult)
			}
		})
	// The handler returns, and its late result is refused, before the
	// test ends and its NATS with it: its goroutine outlives Stop, and
	// its "report result" line, logged after the test by the test's
	// logger, panicked the package ("Log in goroutine after ... has
	// completed") under -count 2.
	t.Cleanup(func() {
		close(release)
		select {
		case <-lateResult:
		case <-time.After(10 * time.Second):
			t.Error("the released handler's late result was not handled within 10s")
		}
	})
	j := f.submit(statemachine.SubmitParams{Type: "deaf", MaxAttempts: 1})
	f.waitState(j.ID, statemachine.StateFailed)
	select {
	case r := <-results:
		require.ErrorIs(t, r.Err, ErrJobTimeout)
	case <-time.After(10 * time.Second):
		t.Fatal("the failure was not passed to OnResult within 10s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pool.Stop(ctx), "every outcome was recorded")
	require.NoError(t, ctx.Err(), "Stop waited for the handler its timeout failed")

	// Nor does anything beat for the failed attempt while its handler runs
	// on: ten beat intervals, and the last beat stays as it was.
	hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
	require.NoError(t, err)
	last := func() events.Beat {
		b, _, err := hb.Last(context.Background(), j.ID)
		require.NoError(t, err)
		return b
	}
	before := last()
	time.Sleep(200 * time.Millisecond) // ten beat intervals: nothing to wait on for a beat that must not come
	require.Equal(t, before, last(), "the failed attempt still beats")
}

// A job canceled while its handler ignores both the cancel and the
// timeout is finished as canceled once the grace after the timeout is over.
func TestJobTimeoutFinishesACancelTheHandlerIgnored(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	release := make(chan struct{})
	running := make(chan struct{})
	f.pool(PoolConfig{Types: []string{"deaf"}, JobTimeout: 200 * time.Millisecond, ShutdownGrace: 200 * time.Millisecond},
		func(ctx context.Context, j *Job) error {
			close(running)
			<-release
			return nil
		})
	t.Cleanup(func() { close(release) }) // before the pool's Stop
	j := f.submit(statemachine.SubmitParams{Type: "deaf", MaxAttempts: 1})
	<-running
	_, err := f.m.Cancel(context.Background(), j.ID, "")
	require.NoError(t, err)
	f.waitState(j.ID, statemachine.StateCanceled)
}

// A job whose submitted event nearly fills the server's max_payload runs
// every attempt however long its earlier attempts' errors were: its queue
// message leaves them out, and each is cut to ErrorTextLimit.
func TestRetriesOfAJobNearTheMaxPayloadAreQueued(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := fixtureOn(t, natstest.StartStock(t, func(o *server.Options) { o.MaxPayload = 64 << 10 }), true)
	f.pool(PoolConfig{Types: []string{"big"}}, func(context.Context, *Job) error {
		return errors.New(strings.Repeat("e", 3*statemachine.ErrorTextLimit))
	})
	payload := bytes.Repeat([]byte("p"), 3*(f.log.MaxEventSize()-1024)/4)
	j := f.submit(statemachine.SubmitParams{Type: "big", Payload: payload, MaxAttempts: 4,
		Backoff: statemachine.BackoffConfig{Base: 20 * time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, 4, done.Attempt)
	require.Len(t, done.Errors, 4)
	require.Less(t, len(done.Error), statemachine.ErrorTextLimit+64)
	require.Contains(t, done.Error, fmt.Sprintf("(%d more bytes cut)", 2*statemachine.ErrorTextLimit))
}

func TestRetryAfterBackoff(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	var mu sync.Mutex
	var starts []time.Time
	f.pool(PoolConfig{Types: []string{"retry"}}, func(_ context.Context, j *Job) error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		return errors.New("try again")
	})
	j := f.submit(statemachine.SubmitParams{Type: "retry", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: 200 * time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, 3, done.Attempt)
	require.Len(t, done.Errors, 3)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, starts, 3)
	// Equal jitter: the first retry waits at least 100 ms, the second at least 200 ms.
	require.GreaterOrEqual(t, starts[1].Sub(starts[0]), 100*time.Millisecond)
	require.GreaterOrEqual(t, starts[2].Sub(starts[1]), 200*time.Millisecond)
}

func TestScheduledJobWaitsForItsTime(t *testing.T) {
	f := newFixture(t, true)
	started := make(chan time.Time, 1)
	f.pool(PoolConfig{Types: []string{"later"}}, func(_ context.Context, j *Job) error {
		started <- time.Now()
		return nil
	})
	runAt := time.Now().Add(1500 * time.Millisecond)
	j := f.submit(statemachine.SubmitParams{Type: "later", RunAt: &runAt})
	require.Equal(t, statemachine.StateScheduled, j.State)
	select {
	case s := <-started:
		require.False(t, s.Before(runAt), "started %s before its run-at", runAt.Sub(s))
		require.Less(t, s.Sub(runAt), 2*time.Second)
	case <-time.After(10 * time.Second):
		t.Fatal("scheduled job never started")
	}
}

func TestStaleWorkerCannotReport(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	j := f.submit(statemachine.SubmitParams{Type: "t", MaxAttempts: 2})
	held, err := f.m.Acquire(ctx, j.ID, "w1")
	require.NoError(t, err)
	// The server declares the attempt dead; the job is retried.
	_, err = f.m.FailStale(ctx, j.ID, held.Lease, statemachine.FailParams{Error: "hung", Code: "hung"})
	require.NoError(t, err)
	_, err = f.m.Succeed(ctx, held, nil)
	require.ErrorIs(t, err, statemachine.ErrLeaseLost)
	require.NotContains(t, f.types(j.ID), events.TypeSucceeded)
}

func TestStopReleasesJobsPastTheGrace(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	running := make(chan struct{}, 1)
	p1, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"slow"}, ShutdownGrace: 100 * time.Millisecond}, func(ctx context.Context, j *Job) error {
		running <- struct{}{}
		<-ctx.Done()
		return context.Cause(ctx)
	})
	require.NoError(t, err)
	require.NoError(t, p1.Start(context.Background()))
	j := f.submit(statemachine.SubmitParams{Type: "slow", MaxAttempts: 1})
	<-running
	require.NoError(t, p1.Stop(context.Background()))
	require.NoError(t, p1.Stop(context.Background()))
	released := f.waitState(j.ID, statemachine.StatePending)
	require.Equal(t, 0, released.Attempt)
	f.pool(PoolConfig{Types: []string{"slow"}}, noop)
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 1, done.Attempt)
}

// A Stop whose context ends before the grace does stops the handlers in time
// to hand their jobs back before it returns: a job left running would be
// failed as hung later, at the cost of an attempt.
func TestStopWithAShortDeadlineHandsJobsBackBeforeItReturns(t *testing.T) {
	f := newFixture(t, true)
	var started sync.WaitGroup
	started.Add(4)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"slow"}, Concurrency: 4}, func(ctx context.Context, j *Job) error {
		started.Done()
		<-ctx.Done()
		return context.Cause(ctx)
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	var jobs []statemachine.Job
	for range 4 {
		jobs = append(jobs, f.submit(statemachine.SubmitParams{Type: "slow", MaxAttempts: 1}))
	}
	started.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	require.NoError(t, p.Stop(ctx))
	for _, j := range jobs {
		cur, err := f.m.Load(context.Background(), j.ID)
		require.NoError(t, err)
		require.Equal(t, statemachine.StatePending, cur.State, "job %s handed back when Stop returned", j.ID)
		require.Zero(t, cur.Attempt)
	}
}

// Heartbeats start within the heartbeat interval even when the watch for
// cancels waits longer: the detector would fail a job with no beat as hung.
func TestHeartbeatsStartBeforeALongCancelWatchDelay(t *testing.T) {
	f := newFixture(t, true)
	hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
	require.NoError(t, err)
	release := make(chan struct{})
	defer close(release)
	f.pool(PoolConfig{Types: []string{"long"}, HeartbeatInterval: 50 * time.Millisecond, CancelWatchDelay: time.Hour},
		func(ctx context.Context, j *Job) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		})
	j := f.submit(statemachine.SubmitParams{Type: "long"})
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, ok, err := hb.Last(context.Background(), j.ID)
		return err == nil && ok
	}, "a heartbeat for job %s", j.ID)
}

// A handler that finishes its work after the shutdown grace, ignoring its
// context, succeeded: handing the job back would run it a second time.
func TestStopRecordsASuccessThatCameAfterTheGrace(t *testing.T) {
	f := newFixture(t, true)
	running, finish := make(chan struct{}, 1), make(chan struct{})
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"stubborn"}, ShutdownGrace: 50 * time.Millisecond}, func(ctx context.Context, j *Job) error {
		running <- struct{}{}
		<-ctx.Done()
		<-finish // the work goes on past the cancel
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	j := f.submit(statemachine.SubmitParams{Type: "stubborn"})
	<-running
	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop(context.Background()) }()
	natstest.Eventually(t, 10*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.running) == 1 && p.stopping
	}, "stopping")
	close(finish)
	require.NoError(t, <-stopped)
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 1, done.Attempt)
}

// A pool stopped while it acquires leaves no job running that it never ran:
// each job it took is run, or handed back unrun.
func TestStopWhileAcquiringLeavesNoJobRunningUnrun(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	var ids []string
	for range 400 {
		ids = append(ids, f.submit(statemachine.SubmitParams{Type: "churn", MaxAttempts: 1}).ID)
	}
	var ran sync.Map
	// What OnResult heard, and whether it heard anything after a Stop.
	var mu sync.Mutex
	outcomes := map[string][]statemachine.State{}
	var late atomic.Int64
	for round := 0; round < 6; round++ {
		var n atomic.Int64
		var stopped atomic.Bool
		onResult := func(r Result) {
			if stopped.Load() {
				late.Add(1)
			}
			mu.Lock()
			outcomes[r.Job.ID] = append(outcomes[r.Job.ID], r.Job.State)
			mu.Unlock()
		}
		p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"churn"}, Concurrency: 64, OnResult: onResult}, func(_ context.Context, j *Job) error {
			ran.Store(j.ID, true)
			n.Add(1)
			return nil
		})
		require.NoError(t, err)
		require.NoError(t, p.Start(context.Background()))
		natstest.Eventually(t, 10*time.Second, func() bool { return n.Load() >= 20 }, "20 jobs run")
		require.NoError(t, p.Stop(context.Background()))
		stopped.Store(true)
	}
	require.Zero(t, late.Load(), "outcomes passed on after Stop returned")
	for _, id := range ids {
		j, err := f.m.Load(context.Background(), id)
		require.NoError(t, err)
		_, didRun := ran.Load(id)
		heard := outcomes[id]
		switch j.State {
		case statemachine.StateSucceeded:
			require.True(t, didRun, "job %s succeeded without running", id)
			require.NotEmpty(t, heard, "job %s", id)
			require.Equal(t, statemachine.StateSucceeded, heard[len(heard)-1], "job %s: %v", id, heard)
			require.Equal(t, len(heard)-1, slices.Index(heard, statemachine.StateSucceeded), "job %s succeeded twice: %v", id, heard)
		case statemachine.StatePending:
			require.Equal(t, 0, j.Attempt, "job %s", id)
			for _, st := range heard {
				require.Equal(t, statemachine.StatePending, st, "job %s: %v", id, heard)
			}
		default:
			t.Fatalf("job %s is %s after every pool stopped (ran: %v)", id, j.State, didRun)
		}
	}
}

// holdResults makes the pool's results wait for release before they are
// recorded, and counts how many are waiting.
func holdResults(p *Pool) (release func(), waiting *atomic.Int64) {
	gate := make(chan struct{})
	waiting = &atomic.Int64{}
	record := p.recordResult
	p.recordResult = func(ctx context.Context, held statemachine.Job, end attemptEnd) {
		waiting.Add(1)
		<-gate
		record(ctx, held, end)
		waiting.Add(-1)
	}
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }, waiting
}

// heldPool starts a pool of "quick" jobs whose results are held back (see
// holdResults) and submits n of them.
func (f *fixture) heldPool(concurrency, n int, h Handler) (p *Pool, release func(), waiting *atomic.Int64, ids []string) {
	f.t.Helper()
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"quick"}, Concurrency: concurrency, BackupPoll: 100 * time.Millisecond}, h)
	require.NoError(f.t, err)
	release, waiting = holdResults(p)
	require.NoError(f.t, p.Start(context.Background()))
	f.t.Cleanup(func() { _ = p.Stop(context.Background()) })
	f.t.Cleanup(release) // runs before Stop, which waits for the held results
	for range n {
		ids = append(ids, f.submit(statemachine.SubmitParams{Type: "quick", MaxAttempts: 1}).ID)
	}
	return p, release, waiting, ids
}

// A slot takes the next job while the result of the last one is being
// recorded, up to Concurrency results waiting; beyond that the slots wait.
func TestSlotsRunOnWhileResultsAreRecorded(t *testing.T) {
	f := newFixture(t, true)
	var handled atomic.Int64
	p, release, waiting, ids := f.heldPool(2, 6, func(context.Context, *Job) error {
		handled.Add(1)
		return nil
	})
	// Two results wait with their slots freed, two slots wait to hand theirs
	// over, and the other two jobs stay queued.
	natstest.Eventually(t, 10*time.Second, func() bool {
		return waiting.Load() == 2 && p.busy.Load() == 2 && handled.Load() == 4
	}, "2 results waiting, 2 slots held, 4 jobs handled")
	release()
	for _, id := range ids {
		f.waitState(id, statemachine.StateSucceeded)
	}
	require.Equal(t, int64(6), handled.Load())
}

// Stop returns only once every result whose handler returned is recorded.
func TestStopWaitsForResultsBeingRecorded(t *testing.T) {
	f := newFixture(t, true)
	p, release, waiting, ids := f.heldPool(4, 3, noop)
	natstest.Eventually(t, 10*time.Second, func() bool { return waiting.Load() == 3 }, "3 results waiting")
	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop(context.Background()) }()
	// Stop must still be waiting a while later (a Stop that did not wait
	// returns within milliseconds); then the results go through.
	holdFor := time.NewTimer(200 * time.Millisecond)
	defer holdFor.Stop()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) with %d results not recorded", err, waiting.Load())
	case <-holdFor.C:
	}
	release()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return once the results were released")
	}
	require.Zero(t, waiting.Load())
	for _, id := range ids {
		j, err := f.m.Load(context.Background(), id)
		require.NoError(t, err)
		require.Equal(t, statemachine.StateSucceeded, j.State, "job %s", id)
	}
}

func TestCrashBeforeEnqueueIsRepaired(t *testing.T) {
	f := newFixture(t, false)
	// The submit is acknowledged while no enqueuer runs, as after a crash
	// between the event and the enqueue.
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	f.pool(PoolConfig{Types: []string{"t"}}, noop)
	require.NoError(t, f.enq.Start(context.Background()))
	t.Cleanup(f.enq.Stop)
	f.waitState(j.ID, statemachine.StateSucceeded)
}

func TestLostQueueMessageIsRepaired(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err := f.enq.runOnce(ctx)
	require.NoError(t, err)
	key := queueKey{Type: "t", Tagset: noTags}
	q, err := f.env.JS.Stream(ctx, key.stream())
	require.NoError(t, err)
	require.NoError(t, q.Purge(ctx))
	lister := func(ctx context.Context, states []statemachine.State) ([]QueuedJob, error) {
		cur, err := f.m.Load(ctx, j.ID)
		if err != nil {
			return nil, err
		}
		return []QueuedJob{{ID: cur.ID, Type: cur.Type, Tags: cur.Tags, State: cur.State, UpdatedAt: cur.UpdatedAt}}, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileAge: time.Nanosecond})
	require.NoError(t, err)
	res, err := enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{j.ID}, res.Requeued)
	_, err = q.GetLastMsgForSubject(ctx, key.subject(j.ID))
	require.NoError(t, err)
	enq.wokenMu.Lock()
	woken := enq.woken[key.name()]
	enq.wokenMu.Unlock()
	require.NotNil(t, woken, "its wake-up remembered, sent again if lost")
	require.Equal(t, j.ID, woken.jobID)
	f.pool(PoolConfig{Types: []string{"t"}}, noop)
	f.waitState(j.ID, statemachine.StateSucceeded)
	// A second pass finds nothing to repair.
	res, err = enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued)
}

// A reconcile pass does not enqueue again a job that has moved since its
// listing: pending when listed, it was acquired, failed and is pending
// again, and its new message is the enqueuer's to make (a helper saw such
// jobs re-enqueued, each with "queue message was lost" in the log).
func TestReconcileLeavesAJobThatMovedSinceItsListing(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	j := f.submit(statemachine.SubmitParams{Type: "t", MaxAttempts: 2, Backoff: statemachine.BackoffConfig{Base: time.Millisecond, Cap: time.Millisecond}})
	listed := j // pending, as the listing saw it
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	_, err = f.m.Fail(ctx, held, statemachine.FailParams{Error: "try again"})
	require.NoError(t, err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		cur, err := f.m.Promote(ctx, j.ID)
		return err == nil && cur.State == statemachine.StatePending
	}, "job %s pending again", j.ID)
	lister := func(context.Context, []statemachine.State) ([]QueuedJob, error) {
		return []QueuedJob{{ID: listed.ID, Type: listed.Type, State: listed.State, UpdatedAt: listed.UpdatedAt, Version: listed.Version}}, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileAge: time.Nanosecond})
	require.NoError(t, err)
	res, err := enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued)
	require.Zero(t, f.queued())
}

// A queue message lost with a server that died soon after making it (the
// queue persists asynchronously) is repaired by the first reconcile passes
// of the next start, a second and ReconcileAge after it, not a whole
// ReconcileEvery later: a server killed again within that never would.
func TestFirstReconcilePassComesSoonAfterStart(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err := f.enq.runOnce(ctx) // enqueued, and the event acknowledged
	require.NoError(t, err)
	key := queueKey{Type: "t", Tagset: noTags}
	q, err := f.env.JS.Stream(ctx, key.stream())
	require.NoError(t, err)
	require.NoError(t, q.Purge(ctx)) // then lost
	lister := func(ctx context.Context, states []statemachine.State) ([]QueuedJob, error) {
		cur, err := f.m.Load(ctx, j.ID)
		if err != nil {
			return nil, err
		}
		// Pending since before the start, for longer than ReconcileAge.
		return []QueuedJob{{ID: cur.ID, Type: cur.Type, Tags: cur.Tags, State: cur.State, UpdatedAt: cur.UpdatedAt.Add(-time.Minute)}}, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileEvery: time.Hour})
	require.NoError(t, err)
	require.NoError(t, enq.Start(ctx))
	t.Cleanup(enq.Stop)
	natstest.Eventually(t, ReconcileAgeDefault/2, func() bool { return f.queued() == 1 }, "job %s queued again", j.ID)
}

// TestReconcileLooksAgainAfterAReconnect: a pending job found queued is not
// looked up on every pass, but is after the connection comes back (the
// server may have lost its queue's tail).
func TestReconcileLooksAgainAfterAReconnect(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, false)
	ctx := context.Background()
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err := f.enq.runOnce(ctx)
	require.NoError(t, err)
	lister := func(ctx context.Context, states []statemachine.State) ([]QueuedJob, error) {
		return []QueuedJob{{ID: j.ID, Type: j.Type, State: statemachine.StatePending, UpdatedAt: j.UpdatedAt}}, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileAge: time.Nanosecond})
	require.NoError(t, err)
	res, err := enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued, "queued")

	key := queueKey{Type: "t", Tagset: noTags}
	purge := func() {
		q, err := f.env.JS.Stream(ctx, key.stream())
		require.NoError(t, err)
		require.NoError(t, q.Purge(ctx))
	}
	purge()
	res, err = enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued, "found queued before, and no reconnect since")

	// The same address and store: the client reconnects.
	f.env.Server.Shutdown()
	srv, err := natsserver.Start(natsserver.Config{DataDir: f.env.Dir, Listen: strings.TrimPrefix(f.env.URL, "nats://")})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	natstest.Eventually(t, 10*time.Second, func() bool { return f.env.NC.Stats().Reconnects > 0 && f.env.NC.IsConnected() }, "reconnected")
	purge() // what the restart may have lost
	natstest.Eventually(t, 10*time.Second, func() bool {
		res, err = enq.Reconcile(ctx)
		return err == nil && len(res.Requeued) == 1
	}, "requeued after the reconnect")
	require.Equal(t, []string{j.ID}, res.Requeued)
}

// queueConsumers names the consumers of the work queue, each with its
// stream.
func (f *fixture) queueConsumers() map[string]string {
	f.t.Helper()
	names := map[string]string{}
	for _, name := range QueueStreams() {
		stream, err := f.env.JS.Stream(context.Background(), name)
		require.NoError(f.t, err)
		lister := stream.ConsumerNames(context.Background())
		for consumer := range lister.Name() {
			names[consumer] = name
		}
		require.NoError(f.t, lister.Err())
	}
	return names
}

// queued counts the messages in the work queue.
func (f *fixture) queued() uint64 {
	f.t.Helper()
	n, err := Queued(context.Background(), f.env.JS)
	require.NoError(f.t, err)
	return n
}

// TestQueuedJobsRunAfterTheServerRestarts: queue consumers hold their state
// in memory, so a restart of the server loses them; the jobs queued before
// it still run, each once.
func TestQueuedJobsRunAfterTheServerRestarts(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	tags := map[string]string{"os": "linux"}
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, f.submit(statemachine.SubmitParams{Type: "build", Tags: tags}).ID)
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == uint64(len(ids)) }, "%d jobs queued", len(ids))
	require.Len(t, f.queueConsumers(), 1)
	f.enq.Stop()

	f.env.Restart(t)
	g := fixtureOn(t, f.env, true)
	require.Empty(t, g.queueConsumers(), "a consumer held in memory outlived the restart")
	var mu sync.Mutex
	runs := map[string]int{}
	g.pool(PoolConfig{Types: []string{"build"}, Tags: tags}, func(_ context.Context, j *Job) error {
		mu.Lock()
		runs[j.ID]++
		mu.Unlock()
		return nil
	})
	for _, id := range ids {
		g.waitState(id, statemachine.StateSucceeded)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		require.Equal(t, 1, runs[id], "job %s", id)
	}
}

// TestPoolRemakesAQueueConsumerLostUnderIt: a pool whose queue consumer
// disappears while it runs (its server restarted, or an operator deleted
// it) makes it anew and goes on taking jobs.
func TestPoolRemakesAQueueConsumerLostUnderIt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"build"}}, noop)
	first := f.submit(statemachine.SubmitParams{Type: "build"})
	f.waitState(first.ID, statemachine.StateSucceeded)
	names := f.queueConsumers()
	require.Len(t, names, 1)
	for consumer, stream := range names {
		require.NoError(t, f.env.JS.DeleteConsumer(ctx, stream, consumer))
	}

	second := f.submit(statemachine.SubmitParams{Type: "build"})
	f.waitState(second.ID, statemachine.StateSucceeded)
	require.Equal(t, names, f.queueConsumers())
}

// TestHigherPriorityRunsFirst: a pool with one slot and a backlog in two
// priorities runs every job of the higher one before any of the lower.
func TestHigherPriorityRunsFirst(t *testing.T) {
	f := newFixture(t, true)
	prio := map[string]int{}
	for i := 0; i < 4; i++ {
		for _, p := range []int{0, 5, 9} {
			prio[f.submit(statemachine.SubmitParams{Type: "build", Priority: p}).ID] = p
		}
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == uint64(len(prio)) }, "%d jobs queued", len(prio))
	var mu sync.Mutex
	var order []int
	f.pool(PoolConfig{Types: []string{"build"}, Concurrency: 1}, func(_ context.Context, j *Job) error {
		mu.Lock()
		order = append(order, prio[j.ID])
		mu.Unlock()
		return nil
	})
	natstest.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == len(prio)
	}, "every job ran")
	require.Equal(t, []int{9, 9, 9, 9, 5, 5, 5, 5, 0, 0, 0, 0}, order)
}

func zaptestLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))
}

// TestTopologyReplacesTheUnshardedQueue: a server upgraded from the single
// queue stream deletes it (its messages are hints the reconcile pass
// rebuilds) and spreads the queue over QueueShards streams.
func TestTopologyReplacesTheUnshardedQueue(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: legacyQueueStream, Subjects: []string{"jj.q.>"},
		Retention: jetstream.WorkQueuePolicy})
	require.NoError(t, err)
	_, err = env.JS.Publish(ctx, "jj.q.build.none.0.job1", nil)
	require.NoError(t, err)

	require.NoError(t, EnsureTopology(ctx, env.JS))
	_, err = env.JS.Stream(ctx, legacyQueueStream)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	for _, name := range QueueStreams() {
		_, err := env.JS.Stream(ctx, name)
		require.NoError(t, err, name)
	}
	require.NoError(t, EnsureTopology(ctx, env.JS), "a second run changes nothing")
}

// TestPoolNeedsAServersQueues: a pool started on a NATS no jetjob server
// of this version set up refuses to start, says why, and makes nothing.
func TestPoolNeedsAServersQueues(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	lg, err := events.Attach(env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	start := func() error {
		p, err := NewPool(env.JS, m, PoolConfig{Types: []string{"build"}}, func(context.Context, *Job) error { return nil })
		require.NoError(t, err)
		return p.Start(ctx)
	}

	err = start()
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, "start the jetjob server first")
	names := env.JS.StreamNames(ctx)
	for name := range names.Name() {
		t.Errorf("stream %s made by a pool that did not start", name)
	}
	require.NoError(t, names.Err())

	_, err = env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: legacyQueueStream, Subjects: []string{"jj.q.>"}})
	require.NoError(t, err)
	err = start()
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, "older jetjob server")
}

// A pool started on a NATS without JetStream says it finds no work queue,
// as on one where no jetjob server ran, and that JetStream does not answer.
func TestPoolOnANATSWithoutJetStreamFindsNoQueues(t *testing.T) {
	env := natstest.StartStock(t, func(o *server.Options) { o.JetStream = false })
	lg, err := events.Attach(env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	p, err := NewPool(env.JS, m, PoolConfig{Types: []string{"build"}}, func(context.Context, *Job) error { return nil })
	require.NoError(t, err)
	err = p.Start(context.Background())
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, "no JetStream on this NATS")
	// Laying the queue out there says why it cannot, not which of its
	// steps (an upgrade's removal of an older stream) met the silence.
	require.ErrorContains(t, EnsureTopology(context.Background(), env.JS), "no JetStream on this NATS")
}

// TestLogsOnANATSWithoutJetStreamAreNoLogs: AttachLogs on a NATS without
// JetStream says ErrNoLogs, as Pool.Start says ErrNoQueues there, not a
// raw "no responders" that errors.Is cannot tell from an outage.
func TestLogsOnANATSWithoutJetStreamAreNoLogs(t *testing.T) {
	env := natstest.StartStock(t, func(o *server.Options) { o.JetStream = false })
	_, err := AttachLogs(context.Background(), env.JS)
	require.ErrorIs(t, err, ErrNoLogs)
	require.ErrorContains(t, err, "no JetStream on this NATS")
}

// TestQueueReadersWhereNoServerRanSayNoQueues: Queued and AttachLeftovers
// on a NATS where no jetjob server laid out the work queue say so
// (ErrNoQueues), naming what is missing, not with JetStream's raw
// "stream not found", which errors.Is cannot tell from an outage.
func TestQueueReadersWhereNoServerRanSayNoQueues(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	_, err := Queued(ctx, env.JS)
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, queueStream(0))
	_, err = AttachLeftovers(ctx, env.JS)
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, queueStream(0))

	// The queue laid out but for the timers stream: that is named.
	require.NoError(t, EnsureTopology(ctx, env.JS))
	require.NoError(t, env.JS.DeleteStream(ctx, TimersStream))
	_, err = AttachLeftovers(ctx, env.JS)
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, TimersStream)
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "JetStream's error is kept")

	stock := natstest.StartStock(t, func(o *server.Options) { o.JetStream = false })
	_, err = Queued(ctx, stock.JS)
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, "no JetStream on this NATS")
	_, err = AttachLeftovers(ctx, stock.JS)
	require.ErrorIs(t, err, ErrNoQueues)
	require.ErrorContains(t, err, "no JetStream on this NATS")
}

// TestQueueShards: a queue's shard is part of its subjects on disk, so it
// never changes between versions, and tag sets spread over every shard.
func TestQueueShards(t *testing.T) {
	key := queueKey{Type: "build", Tagset: noTags, Prio: 3}
	require.Equal(t, 15, key.shard())
	require.Equal(t, "JJ_QUEUE_15", key.stream())
	require.Equal(t, "jj.wq.15.build.none.3.job1", key.subject("job1"))
	require.Equal(t, "jj.wq.15.build.none.3.*", key.filter())
	key.Prio = 7
	require.Equal(t, 15, key.shard(), "the priorities of a tag set share a shard")

	seen := map[int]int{}
	for i := 0; i < 1000; i++ {
		k := queueKey{Type: "build", Tagset: TagsetID(map[string]string{"tenant": fmt.Sprint(i)})}
		require.GreaterOrEqual(t, k.shard(), 0)
		require.Less(t, k.shard(), QueueShards)
		seen[k.shard()]++
	}
	require.Len(t, seen, QueueShards)
	for shard, n := range seen {
		require.Greater(t, n, 1000/QueueShards/2, "shard %d has %d of 1,000 tag sets", shard, n)
	}

	// QueueStream names the streams there are, and refuses a shard out of
	// range, where it named JJ_QUEUE_99 and JJ_QUEUE_-1, which no server
	// makes.
	name, err := QueueStream(15)
	require.NoError(t, err)
	require.Equal(t, "JJ_QUEUE_15", name)
	for _, bad := range []int{-1, QueueShards, 99} {
		name, err := QueueStream(bad)
		require.ErrorIs(t, err, statemachine.ErrInvalid, "shard %d", bad)
		require.ErrorContains(t, err, fmt.Sprintf("shard %d, expected 0-%d", bad, QueueShards-1))
		require.Empty(t, name)
	}
}

// TestQueueConsumerOfAnOlderVersionIsReplaced: a queue consumer stored on
// disk, as older versions made them, cannot be changed in place to hold
// its state in memory; the enqueuer replaces it and the job runs.
func TestQueueConsumerOfAnOlderVersionIsReplaced(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	key := queueKey{Type: "build", Tagset: noTags}
	old := key.consumerConfig(true)
	old.MemoryStorage = false
	_, err := f.env.JS.CreateOrUpdateConsumer(ctx, key.stream(), old)
	require.NoError(t, err)

	f.pool(PoolConfig{Types: []string{"build"}}, noop)
	j := f.submit(statemachine.SubmitParams{Type: "build"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	c, err := f.env.JS.Consumer(ctx, key.stream(), key.consumer())
	require.NoError(t, err)
	require.True(t, c.CachedInfo().Config.MemoryStorage)
}

// TestQueueConsumerOnAReplicatedStreamIsStored: on a queue stream with
// replicas, a queue's consumer stores its state, and one an earlier
// version made in memory there is replaced as the queue is registered: a
// replicated consumer in memory came back from a restart of one of its
// servers with nothing, and with another server down stayed without a
// leader, its jobs pending, until the third came back.
func TestQueueConsumerOnAReplicatedStreamIsStored(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	require.NoError(t, EnsureTopology(ctx, provision.WithReplicas(js, 3)))
	registry, err := js.KeyValue(ctx, TagsetsBucket)
	require.NoError(t, err)
	stored := func(key queueKey) bool {
		t.Helper()
		cons, err := js.Consumer(ctx, key.stream(), key.consumer())
		require.NoError(t, err)
		return !cons.CachedInfo().Config.MemoryStorage
	}

	fresh := queueKey{Type: "build", Tagset: noTags}
	require.NoError(t, registerQueue(ctx, js, registry, fresh))
	require.True(t, stored(fresh), "a new queue's consumer stored")

	older := queueKey{Type: "render", Tagset: noTags}
	_, err = js.CreateOrUpdateConsumer(ctx, older.stream(), older.consumerConfig(true))
	require.NoError(t, err)
	require.NoError(t, registerQueue(ctx, js, registry, older))
	require.True(t, stored(older), "a consumer in memory replaced by one stored")
}

// TestEnqueuerMakesItsLostConsumerAgain: an enqueuer whose durable over the
// log is deleted under it makes it again, from after the last event it
// handled, and goes on enqueuing without waiting for the reconcile pass.
func TestEnqueuerMakesItsLostConsumerAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, true)
	first := f.submit(statemachine.SubmitParams{Type: "build"})
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == 1 }, "the first job queued")
	require.NoError(t, f.env.JS.DeleteConsumer(ctx, f.log.Stream(), EnqueuerDurableDefault))

	second := f.submit(statemachine.SubmitParams{Type: "build"})
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == 2 }, "the second job queued")
	c, err := f.env.JS.Consumer(ctx, f.log.Stream(), EnqueuerDurableDefault)
	require.NoError(t, err)
	require.Equal(t, jetstream.DeliverByStartSequencePolicy, c.CachedInfo().Config.DeliverPolicy)
	require.Greater(t, c.CachedInfo().Config.OptStartSeq, uint64(1), "made again from the start of the log")

	f.pool(PoolConfig{Types: []string{"build"}}, noop)
	f.waitState(first.ID, statemachine.StateSucceeded)
	f.waitState(second.ID, statemachine.StateSucceeded)
}

// An event appended by a version that did not write the type header is
// decoded to learn its type, so its job is still queued at once (not at the
// reconcile pass), and the acquire and result that follow carry the header.
func TestEventWithoutTypeHeaderIsEnqueued(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	ev, err := events.New("legacy-job", events.TypeSubmitted, events.Submitted{Type: "build", MaxAttempts: 1})
	require.NoError(t, err)
	data, err := events.Encode(ev)
	require.NoError(t, err)
	m := nats.NewMsg(f.log.Subject("legacy-job"))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	_, err = f.env.JS.PublishMsg(ctx, m)
	require.NoError(t, err)

	natstest.Eventually(t, 5*time.Second, func() bool { return f.queued() == 1 }, "the job queued")
	f.pool(PoolConfig{Types: []string{"build"}}, noop)
	f.waitState("legacy-job", statemachine.StateSucceeded)
	s, err := f.env.JS.Stream(ctx, f.log.Stream())
	require.NoError(t, err)
	last, err := s.GetLastMsgForSubject(ctx, f.log.Subject("legacy-job"))
	require.NoError(t, err)
	require.Equal(t, events.TypeSucceeded, events.TypeOf(last.Header))
}

// Wake-ups arriving while a pool starts, for queues it has not seen, find
// its registry bound (they read it to learn the queue). The storm comes in
// bursts, one wake-up per unknown queue, each burst once the server has
// taken the last: unpaced, on the pool's own connection, it outran the
// server under load, and the pool's start requests, queued behind it, went
// unanswered for the whole election wait.
func TestPoolStartsUnderAStormOfWakeUps(t *testing.T) {
	f := newFixture(t, true)
	storm, _ := natstest.Connect(t, f.env.URL)
	stop := make(chan struct{})
	stormed := make(chan struct{})
	go func() {
		defer close(stormed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := range 50 {
				_ = storm.Publish(fmt.Sprintf("%sbuild.unknown%d.0", wakePrefix, i), nil)
			}
			_ = storm.Flush()
		}
	}()
	p := f.pool(PoolConfig{Types: []string{"build"}}, noop)
	close(stop)
	<-stormed
	require.NotNil(t, p)
	j := f.submit(statemachine.SubmitParams{Type: "build"})
	f.waitState(j.ID, statemachine.StateSucceeded)
}

// A slot freed while the other slots keep running long jobs takes a job that
// waits in the queue, though no new job wakes the pool: a pool that fetches
// for several slots at once must not leave one idle beside pending work.
func TestFreedSlotTakesAWaitingJobWhileOthersRun(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	const concurrency = 16 // fetches wait for 2 free slots while jobs run
	for range concurrency + 1 {
		f.submit(statemachine.SubmitParams{Type: "long"})
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == concurrency+1 }, "every job queued")
	started := make(chan string, concurrency+1)
	finish := make(chan struct{})
	release := map[string]chan struct{}{}
	var mu sync.Mutex
	f.pool(PoolConfig{Types: []string{"long"}, Concurrency: concurrency, BackupPoll: time.Hour}, func(ctx context.Context, j *Job) error {
		done := make(chan struct{})
		mu.Lock()
		release[j.ID] = done
		mu.Unlock()
		started <- j.ID
		select {
		case <-done:
		case <-finish:
		case <-ctx.Done():
		}
		return nil
	})
	t.Cleanup(func() { close(finish) })
	var first string
	for i := range concurrency {
		select {
		case id := <-started:
			if i == 0 {
				first = id
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d slots started a job", i, concurrency)
		}
	}
	mu.Lock()
	close(release[first])
	mu.Unlock()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting job did not start in the freed slot")
	}
}

// A handler whose watch for cancels could not be made at first (its server
// busy or restarting) still learns of a cancel: the watch is made again.
func TestCancelReachesAHandlerWhoseWatchFailedAtFirst(t *testing.T) {
	f := newFixture(t, true)
	running := make(chan struct{})
	causes := make(chan error, 1)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"long"}, Logger: zaptestLogger(t)}, func(ctx context.Context, j *Job) error {
		close(running)
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return ctx.Err()
	})
	require.NoError(t, err)
	var failures atomic.Int64
	p.follow = func(ctx context.Context, jobID string, lease uint64, from *uint64, cancel context.CancelCauseFunc) error {
		if failures.Add(1) <= 2 {
			return errors.New("no responders")
		}
		return p.followJob(ctx, jobID, lease, from, cancel)
	}
	require.NoError(t, p.Start(context.Background()))
	t.Cleanup(func() { _ = p.Stop(context.Background()) })

	j := f.submit(statemachine.SubmitParams{Type: "long"})
	<-running
	natstest.Eventually(t, 5*time.Second, func() bool { return failures.Load() > 2 }, "the watch was made again")
	_, err = f.m.Cancel(context.Background(), j.ID, "no longer needed")
	require.NoError(t, err)
	select {
	case c := <-causes:
		require.ErrorIs(t, c, ErrCanceled)
	case <-time.After(5 * time.Second):
		t.Fatal("handler context not canceled within 5s")
	}
	f.waitState(j.ID, statemachine.StateCanceled)
}

// A pool with more slots than one fetch may ask for still gets its jobs.
func TestPoolWithThousandsOfSlotsGetsJobs(t *testing.T) {
	f := newFixture(t, true)
	ran := make(chan string, 10)
	f.pool(PoolConfig{Types: []string{"wide"}, Concurrency: 1500}, func(_ context.Context, j *Job) error {
		ran <- j.ID
		return nil
	})
	j := f.submit(statemachine.SubmitParams{Type: "wide"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, j.ID, <-ran)
}

// A due message from an earlier schedule (delivered again, or replayed by a
// timers consumer made anew) does not start a retry before its time; the
// job's own timer does.
func TestStaleTimerDoesNotPromoteEarly(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, false)
	j := f.submit(statemachine.SubmitParams{Type: "later", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: 2 * time.Hour, Cap: 2 * time.Hour}})
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	retrying, err := f.m.Fail(ctx, held, statemachine.FailParams{Error: "try later"})
	require.NoError(t, err)
	require.Equal(t, statemachine.StateScheduled, retrying.State)
	_, err = f.enq.runOnce(ctx)
	require.NoError(t, err)

	due := func(at *time.Time) {
		m := nats.NewMsg(duePrefix + j.ID)
		m.Data = []byte(j.ID)
		if at != nil {
			m.Header.Set(dueAtHeader, at.UTC().Format(time.RFC3339Nano))
		}
		_, err := f.env.JS.PublishMsg(ctx, m)
		require.NoError(t, err)
		_, err = f.enq.runOnce(ctx)
		require.NoError(t, err)
	}
	earlier := time.Now().Add(-time.Minute)
	due(&earlier) // the first schedule's timer, replayed
	due(nil)      // the same, armed before timers carried their time
	cur, err := f.m.Load(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateScheduled, cur.State, "promoted %s before its run-at", time.Until(*retrying.RunAt))
	due(retrying.RunAt) // its own timer, fired hours early
	cur, err = f.m.Load(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateScheduled, cur.State, "promoted by a timer that fired %s early", time.Until(*retrying.RunAt))

	f.enq.cfg.Now = func() time.Time { return retrying.RunAt.Add(time.Millisecond) }
	due(retrying.RunAt) // its own timer, on time
	cur, err = f.m.Load(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StatePending, cur.State)
}

// A stopped enqueuer starts again; a stopped pool refuses to, rather than
// report success and take no job.
func TestStartAfterStop(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	require.NoError(t, f.enq.Start(ctx))
	f.enq.Stop()
	f.enq.Stop()
	require.NoError(t, f.enq.Start(ctx))
	t.Cleanup(f.enq.Stop)
	f.submit(statemachine.SubmitParams{Type: "again"})
	f.waitQueued(1)

	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"again"}}, noop)
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	require.NoError(t, p.Stop(ctx))
	require.ErrorIs(t, p.Start(ctx), ErrStopped)

	never, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"again"}}, noop)
	require.NoError(t, err)
	require.NoError(t, never.Stop(ctx))
	require.ErrorIs(t, never.Start(ctx), ErrStopped, "stopped before it started")
}

// Stop says when it could not hand a running job back: the job then waits
// for the hang detector, and a worker's exit status should show it.
func TestStopSaysWhatItCouldNotHandBack(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, true)
	nc, js := natstest.Connect(t, f.env.URL)
	lg, err := events.Open(ctx, js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	running := make(chan struct{})
	p, err := NewPool(js, m, PoolConfig{Types: []string{"cut"}, ShutdownGrace: 100 * time.Millisecond, Logger: zaptestLogger(t)},
		func(ctx context.Context, _ *Job) error {
			close(running)
			<-ctx.Done()
			return context.Cause(ctx)
		})
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	j := f.submit(statemachine.SubmitParams{Type: "cut"})
	<-running
	nc.Close()
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.ErrorIs(t, p.Stop(stopCtx), ErrNotRecorded)
	require.Equal(t, statemachine.StateRunning, f.waitState(j.ID, statemachine.StateRunning).State)
}

func TestPoolConfigThatCannotRunIsRefused(t *testing.T) {
	f := newFixture(t, false)
	for name, cfg := range map[string]PoolConfig{
		"no types":                 {},
		"a type with a space":      {Types: []string{"bad type"}},
		"a tag key with a dot":     {Types: []string{"t"}, Tags: map[string]string{"a.b": "1"}},
		"negative concurrency":     {Types: []string{"t"}, Concurrency: -1},
		"concurrency over its max": {Types: []string{"t"}, Concurrency: ConcurrencyMax + 1},
		"a worker ID of two lines": {Types: []string{"t"}, WorkerID: "a\nb"},
		"a worker ID not UTF-8":    {Types: []string{"t"}, WorkerID: "w\xff"},
		"a worker ID too long":     {Types: []string{"t"}, WorkerID: strings.Repeat("w", statemachine.WorkerIDLimit+1)},
		// Negative durations were read as their defaults: a shutdown
		// grace of -1 gave handlers 30 s.
		"a negative job timeout":        {Types: []string{"t"}, JobTimeout: -time.Second},
		"a negative shutdown grace":     {Types: []string{"t"}, ShutdownGrace: -1},
		"a negative heartbeat interval": {Types: []string{"t"}, HeartbeatInterval: -time.Second},
		"a negative backup poll":        {Types: []string{"t"}, BackupPoll: -time.Second},
		"a negative cancel watch delay": {Types: []string{"t"}, CancelWatchDelay: -time.Millisecond},
	} {
		_, err := NewPool(f.env.JS, f.m, cfg, noop)
		require.ErrorIs(t, err, ErrInvalidConfig, name)
	}
	cfg := PoolConfig{Types: []string{"t"}}
	_, err := NewPool(nil, f.m, cfg, noop)
	require.ErrorIs(t, err, ErrInvalidConfig, "no jetstream")
	_, err = NewPool(f.env.JS, nil, cfg, noop)
	require.ErrorIs(t, err, ErrInvalidConfig, "no machine")
	_, err = NewEnqueuer(nil, f.m, EnqueuerConfig{})
	require.ErrorIs(t, err, ErrInvalidConfig, "enqueuer without jetstream")
	// Negatives were read as their defaults, not refused.
	for name, cfg := range map[string]EnqueuerConfig{
		"a negative enqueuer batch":  {Batch: -1},
		"a negative reconcile every": {ReconcileEvery: -time.Second},
		"a negative reconcile age":   {ReconcileAge: -time.Second},
		"a negative rewake after":    {RewakeAfter: -time.Second},
		// A name no consumer can have was taken, and refused only at Start
		// by NATS, not with ErrInvalidConfig as a projector's is.
		"a durable with a dot":          {Durable: "a.b"},
		"a timers durable with a space": {TimersDurable: "a b"},
	} {
		_, err = NewEnqueuer(f.env.JS, f.m, cfg)
		require.ErrorIs(t, err, ErrInvalidConfig, name)
	}
	// The package's functions on a nil jetstream (a jetstream.New whose
	// error went unchecked) say so rather than panic.
	ctx := context.Background()
	require.ErrorIs(t, EnsureTopology(ctx, nil), ErrInvalidConfig, "topology without jetstream")
	_, err = AttachLogs(ctx, nil)
	require.ErrorIs(t, err, ErrInvalidConfig, "logs without jetstream")
	// On a NATS with JetStream but no jetjob, the job logs stream is
	// missing: said with a sentinel, as ErrNoQueues is, not a raw 404.
	_, err = AttachLogs(ctx, natstest.Start(t).JS)
	require.ErrorIs(t, err, ErrNoLogs, "logs where no server laid them out")
	_, err = AttachLeftovers(ctx, nil)
	require.ErrorIs(t, err, ErrInvalidConfig, "leftovers without jetstream")
	_, err = Queued(ctx, nil)
	require.ErrorIs(t, err, ErrInvalidConfig, "queued without jetstream")
	_, err = RemoveQueues(ctx, nil, func(string) bool { return false })
	require.ErrorIs(t, err, ErrInvalidConfig, "remove queues without jetstream")
}

// cutLinesPool starts a pool of type cutlines through proxy (see
// poolThrough), its lines' acks waited for ackTimeout. Its handler logs
// "first", sends its job on started, and returns once returning is closed.
func (f *fixture) cutLinesPool(t *testing.T, proxy *natstest.Proxy, ackTimeout time.Duration) (*Pool, <-chan *Job, chan struct{}) {
	t.Helper()
	started, returning := make(chan *Job, 1), make(chan struct{})
	p := f.poolThrough(proxy, false, PoolConfig{Types: []string{"cutlines"}}, func(ctx context.Context, j *Job) error {
		j.Log("first")
		started <- j
		<-returning
		return nil
	}, func(p *Pool) { p.logAckTimeout = ackTimeout })
	return p, started, returning
}

// firstLineStored submits a job of type cutlines and waits until its
// first line is stored.
func (f *fixture) firstLineStored(t *testing.T) (*Logs, string) {
	t.Helper()
	ctx := context.Background()
	logs, err := AttachLogs(ctx, f.env.JS)
	require.NoError(t, err)
	id := f.submit(statemachine.SubmitParams{Type: "cutlines"}).ID
	subject := logSubject(id)
	natstest.Eventually(t, 10*time.Second, func() bool {
		info, err := logs.stream.Info(ctx, jetstream.WithSubjectFilter(subject))
		require.NoError(t, err)
		return info.State.Subjects[subject] == 1
	}, "the first line stored")
	return logs, id
}

// proxiedPool runs a pool whose every call to the server (its machine's too)
// goes through a proxy the test can cut or stall.
func (f *fixture) proxiedPool(cfg PoolConfig, h Handler, before ...func(*Pool)) *natstest.Proxy {
	f.t.Helper()
	proxy := natstest.NewProxy(f.t, f.env.URL)
	f.poolThrough(proxy, true, cfg, h, before...)
	return proxy
}

// poolThrough runs a pool whose calls to the server go through proxy: with
// machineToo, its machine's as well; without, the fixture's machine records
// its results over a connection of its own, so that a stalled or cut proxy
// holds back or loses only the pool's own traffic (its log lines).
func (f *fixture) poolThrough(proxy *natstest.Proxy, machineToo bool, cfg PoolConfig, h Handler, before ...func(*Pool)) *Pool {
	f.t.Helper()
	ctx := context.Background()
	_, js := natstest.Connect(f.t, proxy.URL)
	m := f.m
	if machineToo {
		lg, err := events.Open(ctx, js, f.proxiedLog)
		require.NoError(f.t, err)
		f.t.Cleanup(lg.Close)
		m, err = statemachine.New(lg, statemachine.Config{})
		require.NoError(f.t, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptestLogger(f.t)
	}
	p, err := NewPool(js, m, cfg, h)
	require.NoError(f.t, err)
	for _, b := range before {
		b(p)
	}
	require.NoError(f.t, p.Start(ctx))
	f.t.Cleanup(func() {
		proxy.Restore()
		_ = p.Stop(context.Background())
	})
	return p
}

func (f *fixture) publishHangAfter(d time.Duration) {
	f.t.Helper()
	hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
	require.NoError(f.t, err)
	_, err = hb.PublishHangAfter(context.Background(), d)
	require.NoError(f.t, err)
}

// A worker whose heartbeats no longer reach the server stops its handler
// before the detector could fail the attempt as hung, so that the retry
// never runs beside it; once back in contact it fails the attempt itself.
func TestAHandlerCutOffFromTheServerIsStopped(t *testing.T) {
	for _, partition := range []string{"cut", "stall"} {
		t.Run(partition, func(t *testing.T) {
			f := newFixture(t, true)
			f.publishHangAfter(time.Second)
			started := make(chan struct{}, 1)
			causes := make(chan error, 1)
			proxy := f.proxiedPool(PoolConfig{Types: []string{"cutoff"}}, func(ctx context.Context, j *Job) error {
				started <- struct{}{}
				<-ctx.Done()
				causes <- context.Cause(ctx)
				return ctx.Err()
			})
			j := f.submit(statemachine.SubmitParams{Type: "cutoff", MaxAttempts: 1})
			<-started
			if partition == "cut" {
				proxy.Cut()
			} else {
				proxy.Stall()
			}
			select {
			case cause := <-causes:
				require.ErrorIs(t, cause, ErrLostContact)
				require.Contains(t, cause.Error(), "the server fails an attempt after 1s")
			case <-time.After(10 * time.Second):
				t.Fatal("the handler of a worker cut off from the server was not stopped")
			}
			// Still in the log as running: nothing of the worker got through.
			held, err := f.m.Load(context.Background(), j.ID)
			require.NoError(t, err)
			require.Equal(t, statemachine.StateRunning, held.State)
			proxy.Restore()
			failed := f.waitState(j.ID, statemachine.StateFailed)
			require.Len(t, failed.Errors, 1)
			require.Equal(t, ErrorCodeLostContact, failed.Errors[0].Code)
			require.Contains(t, failed.Errors[0].Error, "no heartbeat acknowledged")
		})
	}
}

// A result the server could not record (the worker cut off as the handler
// returned) is tried again until it is: before, it was dropped, and the job
// stayed running until the detector failed it, to run again.
func TestAResultTheServerCouldNotRecordIsTriedAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.proxiedLog.PublishTimeout = 300 * time.Millisecond // the report's first try fails sooner
	started, finish := make(chan struct{}, 1), make(chan struct{})
	var runs atomic.Int32
	logger, logs := observedLogger(t)
	proxy := f.proxiedPool(PoolConfig{Types: []string{"unrecorded"}, Logger: logger}, func(ctx context.Context, j *Job) error {
		runs.Add(1)
		started <- struct{}{}
		<-finish
		return nil
	})
	j := f.submit(statemachine.SubmitParams{Type: "unrecorded"})
	<-started
	proxy.Cut()
	close(finish)
	natstest.Eventually(t, 30*time.Second, func() bool {
		return logs.FilterMessageSnippet("report result; trying again").Len() > 0
	}, "the report failed once")
	proxy.Restore()
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 1, done.Attempt)
	require.Equal(t, int32(1), runs.Load())
	natstest.Eventually(t, 10*time.Second, func() bool { return logs.FilterMessageSnippet("result recorded").Len() == 1 }, "the late record said")
}

// A result whose first try was stored, its answer lost, is refused at the
// next try (the attempt is over), and is then read from the job's history:
// OnResult gets the job as recorded, and the log says the earlier try
// recorded it. A failure was taken for a refusal, "result refused: the
// attempt no longer holds the job", and OnResult never called: a recorded
// failure clears the job's lease, which the history's read compared.
func TestAResultStoredWithItsAnswerLostIsPassedOn(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	for _, tc := range []struct {
		name  string
		err   error
		state statemachine.State
	}{
		{"success", nil, statemachine.StateSucceeded},
		{"failure with attempts left", errors.New("boom"), statemachine.StateScheduled},
		{"failure without retry", NoRetry(errors.New("boom")), statemachine.StateFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true)
			f.proxiedLog.PublishTimeout = 300 * time.Millisecond // the report's first try gives up sooner
			results := make(chan Result, 4)
			logger, logs := observedLogger(t)
			started, returning := make(chan struct{}, 1), make(chan struct{})
			proxy := f.proxiedPool(PoolConfig{Types: []string{"answerlost"}, Logger: logger, OnResult: func(r Result) { results <- r }},
				func(ctx context.Context, j *Job) error {
					started <- struct{}{}
					<-returning
					return tc.err
				})
			j := f.submit(statemachine.SubmitParams{Type: "answerlost", MaxAttempts: 3, Backoff: statemachine.BackoffConfig{Base: time.Hour, Cap: time.Hour}})
			<-started // the acquire answered: stalled, the job would never start
			proxy.StallAnswers()
			close(returning)
			f.waitState(j.ID, tc.state) // stored, its answer held
			natstest.Eventually(t, 30*time.Second, func() bool {
				return logs.FilterMessageSnippet("report result; trying again").Len() > 0
			}, "the first try's outcome unknown")
			proxy.Restore()
			select {
			case r := <-results:
				require.Equal(t, j.ID, r.Job.ID)
				require.Equal(t, tc.state, r.Job.State, "the job as recorded")
			case <-time.After(30 * time.Second):
				t.Fatalf("no result passed on; logs: %v", logs.All())
			}
			require.Equal(t, 1, logs.FilterMessageSnippet("result recorded by an earlier try").Len())
			require.Zero(t, logs.FilterMessageSnippet("result refused").Len())
			hist, err := f.m.Log().Load(context.Background(), j.ID)
			require.NoError(t, err)
			require.Len(t, hist, 3, "submitted, acquired and one result")
		})
	}
}

// An attempt beats until its result is recorded, not only while its
// handler runs: a result the server cannot record yet is tried again, and
// before, its attempt went silent meanwhile, for the detector to fail.
func TestAnAttemptBeatsUntilItsResultIsRecorded(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	f.publishHangAfter(600 * time.Millisecond) // a beat every 100 ms
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"held"}, Logger: zaptestLogger(t)}, noop)
	require.NoError(t, err)
	release, waiting := holdResults(p)
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { release(); _ = p.Stop(ctx) })
	j := f.submit(statemachine.SubmitParams{Type: "held"})
	natstest.Eventually(t, 10*time.Second, func() bool { return waiting.Load() == 1 }, "the result held")
	hb, err := events.OpenHeartbeats(ctx, f.env.JS)
	require.NoError(t, err)
	first, _, err := hb.Last(ctx, j.ID)
	require.NoError(t, err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		b, ok, err := hb.Last(ctx, j.ID)
		return err == nil && ok && b.StoredAt.After(first.StoredAt)
	}, "a beat after the handler returned")
	release()
	f.waitState(j.ID, statemachine.StateSucceeded)
}

// A handler that returned well within its job timeout, whose result takes
// longer than the timeout and the grace to record, succeeds once: before,
// the timeout went on running after the handler returned, failed the
// attempt as one that would not stop, and the job ran again.
func TestAJobTimeoutEndsWhenTheHandlerReturns(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, true)
	var runs atomic.Int32
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"quick"}, JobTimeout: 200 * time.Millisecond,
		ShutdownGrace: 100 * time.Millisecond, Logger: zaptestLogger(t)}, func(context.Context, *Job) error {
		runs.Add(1)
		return nil
	})
	require.NoError(t, err)
	release, waiting := holdResults(p)
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { release(); _ = p.Stop(ctx) })
	j := f.submit(statemachine.SubmitParams{Type: "quick"})
	natstest.Eventually(t, 10*time.Second, func() bool { return waiting.Load() == 1 }, "the result held")
	heldSince := time.Now()
	natstest.Eventually(t, 10*time.Second, func() bool { return time.Since(heldSince) > 600*time.Millisecond }, "held past the timeout and grace")
	release()
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 1, done.Attempt)
	require.Equal(t, int32(1), runs.Load())
}

// A Stop whose ctx has ended (a second Ctrl-C) still hands back the job of
// a handler that stops within the reserve: the hand-back is tried once.
func TestAStopWithItsCtxEndedStillHandsBack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	started := make(chan struct{}, 1)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"stopping"}, ShutdownGrace: time.Minute,
		Logger: zaptestLogger(t)}, func(ctx context.Context, j *Job) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	j := f.submit(statemachine.SubmitParams{Type: "stopping"})
	<-started
	ended, cancel := context.WithCancel(ctx)
	cancel()
	_ = p.Stop(ended)
	back := f.waitState(j.ID, statemachine.StatePending)
	require.Equal(t, 0, back.Attempt, "handed back without using up an attempt")
}

// A Stop whose ctx ends while a handler ignores its context says which
// jobs stay running, as results not recorded; the handler's late success
// is recorded all the same.
func TestAStopCutShortNamesTheJobsLeftRunning(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, true)
	started, release := make(chan struct{}, 1), make(chan struct{})
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"stubborn"}, ShutdownGrace: time.Minute,
		Logger: zaptestLogger(t)}, func(context.Context, *Job) error {
		started <- struct{}{}
		<-release
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	j := f.submit(statemachine.SubmitParams{Type: "stubborn"})
	<-started
	ended, cancel := context.WithCancel(ctx)
	cancel()
	err = p.Stop(ended)
	require.ErrorIs(t, err, ErrNotRecorded)
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, err.Error(), j.ID)
	close(release)
	released = true
	f.waitState(j.ID, statemachine.StateSucceeded)
}

// observedLogger logs to the test, and keeps the lines for it to read.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptestLogger(t).Core(), core)), logs
}

// Log lines the server never answers (its disk full, it stores nothing and
// says nothing) are said in the worker's log once their acks are overdue.
func TestLogLinesTheServerDoesNotAnswerAreSaid(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	logger, logs := observedLogger(t)
	started, logged := make(chan *Job, 1), make(chan struct{})
	proxy := f.proxiedPool(PoolConfig{Types: []string{"unanswered"}, Logger: logger}, func(ctx context.Context, j *Job) error {
		started <- j
		<-logged
		return nil
	}, func(p *Pool) { p.logAckTimeout = 300 * time.Millisecond })
	t.Cleanup(func() { // before the pool's Stop, which waits for the handler
		select {
		case <-logged:
		default:
			close(logged)
		}
	})
	f.submit(statemachine.SubmitParams{Type: "unanswered"})
	j := <-started
	proxy.Stall()
	j.Log("a line no one answers")
	natstest.Eventually(t, 10*time.Second, func() bool {
		return logs.FilterMessage("job log lines were not stored, or not acknowledged").Len() > 0
	}, "the unanswered line said")
	proxy.Restore()
}

// A job queued while its pool is cut off from the server, whose slot frees
// during the outage, starts once the connection is back. Cut (the client
// sees it): at once, since the server answers no request whose reply has no
// listener. Stalled (bytes held, then delivered): the fetch made during the
// stall, unanswered, may reach the server after the pool stopped listening
// and be given the job, which comes back after the queue's ack wait; the
// pool asks again then, though no wake-up says so.
func TestAJobQueuedDuringACutStartsOnReconnect(t *testing.T) {
	for _, partition := range []string{"cut", "stall"} {
		t.Run(partition, func(t *testing.T) {
			f := newFixture(t, true)
			release := make(chan struct{})
			started := make(chan string, 2)
			var pool *Pool
			var calls atomic.Int32
			proxy := f.proxiedPool(PoolConfig{Types: []string{"cutfetch"}, Concurrency: 1}, func(ctx context.Context, j *Job) error {
				started <- j.ID
				if calls.Add(1) == 1 {
					select {
					case <-release:
					case <-ctx.Done():
					}
				}
				return nil
			}, func(p *Pool) { pool = p })
			first := f.submit(statemachine.SubmitParams{Type: "cutfetch"})
			require.Equal(t, first.ID, <-started)
			second := f.submit(statemachine.SubmitParams{Type: "cutfetch"})
			natstest.Eventually(t, 10*time.Second, func() bool { return f.queued() == 1 }, "the second job queued")
			if partition == "cut" {
				proxy.Cut()
				natstest.Eventually(t, 10*time.Second, func() bool { return !pool.nc.IsConnected() }, "the pool sees the cut")
			} else {
				proxy.Stall()
			}
			close(release) // the slot frees while cut off, and the pool asks
			// The outage outlasts the client's wait for a fetch's answer (1 s).
			time.Sleep(2500 * time.Millisecond)
			proxy.Restore()
			restored := time.Now()
			within := QueueAckWait / 2
			if partition == "stall" {
				within = 2*QueueAckWait + 5*time.Second // not the 30 s backup poll
			}
			select {
			case id := <-started:
				require.Equal(t, second.ID, id)
				t.Logf("started %s after the outage", time.Since(restored))
			case <-time.After(within):
				t.Fatalf("the job queued during the outage did not start within %s of its end", within)
			}
			f.waitState(first.ID, statemachine.StateSucceeded)
			f.waitState(second.ID, statemachine.StateSucceeded)
		})
	}
}

// A pool beats often enough for a hang-after far shorter than its heartbeat
// interval, and so neither stops a handler that is in contact nor lets the
// detector think it hung; also when the hang-after is published (or
// shortened) while the job runs.
func TestBeatsKeepPaceWithTheServersHangAfter(t *testing.T) {
	for _, published := range []string{"before the job", "while it runs"} {
		t.Run(published, func(t *testing.T) {
			f := newFixture(t, true)
			if published == "before the job" {
				f.publishHangAfter(900 * time.Millisecond)
			}
			hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
			require.NoError(t, err)
			started := make(chan struct{})
			release := make(chan struct{})
			causes := make(chan error, 1)
			f.pool(PoolConfig{Types: []string{"paced"}}, func(ctx context.Context, j *Job) error {
				close(started)
				select {
				case <-release:
				case <-ctx.Done():
				}
				causes <- context.Cause(ctx)
				return nil
			})
			j := f.submit(statemachine.SubmitParams{Type: "paced"})
			<-started
			if published == "while it runs" {
				// After its first beat: the next is due in 10 s.
				natstest.Eventually(t, 10*time.Second, func() bool {
					_, ok, err := hb.Last(context.Background(), j.ID)
					return err == nil && ok
				}, "the first beat of job %s", j.ID)
				f.publishHangAfter(900 * time.Millisecond)
			}
			// Six beats at the default interval of 10 s would take a minute.
			beats := map[time.Time]bool{}
			natstest.Eventually(t, 10*time.Second, func() bool {
				if b, ok, err := hb.Last(context.Background(), j.ID); err == nil && ok {
					beats[b.At] = true
				}
				return len(beats) >= 6
			}, "six heartbeats of job %s", j.ID)
			close(release)
			require.NoError(t, <-causes)
			f.waitState(j.ID, statemachine.StateSucceeded)
		})
	}
}

// More jobs running at once than nats-server allows consumers on a stream
// (1,000 unless told otherwise; 16 on this server, so that the test is
// quick) each hear their cancel: a job's watch makes no consumer on the
// log, so running jobs leave its consumers as they were.
func TestEveryOneOfMoreRunningJobsThanAStreamHasConsumersHearsItsCancel(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	const limit, jobs = 16, 40
	env := natstest.StartStock(t, func(o *server.Options) { o.JetStreamLimits.DefaultMaxConsumers = limit })
	f := fixtureOn(t, env, true)
	ctx := context.Background()
	stream, err := f.env.JS.Stream(ctx, f.log.Stream())
	require.NoError(t, err)
	consumers := func() int {
		info, err := stream.Info(ctx)
		require.NoError(t, err)
		return info.State.Consumers
	}
	before := consumers()
	var running, canceled atomic.Int64
	f.pool(PoolConfig{Types: []string{"wide"}, Concurrency: jobs, CancelWatchDelay: time.Millisecond}, func(ctx context.Context, j *Job) error {
		running.Add(1)
		<-ctx.Done()
		if errors.Is(context.Cause(ctx), ErrCanceled) {
			canceled.Add(1)
		}
		return ctx.Err()
	})
	subs := f.env.JS.Conn().NumSubscriptions
	idle := subs()
	params := make([]statemachine.SubmitParams, jobs)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "wide"}
	}
	ids := make([]string, 0, jobs)
	for _, r := range f.m.SubmitMany(ctx, params) {
		require.NoError(t, r.Err)
		ids = append(ids, r.Job.ID)
	}
	natstest.Eventually(t, 30*time.Second, func() bool { return running.Load() == jobs }, "all %d jobs running (%d)", jobs, running.Load())
	require.Equal(t, before, consumers(), "consumers on the log with %d jobs running", jobs)
	for _, id := range ids {
		_, err := f.m.Cancel(ctx, id, "not needed")
		require.NoError(t, err)
	}
	natstest.Eventually(t, 30*time.Second, func() bool { return canceled.Load() == jobs }, "every handler canceled (%d of %d)", canceled.Load(), jobs)
	for _, id := range ids {
		f.waitState(id, statemachine.StateCanceled)
	}
	// A few subscriptions are made on first use, not one for each job.
	natstest.Eventually(t, 10*time.Second, func() bool { return subs() < idle+jobs/2 }, "the watches' subscriptions gone with their attempts (%d, %d before)", subs(), idle)
}

// A watch whose log holds less of the job than it read (a server with
// fsync interval lost its tail in a crash, and hands those sequences out
// again) reads from the log's end, so that a cancel stored at a sequence
// handed out again is seen.
func TestAWatchReadsAgainFromTheEndOfALogThatLostItsTail(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, false)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"t"}}, noop)
	require.NoError(t, err)
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	held, err := f.m.Acquire(ctx, j.ID, "w")
	require.NoError(t, err)
	from := held.Lease + 100 // read past what the log now holds
	recs, err := p.readNews(ctx, j.ID, held.Lease, &from)
	require.NoError(t, err)
	require.Empty(t, recs)
	require.Equal(t, held.Lease+1, from)
	canceling, err := f.m.Cancel(ctx, j.ID, "not needed")
	require.NoError(t, err)
	recs, err = p.readNews(ctx, j.ID, held.Lease, &from)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, canceling.Version, recs[0].Seq)
	require.Equal(t, events.TypeCancelRequested, recs[0].Event.Type)
}

// A watch that reads a replica that has not caught up with the attempt's
// acquire reads the job again from its end, but not from before the lease:
// there it read the earlier attempt's hand-back and stopped the running
// handler as having lost the job. A mirror with direct gets, filtered to
// hold none of the jobs, answers about half the reads as such a replica
// would.
func TestAWatchOnALaggingReplicaDoesNotReadEarlierAttempts(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, false)
	lg := f.m.Log()
	natstest.LaggingReplica(t, f.env.JS, lg.Stream(), lg.Subject("behind"))

	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"t"}}, noop)
	require.NoError(t, err)
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	first, err := f.m.Acquire(ctx, j.ID, "w1")
	require.NoError(t, err)
	_, err = f.m.Release(ctx, first, "worker shutting down")
	require.NoError(t, err)
	held, err := f.m.Acquire(ctx, j.ID, "w2")
	require.NoError(t, err)
	from := held.Lease + 1
	for i := range 20 {
		recs, err := p.readNews(ctx, j.ID, held.Lease, &from)
		require.NoError(t, err)
		for _, rec := range recs {
			require.Greater(t, rec.Seq, held.Lease, "read %d: %s of an earlier attempt", i, rec.Event.Type)
		}
	}
}

// A fleet larger than nats-server's default consumer limit (1,000 a stream;
// 3 on this server) works: every pool watches the tag set registry, and
// every tag set's queue has a consumer in its shard, so past the limit a
// pool could not start and a new tag set's jobs stayed pending.
func TestAFleetPastTheServersDefaultConsumerLimitRunsEveryJob(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	env := natstest.StartStock(t, func(o *server.Options) { o.JetStreamLimits.DefaultMaxConsumers = 3 })
	f := fixtureOn(t, env, true)
	var ids []string
	for i := range 40 {
		tags := map[string]string{"set": strconv.Itoa(i)}
		f.pool(PoolConfig{Types: []string{"t"}, Tags: tags}, noop)
		ids = append(ids, f.submit(statemachine.SubmitParams{Type: "t", Tags: tags}).ID)
	}
	for _, id := range ids {
		f.waitState(id, statemachine.StateSucceeded)
	}
}

// An attempt whose beat finds a later attempt's beat has lost the job: its
// handler is stopped at once, without waiting for the job's events.
func TestAHandlerWhoseJobALaterAttemptBeatsIsStopped(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	// Beats every 1.5 s, and stopped as out of contact after 4.5 s without
	// an ack: with a hang-after of 600 ms (300 ms), a beat slow under load
	// stopped the handler as out of contact before the later beat was seen.
	f.publishHangAfter(9 * time.Second)
	hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
	require.NoError(t, err)
	started := make(chan *Job, 1)
	causes := make(chan error, 1)
	f.pool(PoolConfig{Types: []string{"superseded"}, CancelWatchDelay: time.Hour}, func(ctx context.Context, j *Job) error {
		started <- j
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return ctx.Err()
	})
	f.submit(statemachine.SubmitParams{Type: "superseded"})
	j := <-started
	natstest.Eventually(t, 10*time.Second, func() bool {
		b, ok, err := hb.Last(context.Background(), j.ID)
		return err == nil && ok && b.Lease == j.Lease
	}, "a beat of job %s", j.ID)
	require.NoError(t, hb.Record(context.Background(), events.Beat{JobID: j.ID, Lease: j.Lease + 1000, WorkerID: "elsewhere", At: time.Now().UTC()}))
	select {
	case cause := <-causes:
		require.ErrorIs(t, cause, ErrLeaseLost)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler ran on after a later attempt beat")
	}
}

// A beat whose reply was lost with the connection does not hold the next
// beats back once the connection is made again: the attempt beats at once,
// rather than waiting out the beat and being stopped as out of contact.
func TestABeatLostWithTheConnectionDoesNotStopTheJob(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	// Beats every 2.5 s, and stopped as out of contact after 7.5 s without
	// an ack: the reconnect and the beat after it have 5 s. With 3 s (a
	// hang-after of 9 s) a CI run beside another test run overran them
	// by 0.2 s; with 400 ms (1.2 s) a loaded machine did. Waiting out the
	// lost beat (the defect) takes the whole 7.5 s.
	f.publishHangAfter(15 * time.Second)
	hb, err := events.OpenHeartbeats(context.Background(), f.env.JS)
	require.NoError(t, err)
	var loseNext atomic.Bool
	lost := make(chan struct{}, 1)
	started := make(chan *Job, 1)
	causes := make(chan error, 1)
	release := make(chan struct{})
	proxy := f.proxiedPool(PoolConfig{Types: []string{"reconnects"}, CancelWatchDelay: time.Hour}, func(ctx context.Context, j *Job) error {
		started <- j
		select {
		case <-release:
		case <-ctx.Done():
		}
		causes <- context.Cause(ctx)
		return nil
	}, func(p *Pool) {
		record := p.recordBeat
		p.recordBeat = func(ctx context.Context, b events.Beat, after uint64) (uint64, error) {
			if loseNext.CompareAndSwap(true, false) {
				lost <- struct{}{}
				<-ctx.Done() // its reply never comes
				return 0, ctx.Err()
			}
			return record(ctx, b, after)
		}
	})
	f.submit(statemachine.SubmitParams{Type: "reconnects"})
	j := <-started
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, ok, err := hb.Last(context.Background(), j.ID)
		return err == nil && ok
	}, "a beat of job %s", j.ID)
	loseNext.Store(true)
	<-lost
	proxy.Cut()
	proxy.Restore()
	restored := time.Now()
	natstest.Eventually(t, 10*time.Second, func() bool {
		b, ok, err := hb.Last(context.Background(), j.ID)
		return err == nil && ok && b.At.After(restored)
	}, "a beat of job %s after the connection came back", j.ID)
	close(release)
	require.NoError(t, <-causes, "stopped although in contact")
}

// A wake-up goes to one pool, which passes it on to every pool when it has
// no free slot or does not serve the job's tags: the job starts at once on
// a pool that can run it, not at the next backup poll (an hour here).
func TestASharedWakeUpReachesAPoolThatCanRunTheJob(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	block := make(chan struct{})
	busyStarted := make(chan struct{}, 1)
	hold := map[string]string{"hold": "yes"}
	f.pool(PoolConfig{Types: []string{"w"}, Tags: hold, Concurrency: 1, BackupPoll: time.Hour}, func(ctx context.Context, j *Job) error {
		if j.Tags["hold"] == "yes" {
			busyStarted <- struct{}{}
			select {
			case <-block:
			case <-ctx.Done():
			}
		}
		return nil
	})
	gpu := map[string]string{"gpu": "yes"}
	f.pool(PoolConfig{Types: []string{"w"}, Tags: gpu, Concurrency: 1, BackupPoll: time.Hour}, func(context.Context, *Job) error { return nil })
	f.pool(PoolConfig{Types: []string{"w"}, Tags: map[string]string{"gpu": "no"}, Concurrency: 4, BackupPoll: time.Hour}, func(context.Context, *Job) error { return nil })
	held := f.submit(statemachine.SubmitParams{Type: "w", Tags: hold})
	select {
	case <-busyStarted:
	case <-time.After(10 * time.Second):
		t.Fatal("the held job did not start")
	}
	f.waitState(held.ID, statemachine.StateRunning)
	// Untagged jobs can run on all three pools, the first of which is full;
	// gpu jobs on the second alone. Each wake-up goes to one pool at
	// random, so 20 of each meet every case.
	for i := range 20 {
		for _, p := range []statemachine.SubmitParams{{Type: "w"}, {Type: "w", Tags: gpu}} {
			j := f.submit(p)
			natstest.Eventually(t, 5*time.Second, func() bool {
				got, err := f.m.Load(context.Background(), j.ID)
				return err == nil && got.State == statemachine.StateSucceeded
			}, "job %d (tags %v) run", i, p.Tags)
		}
	}
	close(block)
}

// Idle pools serving one queue take each job with about one fetch, not one
// each: the wake-up goes to one of them.
func TestIdlePoolsShareAWakeUp(t *testing.T) {
	f := newFixture(t, true)
	var asks atomic.Int64
	sub, err := f.env.NC.Subscribe("$JS.API.CONSUMER.MSG.NEXT.>", func(m *nats.Msg) {
		if strings.Contains(m.Subject, ".JJ_QUEUE_") {
			asks.Add(1)
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	done := make(chan struct{}, 1)
	for range 4 {
		f.pool(PoolConfig{Types: []string{"shared"}, Concurrency: 2, BackupPoll: time.Hour}, func(context.Context, *Job) error {
			done <- struct{}{}
			return nil
		}, func(p *Pool) {
			// A claim not fetched within its 5 ms window is passed on to
			// every pool, by design: on a loaded machine a pool's fetch
			// often came later than that, every pool was woken for most
			// jobs, and 220 fetches were counted for 30. The test is of
			// the sharing, not of the machine's scheduling delay.
			p.claimWindow = time.Minute
		})
	}
	f.submit(statemachine.SubmitParams{Type: "shared"}) // makes the queue
	<-done
	const jobs = 30
	before := asks.Load()
	for range jobs {
		f.submit(statemachine.SubmitParams{Type: "shared"})
		<-done
	}
	// Every pool woken would ask 4 times a job, and again after an empty
	// answer. A shared wake-up costs about one ask a job, more on a loaded
	// machine (up to 2.6 seen), where a pool's fetch can come back before
	// the job's message is there to take.
	n := asks.Load() - before
	t.Logf("%d fetches for %d jobs", n, jobs)
	require.Less(t, n, int64(4*jobs))
}

// OnResult hears of every outcome once, after its event is in the log,
// whatever the outcome was.
func TestOnResultPassesEachRecordedOutcome(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	results := make(chan Result, 16)
	running := make(chan struct{})
	broken := errors.New("bad input")
	f.pool(PoolConfig{Types: []string{"ok", "flaky", "broken", "long"}, OnResult: func(r Result) { results <- r }},
		func(ctx context.Context, j *Job) error {
			switch j.Type {
			case "flaky":
				if j.Attempt == 1 {
					return errors.New("not yet")
				}
			case "broken":
				return NoRetry(broken)
			case "long":
				close(running)
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
	next := func() Result {
		t.Helper()
		select {
		case r := <-results:
			// Recorded: the log holds the event the result reports.
			seq, err := f.log.LastSeq(context.Background(), r.Job.ID)
			require.NoError(t, err)
			require.GreaterOrEqual(t, seq, r.Job.Version, "result passed on before its event was stored")
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no result within 10s")
			return Result{}
		}
	}

	ok := f.submit(statemachine.SubmitParams{Type: "ok"})
	r := next()
	require.Equal(t, ok.ID, r.Job.ID)
	require.Equal(t, statemachine.StateSucceeded, r.Job.State)
	require.NoError(t, r.Err)

	flaky := f.submit(statemachine.SubmitParams{Type: "flaky", MaxAttempts: 2,
		Backoff: statemachine.BackoffConfig{Base: 50 * time.Millisecond}})
	r = next()
	require.Equal(t, flaky.ID, r.Job.ID)
	require.Equal(t, statemachine.StateScheduled, r.Job.State)
	require.EqualError(t, r.Err, "not yet")
	r = next()
	require.Equal(t, statemachine.StateSucceeded, r.Job.State)
	require.Equal(t, 2, r.Job.Attempt)

	bad := f.submit(statemachine.SubmitParams{Type: "broken", MaxAttempts: 5})
	r = next()
	require.Equal(t, bad.ID, r.Job.ID)
	require.Equal(t, statemachine.StateFailed, r.Job.State)
	require.ErrorIs(t, r.Err, broken)
	require.Equal(t, "bad input", r.Job.Error)

	long := f.submit(statemachine.SubmitParams{Type: "long"})
	<-running
	_, err := f.m.Cancel(context.Background(), long.ID, "")
	require.NoError(t, err)
	r = next()
	require.Equal(t, long.ID, r.Job.ID)
	require.Equal(t, statemachine.StateCanceled, r.Job.State)
	require.ErrorIs(t, r.Err, context.Canceled)

	select {
	case r := <-results:
		t.Fatalf("an outcome passed on twice: %+v", r)
	default:
	}
}

// Two Stops of an enqueuer at once each return once its goroutines ended
// (the second returned at once, and after a Start the first then waited
// for the new run too), and a Start after them runs it anew.
func TestASecondStopOfTheEnqueuerReturnsOnceItEnded(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, false)
	entered := make(chan struct{}, 8)
	release := make(chan struct{})
	var listing atomic.Int32
	lister := func(ctx context.Context, _ []statemachine.State) ([]QueuedJob, error) {
		listing.Add(1)
		defer listing.Add(-1)
		entered <- struct{}{}
		<-release // a slow listing, as of a large backlog
		return nil, nil
	}
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileEvery: time.Hour})
	require.NoError(t, err)
	require.NoError(t, enq.Start(context.Background()))
	<-entered
	firstDone := make(chan struct{})
	go func() { enq.Stop(); close(firstDone) }()
	natstest.Eventually(t, 5*time.Second, func() bool {
		enq.mu.Lock()
		defer enq.mu.Unlock()
		return enq.cancel == nil
	}, "the first Stop under way")
	// Ends the listing later, for the second Stop to wait for.
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	enq.Stop()
	require.Zero(t, listing.Load(), "the second Stop returned while the enqueuer still ran")
	<-firstDone
	require.NoError(t, enq.Start(context.Background()))
	<-entered // a reconcile pass of the new run
	enq.Stop()
}

// Pools started and stopped one after another on a connection that goes on
// leave none of their subscriptions behind: each left the one its job log
// lines' acks came back on, with a goroutine.
func TestStoppedPoolsLeaveNoSubscriptionsBehind(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	run := func() {
		p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"cycled"}, Logger: zaptestLogger(t)},
			func(_ context.Context, j *Job) error {
				j.Log("hello")
				return nil
			})
		require.NoError(t, err)
		require.NoError(t, p.Start(context.Background()))
		j := f.submit(statemachine.SubmitParams{Type: "cycled"})
		f.waitState(j.ID, statemachine.StateSucceeded)
		require.NoError(t, p.Stop(context.Background()))
	}
	run() // what the connection's own users make once, as the log's
	// A stopped pool's watches are unsubscribed by nats.go once their ctx
	// has ended, a moment after Stop returns (Stop does not wait for their
	// consumers' deletes): so before may still count the first pool's, and
	// the count after is waited for. A subscription left by each pool would
	// still be five more.
	before := f.env.NC.NumSubscriptions()
	for range 5 {
		run()
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return f.env.NC.NumSubscriptions() <= before },
		"subscriptions after five more pools back to those after the first")
}

// An acquire that went unanswered but was stored is found by the take that
// made it; a second take of the job (its queue message delivered again),
// whose acquire also went unanswered, finds the same attempt and must not
// run it too.
func TestAnAttemptFoundByTwoTakesRunsOnce(t *testing.T) {
	f := newFixture(t, false)
	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"t"}, WorkerID: "w1"}, noop)
	require.NoError(t, err)
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	stored, err := f.m.Acquire(context.Background(), j.ID, "w1") // its answer lost
	require.NoError(t, err)
	found, ok := p.acquiredAnyway(j.ID, j.Version)
	require.True(t, ok, "the first take finds the attempt stored for this worker, and runs it")
	require.Equal(t, stored.Lease, found.Lease)
	_, ok = p.acquiredAnyway(j.ID, j.Version)
	require.False(t, ok, "the second finds it claimed")
	require.False(t, p.claimLease(stored.Lease, j.ID), "as the take whose acquire was answered would")

	// The first take's run ended: its result recorded, its claim given up.
	_, err = f.m.Succeed(context.Background(), stored, nil)
	require.NoError(t, err)
	p.mu.Lock()
	delete(p.claimed, stored.Lease)
	p.mu.Unlock()
	_, ok = p.acquiredAnyway(j.ID, j.Version)
	require.False(t, ok, "a finished attempt is not run again")
}

// keyValueUnanswered fails the failAt-th KeyValue lookup as unanswered.
type keyValueUnanswered struct {
	jetstream.JetStream
	calls, failAt atomic.Int32
}

func (k *keyValueUnanswered) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	if k.calls.Add(1) == k.failAt.Load() {
		return nil, context.DeadlineExceeded // as while a cluster elects a leader
	}
	return k.JetStream.KeyValue(ctx, bucket)
}

// An enqueuer whose Start failed half way (a request unanswered after its
// consumers were made) starts whole when asked again, as a server's start
// asks during an election; the second Start skipped the setup left and
// dereferenced the unbound tag sets.
func TestAnEnqueuerStartedAgainAfterAFailedStartStartsWhole(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, false)
	counted := &keyValueUnanswered{JetStream: f.env.JS}
	probe, err := NewEnqueuer(counted, f.m, EnqueuerConfig{})
	require.NoError(t, err)
	require.NoError(t, probe.setup(context.Background()))
	js := &keyValueUnanswered{JetStream: f.env.JS}
	js.failAt.Store(counted.calls.Load()) // the last: the tag sets, after the consumers
	enq, err := NewEnqueuer(js, f.m, EnqueuerConfig{})
	require.NoError(t, err)
	require.ErrorIs(t, enq.Start(context.Background()), context.DeadlineExceeded)
	require.NoError(t, enq.Start(context.Background()))
	t.Cleanup(enq.Stop)
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	f.pool(PoolConfig{Types: []string{"t"}}, noop)
	f.waitState(j.ID, statemachine.StateSucceeded)
}

// A wake-up that went to a worker process that stopped reading (frozen by
// SIGSTOP, a paused VM) is sent again to every pool: its job waited for a
// pool's backup poll, 30 s by default, while another pool sat idle.
func TestAWakeUpLostWithAFrozenWorkerIsSentToEveryPool(t *testing.T) {
	f := newFixture(t, true)
	started := make(chan string, 64)
	f.pool(PoolConfig{Types: []string{"t"}, BackupPoll: time.Hour}, func(_ context.Context, j *Job) error {
		started <- j.ID
		return nil
	})
	// A connection in the pools' queue group that takes wake-ups and does
	// nothing with them, as a frozen process's does.
	frozen, err := nats.Connect(f.env.URL)
	require.NoError(t, err)
	t.Cleanup(frozen.Close)
	var swallowed atomic.Int64
	_, err = frozen.QueueSubscribe(wakePrefix+"t.>", wakeGroup, func(*nats.Msg) { swallowed.Add(1) })
	require.NoError(t, err)
	require.NoError(t, frozen.Flush())

	// Each wake-up goes to one of the two: submit until one is lost.
	var lost string
	for range 40 {
		j := f.submit(statemachine.SubmitParams{Type: "t"})
		select {
		case <-started:
			continue
		case <-time.After(RewakeAfterDefault / 2):
			lost = j.ID
		}
		break
	}
	require.NotEmpty(t, lost, "no wake-up went to the frozen connection")
	require.Positive(t, swallowed.Load())
	select {
	case id := <-started:
		require.Equal(t, lost, id)
	case <-time.After(10 * time.Second):
		t.Fatalf("job %s not started 10 s after its wake-up was lost", lost)
	}
	f.waitState(lost, statemachine.StateSucceeded)
}

// A queue whose last woken job stays queued (every pool busy, or none
// serving it) is woken again at growing intervals, and forgotten once the
// job's message is taken.
func TestAQueueWhoseJobStaysQueuedIsWokenLessAndLessOften(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx := context.Background()
	f := newFixture(t, false)
	now := time.Now()
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	at := func(d time.Duration) { t := now.Add(d); clock.Store(&t) }
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Now: func() time.Time { return *clock.Load() }})
	require.NoError(t, err)
	j := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err = enq.runOnce(ctx)
	require.NoError(t, err)

	for _, step := range []struct {
		at   time.Duration
		woke int
	}{
		{900 * time.Millisecond, 0},
		{time.Second, 1}, // then again in 2 s
		{2900 * time.Millisecond, 0},
		{3 * time.Second, 1}, // then in 4 s
		{6 * time.Second, 0},
		{7 * time.Second, 1},
	} {
		at(step.at)
		require.Equal(t, step.woke, enq.rewakeLost(ctx), "at %s", step.at)
	}
	// A new job of the queue keeps its pace (next at 15 s), or a submit a
	// second would wake every pool as often.
	at(8 * time.Second)
	later := f.submit(statemachine.SubmitParams{Type: "t"})
	_, err = enq.runOnce(ctx)
	require.NoError(t, err)
	at(9500 * time.Millisecond)
	require.Zero(t, enq.rewakeLost(ctx))
	at(15 * time.Second)
	require.Equal(t, 1, enq.rewakeLost(ctx))
	key := queueKey{Type: "t", Tagset: noTags}
	q, err := f.env.JS.Stream(ctx, key.stream())
	require.NoError(t, err)
	for _, id := range []string{j.ID, later.ID} {
		require.NoError(t, q.Purge(ctx, jetstream.WithPurgeSubject(key.subject(id)))) // as a pool's take does
	}
	at(time.Hour)
	require.Zero(t, enq.rewakeLost(ctx))
	enq.wokenMu.Lock()
	defer enq.wokenMu.Unlock()
	require.Empty(t, enq.woken, "the queue forgotten once its job was taken")
}

// An attempt's result is recorded only once the server has stored the
// lines the attempt logged: a reader who sees the job end (`jetjob logs`
// after it failed, `logs -f` stopping at its end) finds every line. Before,
// the result went as the handler returned, and the last lines could land
// after it.
func TestAResultWaitsForItsAttemptsLogLines(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	proxy := natstest.NewProxy(t, f.env.URL)
	f.poolThrough(proxy, false, PoolConfig{Types: []string{"lastwords"}}, func(ctx context.Context, j *Job) error {
		j.Log("last words")
		proxy.Stall()
		time.AfterFunc(300*time.Millisecond, proxy.Restore) // the line delayed, not lost
		return nil
	})
	logs, err := AttachLogs(ctx, f.env.JS)
	require.NoError(t, err)

	j := f.submit(statemachine.SubmitParams{Type: "lastwords"})
	var linesAtTheEnd []LogLine
	natstest.Eventually(t, 10*time.Second, func() bool {
		held, err := f.m.Load(ctx, j.ID)
		require.NoError(t, err)
		if held.State != statemachine.StateSucceeded {
			return false
		}
		linesAtTheEnd, err = logs.Read(ctx, j.ID)
		require.NoError(t, err)
		return true
	}, "job %s succeeded", j.ID)
	require.Len(t, linesAtTheEnd, 1, "the lines stored when the job was seen to succeed")
	require.Equal(t, "last words", linesAtTheEnd[0].Line)
}

// A Stop whose ctx ends does not hold a result back for its lines' acks:
// the result is recorded, once, as Stop's ctx ending promises, and Stop
// says nothing went unrecorded. Waiting for the acks until they timed out,
// the result was recorded after Stop had returned (with "0 handlers had
// not returned (jobs )"), or never if the process exited then, and the job
// was left running for the hang detector to fail and run again.
func TestAStopThatRunsOutOfTimeRecordsResultsWhoseLinesAreUnacknowledged(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	ctx := context.Background()
	proxy := natstest.NewProxy(t, f.env.URL)
	returned := make(chan struct{})
	p := f.poolThrough(proxy, false, PoolConfig{Types: []string{"lastwords"}}, func(ctx context.Context, j *Job) error {
		j.Log("last words")
		proxy.Stall()
		close(returned)
		return nil
	}, func(p *Pool) { p.logAckTimeout = time.Minute }) // the line's ack not given up on meanwhile

	j := f.submit(statemachine.SubmitParams{Type: "lastwords"})
	<-returned
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	require.NoError(t, p.Stop(sctx))
	done, err := f.m.Load(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, statemachine.StateSucceeded, done.State, "the result recorded when Stop returned")
}

// Stop returns by its ctx's deadline when the connection is stalled, or 2 s
// after it with a job to hand back (as documented): the hang-after watch
// was stopped with a call that waits for its consumer's delete, for
// nats.go's 5 s whatever ctx said, and an idle pool's Stop with 3 s left
// took 5 s, one with a running job 10 s.
func TestStopEndsByItsCtxOnAStalledConnection(t *testing.T) {
	for _, tc := range []struct {
		name    string
		running bool
		past    time.Duration // how long after the deadline Stop may return
	}{
		{"idle", false, 0},
		{"a job running", true, handBackReserve},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true)
			proxy := natstest.NewProxy(t, f.env.URL)
			started := make(chan struct{}, 1)
			p := f.poolThrough(proxy, true, PoolConfig{Types: []string{"stalledstop"}}, func(ctx context.Context, j *Job) error {
				started <- struct{}{}
				<-ctx.Done()
				return context.Cause(ctx)
			})
			var j statemachine.Job
			if tc.running {
				j = f.submit(statemachine.SubmitParams{Type: "stalledstop"})
				<-started
			}
			proxy.Stall()
			const within = 3 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), within)
			defer cancel()
			began := time.Now()
			err := p.Stop(ctx)
			took := time.Since(began)
			if tc.running {
				require.ErrorIs(t, err, ErrNotRecorded, "the hand-back could not be recorded")
				// Its handler returned: the error names the job as one
				// whose hand-back was under way. It said "0 handlers had
				// not returned (jobs )".
				require.Contains(t, err.Error(), "the results or hand-backs of job "+j.ID+" were still being recorded")
				require.NotContains(t, err.Error(), "had not returned")
			} else {
				require.NoError(t, err)
			}
			margin := time.Second // a loaded machine's
			require.Less(t, took, within+tc.past+margin, "Stop returned %s after its deadline", took-within)
		})
	}
}

// A reconcile pass asks the queue stream's leader before it takes a job's
// queue message for lost: the look-up is a direct get, and on a cluster a
// replica that has not caught up answered "not found" for messages it did
// not have yet, and the pass enqueued those jobs a second time (52 after a
// node was paused, in a cluster helper's run). A mirror with direct gets,
// holding none of the jobs' messages, answers about half of the look-ups
// here as such a replica would.
func TestReconcileDoesNotTakeALaggingReplicasWordForALostMessage(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	key := queueKey{Type: "t", Tagset: noTags}
	natstest.LaggingReplica(t, f.env.JS, key.stream(), key.subject("behind"))

	before := f.queued() // the mirror's message
	var listed []QueuedJob
	for range 20 {
		j := f.submit(statemachine.SubmitParams{Type: "t"})
		listed = append(listed, QueuedJob{ID: j.ID, Type: j.Type, State: j.State, UpdatedAt: j.UpdatedAt, Version: j.Version})
	}
	// A minute: runOnce's last fetch waits 100 ms, and under load the
	// server can hand it events after the client gave up on it; they come
	// again only after the enqueuer consumer's ack wait (30 s). 10 s failed
	// 4 runs in 10 at a load average of 40 on 2 cores.
	natstest.Eventually(t, time.Minute, func() bool {
		_, err := f.enq.runOnce(ctx)
		require.NoError(t, err)
		return f.queued() == before+uint64(len(listed))
	}, "every job enqueued")
	lister := func(context.Context, []statemachine.State) ([]QueuedJob, error) { return listed, nil }
	enq, err := NewEnqueuer(f.env.JS, f.m, EnqueuerConfig{Lister: lister, ReconcileAge: time.Nanosecond})
	require.NoError(t, err)
	res, err := enq.Reconcile(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Requeued, "jobs re-enqueued beside their queue messages")
}

// A read of a job's lines on a cluster rides out a fetch answered "no
// responders": the pull of the consumer each read makes can reach a server
// before the consumer's interest does, and jetjob logs exited 1 now and
// then (3 reads in 60, with the cluster at rest) with the lines there.
func TestLogsReadOnAClusterRidesOutAFetchWithNoResponders(t *testing.T) {
	t.Parallel() // its reads mostly wait out their fetches
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	_, js := natstest.Connect(t, c.URL)
	require.NoError(t, EnsureTopology(ctx, provision.WithReplicas(js, 3)))
	logs, err := AttachLogs(ctx, js)
	require.NoError(t, err)
	require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: 1, Stream: StreamStdout, Line: "stored"}))
	// The servers' reads run side by side: each read waits out its fetch
	// (a quarter second), and one after the other they took 25 s.
	var wg sync.WaitGroup
	for _, ns := range c.Servers {
		_, js := natstest.Connect(t, ns.ClientURL())
		logs, err := AttachLogs(ctx, js)
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 30 {
				lines, err := logs.Read(ctx, "job-1")
				if !assert.NoError(t, err, "read from %s", ns.ClientURL()) || !assert.Len(t, lines, 1, "read from %s", ns.ClientURL()) {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A read of a finished job's lines gets them all where a replica that has
// not caught up answers direct gets (a node restarted serves them once 90%
// caught up): the lookup of the job's last line, answered "none" by it,
// read no line and returned no error, and jetjob logs printed nothing and
// exited 0 for a job whose lines were all stored (a cluster soak read 1
// job of 40 so, with a node restarted).
func TestLogsReadOnALaggingReplicaReadsEveryLine(t *testing.T) {
	t.Parallel() // its reads wait on the lagging replica
	env := natstest.Start(t)
	ctx := context.Background()
	require.NoError(t, EnsureTopology(ctx, env.JS))
	natstest.LaggingReplica(t, env.JS, LogsStream, logSubject("other-job"))
	logs, err := AttachLogs(ctx, env.JS)
	require.NoError(t, err)
	for n := range int64(3) {
		require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: n + 1, Lease: 5, Stream: StreamStdout, Line: "stored"}))
	}
	for range 30 {
		lines, err := logs.Read(ctx, "job-1")
		require.NoError(t, err)
		require.Len(t, lines, 3)
	}
}

// Lines whose acks failed with the connection cut are sent again before
// the attempt's result is recorded, and each is read once: lost on their
// way, they were missing from a finished job's log (a cluster soak saw 20
// jobs of 2,178 end so, their workers connected to a node killed or
// paused); stored with their answers lost, they are stored twice, and the
// readers pass over the second copy.
func TestLinesWhoseAcksFailedAreSentAgainBeforeTheResult(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	for _, tc := range []struct {
		name      string
		stall     func(*natstest.Proxy)
		whileHeld int // copies stored while the stall holds bytes
		stored    int // copies stored in all
	}{
		{"lost on their way", (*natstest.Proxy).Stall, 1, 3},
		{"stored, their answers lost", (*natstest.Proxy).StallAnswers, 3, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true)
			ctx := context.Background()
			proxy := natstest.NewProxy(t, f.env.URL)
			p, started, returning := f.cutLinesPool(t, proxy, 500*time.Millisecond)
			logs, err := AttachLogs(ctx, f.env.JS)
			require.NoError(t, err)
			subject := logSubject(f.submit(statemachine.SubmitParams{Type: "cutlines"}).ID)
			storedCopies := func() int {
				info, err := logs.stream.Info(ctx, jetstream.WithSubjectFilter(subject))
				require.NoError(t, err)
				return int(info.State.Subjects[subject])
			}

			job := <-started
			natstest.Eventually(t, 10*time.Second, func() bool { return storedCopies() == 1 }, "the first line stored")
			// And acknowledged: held by the stall, its ack would fail too,
			// and the line be stored again.
			natstest.Eventually(t, 10*time.Second, func() bool { return p.logJS.PublishAsyncPending() == 0 }, "the first line acknowledged")
			tc.stall(proxy)
			job.Log("second")
			job.Log("third")
			natstest.Eventually(t, 10*time.Second, func() bool { return proxy.Holding() && storedCopies() == tc.whileHeld }, "the lines held, or stored")
			proxy.Cut() // what the stall held is lost
			proxy.Restore()
			close(returning)
			f.waitState(job.ID, statemachine.StateSucceeded)

			require.Equal(t, tc.stored, storedCopies(), "copies stored")
			lines, err := logs.Read(ctx, job.ID)
			require.NoError(t, err)
			var got []string
			for _, l := range lines {
				got = append(got, l.Line)
			}
			require.Equal(t, []string{"first", "second", "third"}, got, "every line, each once, when the job ended")
			var followed []string
			require.NoError(t, logs.Follow(ctx, job.ID, func(context.Context) bool { return true }, func(l LogLine) { followed = append(followed, l.Line) }))
			require.Equal(t, got, followed, "followed")
		})
	}
}

// heldAndCut logs 4,001 lines while the proxy stalls, one more than the
// publisher lets await their acks (the last is refused at once, the others
// held), then cuts the connection so that what the stall held is lost, and
// restores it. It returns the lines the job's log must then hold.
func heldAndCut(t *testing.T, job *Job, proxy *natstest.Proxy, nc *nats.Conn) []string {
	want := []string{"first"}
	for i := 1; i <= 4001; i++ {
		want = append(want, fmt.Sprintf("held %d", i))
		job.Log(want[len(want)-1])
	}
	proxy.Cut()
	natstest.Eventually(t, 10*time.Second, func() bool { return !nc.IsConnected() }, "the cut noticed")
	proxy.Restore()
	return want
}

// Lines whose acks failed are sent again in the order they were written,
// and only those among their attempt's last LogLinesPerJob lines:
//   - a line refused at once (too many lines awaiting their acks) was sent
//     again before the earlier lines whose acks then failed, and jetjob
//     logs showed it before them;
//   - the stream keeps a job's last LogLinesPerJob lines, and the lines an
//     attempt lost before it wrote 10,000 more, sent again at its end,
//     pushed out as many of its last lines;
//   - lines sent again one round trip after the other did not fit in the
//     window a pool lets them (4,001 lines at 5 ms between nodes).
func TestLinesSentAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	for _, tc := range []struct {
		name string
		// write logs lines of job, with the proxy stalled, and returns the
		// lines the job's log must then hold.
		write func(t *testing.T, job *Job, proxy *natstest.Proxy, nc *nats.Conn) []string
		// byNumber: a line may be stored twice (its ack lost as the
		// connection came back), the second copy then kept instead of the
		// first, so the lines are compared in number order.
		byNumber bool
	}{
		{"in their order", func(t *testing.T, job *Job, proxy *natstest.Proxy, nc *nats.Conn) []string {
			return heldAndCut(t, job, proxy, nc)
		}, false},
		{"within the window from a server a round trip away", func(t *testing.T, job *Job, proxy *natstest.Proxy, nc *nats.Conn) []string {
			want := heldAndCut(t, job, proxy, nc)
			// Each line sent again one round trip after the other took
			// 4,001 x 5 ms, 20 s, against the 10 s the pool lets them.
			natstest.Eventually(t, 10*time.Second, nc.IsConnected, "connected again")
			proxy.DelayAnswers(5 * time.Millisecond)
			return want
		}, false},
		{"among the attempt's last", func(t *testing.T, job *Job, proxy *natstest.Proxy, nc *nats.Conn) []string {
			job.Log("lost")
			natstest.Eventually(t, 10*time.Second, proxy.Holding, "the line held")
			proxy.Cut()
			natstest.Eventually(t, 10*time.Second, func() bool { return !nc.IsConnected() }, "the cut noticed")
			proxy.Restore()
			natstest.Eventually(t, 10*time.Second, nc.IsConnected, "connected again")
			var want []string
			for i := 1; i <= LogLinesPerJob; i++ {
				want = append(want, fmt.Sprintf("late %d", i))
				job.Log(want[len(want)-1])
			}
			return want
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true)
			proxy := natstest.NewProxy(t, f.env.URL)
			// The default ack timeout, which is also the window the lines
			// are sent again in: the held lines fail at the cut, not by it,
			// and with 2 s the race detector on a loaded machine (2
			// cores, load 35) sent 800 to 1,600 of the 4,001 lines in
			// time, all their acks coming back. One round trip a line at
			// 5 ms still takes 20 s.
			p, started, returning := f.cutLinesPool(t, proxy, logAckTimeoutDefault)
			logs, id := f.firstLineStored(t)
			job := <-started
			proxy.Stall()
			want := tc.write(t, job, proxy, p.nc)
			close(returning)
			// The result waits for the acks that fail, then for thousands
			// of lines sent again: longer than waitState's 10 s on a
			// loaded machine.
			natstest.Eventually(t, 2*time.Minute, func() bool {
				j, err := f.m.Load(context.Background(), id)
				return err == nil && j.State == statemachine.StateSucceeded
			}, "job %s succeeded", id)

			lines, err := logs.Read(context.Background(), id)
			require.NoError(t, err)
			if tc.byNumber {
				slices.SortFunc(lines, func(a, b LogLine) int { return cmp.Compare(a.Number, b.Number) })
			}
			got := make([]string, 0, len(lines))
			for _, l := range lines {
				got = append(got, l.Line)
			}
			require.Equal(t, want, got)
		})
	}
}

// A read of a job's lines gives each run's numbered lines in their numbers'
// order, the other lines where they were stored: a line whose ack failed
// is sent again when its attempt ends, after the lines that followed it
// were stored (the connection flushes what it held when it is made again),
// and jetjob logs showed a job's first lines after its last (a cluster
// soak, a worker's node killed as its job began: lines 1-30 of 106 shown
// after line 106).
func TestLogsReadGivesEachRunsLinesInTheirOrder(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	type stored struct {
		lease  uint64
		number int64
	}
	for _, tc := range []struct {
		name         string
		stored, read []stored
	}{
		{"first lines sent again at the end",
			[]stored{{5, 3}, {5, 4}, {5, 5}, {5, 1}, {5, 2}},
			[]stored{{5, 1}, {5, 2}, {5, 3}, {5, 4}, {5, 5}}},
		{"a line stored twice read once",
			[]stored{{5, 2}, {5, 3}, {5, 1}, {5, 2}},
			[]stored{{5, 1}, {5, 2}, {5, 3}}},
		{"runs interleaved stay in their places",
			[]stored{{5, 2}, {9, 1}, {5, 3}, {9, 2}, {5, 1}},
			[]stored{{5, 1}, {9, 1}, {5, 2}, {9, 2}, {5, 3}}},
		{"the server's lines stay where they were stored",
			[]stored{{5, 2}, {0, 0}, {5, 1}, {9, 1}},
			[]stored{{5, 1}, {0, 0}, {5, 2}, {9, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, logs := startLogs(t)
			ctx := context.Background()
			for _, s := range tc.stored {
				line := LogLine{Time: time.Now().UTC(), Attempt: 1, Number: s.number, Lease: s.lease, Stream: StreamStdout, Line: fmt.Sprint(s.lease, "/", s.number)}
				require.NoError(t, logs.Append(ctx, "job-1", line))
			}
			lines, err := logs.Read(ctx, "job-1")
			require.NoError(t, err)
			got := make([]stored, 0, len(lines))
			for _, l := range lines {
				require.Equal(t, fmt.Sprint(l.Lease, "/", l.Number), l.Line, "a line and its number kept together")
				got = append(got, stored{l.Lease, l.Number})
			}
			require.Equal(t, tc.read, got)
		})
	}
}

// A read of a job's lines returns once it has every line stored when it
// was called, and a read of a job without lines at once: it waited out its
// fetch (a quarter second) after the last line came, and every jetjob logs,
// and every test that reads a log, took that long at least. Here a fetch
// would wait an hour.
func TestLogsReadEndsWithTheLastLineStored(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	env, logs := startLogs(t)
	ctx := context.Background()
	logs.fetchWait = time.Hour
	// More than a fetch takes, so that the last fetch is the one cut short.
	const n = 300
	for i := range int64(n) {
		require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: i + 1, Lease: 5, Stream: StreamStdout, Line: fmt.Sprint(i + 1)}))
	}
	require.NoError(t, logs.Append(ctx, "job-2", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: 1, Lease: 6, Stream: StreamStdout, Line: "another job's"}))
	// A fetch does not hear the read's context: the read runs apart, and
	// one that waits out its fetch is left behind.
	read := func(jobID string) ([]LogLine, error) {
		type result struct {
			lines []LogLine
			err   error
		}
		done := make(chan result, 1)
		go func() {
			lines, err := logs.Read(ctx, jobID)
			done <- result{lines, err}
		}()
		select {
		case r := <-done:
			return r.lines, r.err
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the read waited out its fetch after the last line", "job %s", jobID)
			return nil, nil
		}
	}
	// Counted before any read: a cut-short fetch's subscription goes once
	// the server answers its consumer's delete, which may come after its
	// read returned, so a count taken between reads can hold one.
	subs := env.NC.NumSubscriptions()
	lines, err := read("job-1")
	require.NoError(t, err)
	require.Len(t, lines, n)
	for i, l := range lines {
		require.Equal(t, int64(i+1), l.Number)
	}
	lines, err = read("job-3")
	require.NoError(t, err, "a job without lines")
	require.Empty(t, lines)
	// The fetch cut short ends with its consumer: it held a subscription
	// and a goroutine for as long as it would have waited.
	_, err = read("job-1")
	require.NoError(t, err)
	natstest.Eventually(t, 10*time.Second, func() bool { return env.NC.NumSubscriptions() == subs },
		"the read's fetch lets go of its subscription (%d, %d before)", env.NC.NumSubscriptions(), subs)
}

// A read of a job's lines makes one consumer, and so does a follow however
// many fetches it waits through: nats.go's ordered consumer made one when
// it was made and another at each fetch, the first included, so a read
// made two and a follow four a second while it waited.
func TestLogsReadAndFollowMakeOneConsumer(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	env, logs := startLogs(t)
	ctx := context.Background()
	logs.fetchWait = 20 * time.Millisecond
	for i := range int64(3) {
		require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: i + 1, Lease: 5, Stream: StreamStdout, Line: fmt.Sprint(i + 1)}))
	}
	// Every consumer creation nats.go asks for, named (with or without the
	// filter in the subject) or not.
	nc, _ := natstest.Connect(t, env.URL)
	var subs []*nats.Subscription
	for _, subject := range []string{"$JS.API.CONSUMER.CREATE." + LogsStream, "$JS.API.CONSUMER.CREATE." + LogsStream + ".>"} {
		sub, err := nc.SubscribeSync(subject)
		require.NoError(t, err)
		subs = append(subs, sub)
	}
	require.NoError(t, nc.Flush())
	// A create is sent before its reply, which the call waits for: once
	// this connection's round trip is done, it has every create made.
	creates := func() int {
		t.Helper()
		require.NoError(t, nc.Flush())
		n := 0
		for _, sub := range subs {
			for {
				if _, err := sub.NextMsg(0); err != nil {
					break
				}
				n++
			}
		}
		return n
	}
	lines, err := logs.Read(ctx, "job-1")
	require.NoError(t, err)
	require.Len(t, lines, 3)
	require.Equal(t, 1, creates(), "consumers made by a read")

	asked := 0
	var followed []string
	require.NoError(t, logs.Follow(ctx, "job-1", func(context.Context) bool {
		asked++
		return asked > 5 // five fetches waited out
	}, func(l LogLine) { followed = append(followed, l.Line) }))
	require.Equal(t, []string{"1", "2", "3"}, followed)
	require.Equal(t, 1, creates(), "consumers made by a follow")
}

// A read while the job's worker still writes returns, without error, the
// lines stored before it was called and maybe some stored after, in their
// order, none missing between: it reads up to the last line stored when it
// began.
func TestLogsReadWhileLinesAreWrittenReturnsWhatWasStored(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	_, logs := startLogs(t)
	ctx := context.Background()
	var stored atomic.Int64
	writing, stop := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if !assert.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: i, Lease: 5, Stream: StreamStdout, Line: fmt.Sprint(i)})) {
				return
			}
			stored.Store(i)
			if i == 50 {
				close(writing)
			}
		}
	}()
	defer wg.Wait()
	defer close(stop)
	<-writing
	for range 20 {
		before := stored.Load()
		readCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lines, err := logs.Read(readCtx, "job-1")
		cancel()
		require.NoError(t, err)
		require.GreaterOrEqual(t, int64(len(lines)), before, "the lines stored before the read")
		for i, l := range lines {
			require.Equal(t, int64(i+1), l.Number, "lines in order, none missing")
		}
	}
}

// A read of a job's lines that the server does not answer for
// followOutage says so, and that a cluster electing a leader is why: with
// the logs stream's leader paused, jetjob logs ended with "read logs of
// job ID: context deadline exceeded" alone.
func TestLogsReadThatIsNotAnsweredSaysWhy(t *testing.T) {
	t.Parallel() // waits out the follow's outage, 10 s
	env := natstest.Start(t)
	ctx := context.Background()
	require.NoError(t, EnsureTopology(ctx, env.JS))
	proxy := natstest.NewProxy(t, env.URL)
	_, js := natstest.Connect(t, proxy.URL)
	logs, err := AttachLogs(ctx, js)
	require.NoError(t, err)
	require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: 1, Lease: 5, Stream: StreamStdout, Line: "stored"}))
	proxy.StallAnswers()
	_, err = logs.Read(ctx, "job-1")
	require.ErrorContains(t, err, "the logs stream did not answer for 10s (a NATS cluster electing a leader takes seconds; try again)")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	proxy.Restore()
}

// startLogs starts a server with jetjob's streams and attaches to its job
// logs.
func startLogs(tb testing.TB) (*natstest.Env, *Logs) {
	tb.Helper()
	env := natstest.Start(tb)
	require.NoError(tb, EnsureTopology(context.Background(), env.JS))
	logs, err := AttachLogs(context.Background(), env.JS)
	require.NoError(tb, err)
	return env, logs
}

// A job's log given an ID that cannot name a job is invalid input, as the
// Machine's commands and projector.Reader.Get say it: a caller checks its
// input by statemachine.ErrInvalid.
func TestLogsOfAnInvalidJobIDAreInvalidInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	logs, err := AttachLogs(ctx, f.env.JS)
	require.NoError(t, err)
	for _, id := range []string{"", "a.b", "a*", "x>", strings.Repeat("a", 65)} {
		_, err := logs.Read(ctx, id)
		require.ErrorIs(t, err, statemachine.ErrInvalid, "read %q", id)
		require.ErrorIs(t, err, events.ErrInvalidJobID, "read %q", id)
		err = logs.Follow(ctx, id, nil, func(LogLine) {})
		require.ErrorIs(t, err, statemachine.ErrInvalid, "follow %q", id)
		err = logs.Append(ctx, id, LogLine{Time: time.Now(), Attempt: 1, Stream: StreamStdout, Line: "x"})
		require.ErrorIs(t, err, statemachine.ErrInvalid, "append %q", id)
		_, err = logs.Read(ctx, id)
		require.ErrorIs(t, err, events.ErrInvalidJobID, "read %q", id)
	}
}

// reportLanded passes on the job as the event that ended the attempt left
// it, as Result documents (its State is the outcome), not as the job is by
// the time of the read: a job failed under the lease, retried and taken
// by another worker since, was passed on running, another's attempt.
func TestReportLandedGivesTheJobAsTheAttemptsEndLeftIt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	j, _, err := f.m.Submit(ctx, statemachine.SubmitParams{Type: "moved", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: time.Millisecond, Cap: time.Millisecond}})
	require.NoError(t, err)
	held, err := f.m.Acquire(ctx, j.ID, "w1")
	require.NoError(t, err)
	_, err = f.m.Fail(ctx, held, statemachine.FailParams{Error: "boom"})
	require.NoError(t, err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := f.m.Promote(ctx, j.ID)
		return err == nil
	}, "the retry promoted")
	again, err := f.m.Acquire(ctx, j.ID, "w2")
	require.NoError(t, err)
	require.NotEqual(t, held.Lease, again.Lease)

	p, err := NewPool(f.env.JS, f.m, PoolConfig{Types: []string{"moved"}, WorkerID: "w1"}, noop)
	require.NoError(t, err)
	got, ok := p.reportLanded(held)
	require.True(t, ok, "the attempt was ended under its lease")
	require.Equal(t, statemachine.StateScheduled, got.State, "the outcome of the attempt")
	require.Equal(t, "boom", got.Error)
	require.Equal(t, 1, got.Attempt)
}

// A follow whose last line was lost on its way (sent by the server as the
// connection dropped) reads it again once the job is finished: its
// consumer, which needs no acks, had delivered the line and never sent it
// again, and the follow, finding a line stored past those passed, fetched
// nothing from it over and over until its ctx ended.
func TestAFollowReadsAgainALastLineLostOnItsWay(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := newFixture(t, false)
	proxy := natstest.NewProxy(t, f.env.URL)
	_, pjs := natstest.Connect(t, proxy.URL)
	follower, err := AttachLogs(ctx, pjs)
	require.NoError(t, err)
	writer, err := AttachLogs(ctx, f.env.JS)
	require.NoError(t, err)
	line := func(n int64, s string) LogLine {
		return LogLine{Time: time.Now().UTC(), Attempt: 1, Lease: 7, Number: n, Stream: StreamStdout, Line: s}
	}
	require.NoError(t, writer.Append(ctx, "job-1", line(1, "one")))

	var finished atomic.Bool
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- follower.Follow(ctx, "job-1", func(context.Context) bool { return finished.Load() },
			func(l LogLine) { got <- l.Line })
	}()
	require.Equal(t, "one", <-got)

	proxy.StallAnswers()
	require.NoError(t, writer.Append(ctx, "job-1", line(2, "two")))
	last, err := writer.leaderLastSeq(ctx, "job-1")
	require.NoError(t, err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		st, err := f.env.JS.Stream(ctx, LogsStream)
		require.NoError(t, err)
		consumers := st.ListConsumers(ctx)
		for info := range consumers.Info() {
			if info.Config.FilterSubject == logSubject("job-1") && info.Delivered.Stream >= last {
				return true
			}
		}
		return false
	}, "the last line sent to the follow, held on its way")
	proxy.Cut() // the line with it
	proxy.Restore()
	finished.Store(true)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the follow did not return")
	}
	require.Len(t, got, 1)
	require.Equal(t, "two", <-got)
}

// Forget takes a job ID: one that cannot name a job (a wildcard above all,
// which names every job's subject) is refused as Read refuses it, and no
// other job's lines go.
func TestForgetOfAnInvalidJobIDKeepsEveryLine(t *testing.T) {
	ctx := context.Background()
	_, logs := startLogs(t)
	require.NoError(t, logs.Append(ctx, "job-1", LogLine{Time: time.Now(), Attempt: 1, Stream: StreamStdout, Line: "x"}))
	mark, err := logs.Mark(ctx)
	require.NoError(t, err)
	for _, id := range []string{">", "*", "", "a.b"} {
		err := logs.Forget(ctx, id, mark)
		require.ErrorIs(t, err, statemachine.ErrInvalid, "%q", id)
		require.ErrorIs(t, err, events.ErrInvalidJobID, "%q", id)
	}
	lines, err := logs.Read(ctx, "job-1")
	require.NoError(t, err)
	require.Len(t, lines, 1, "job-1's lines were forgotten by another ID's Forget")
}
