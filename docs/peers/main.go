// Command peerbench measures two peer job queues, River (PostgreSQL) and asynq
// (Redis), under one fixed workload so that another Go job queue's benchmark
// can be compared with them on the same machine.
//
// Every figure is printed as one machine-readable line:
//
//	peer=river durability=sync n=20000 metric=jobs_per_s_batch value=1234.5
//
// followed by a short human-readable table.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
)

// stallTimeout is how long a run may go without any progress before it fails.
const stallTimeout = 60 * time.Second

// batchSize is the number of jobs per insert call in the batch scenarios.
const batchSize = 1000

type options struct {
	peer       string
	durability string
	scenario   string
	n          int
	workers    int
	producers  int
	rate       int
	latencyN   int
	pgURL      string
	pgMaxConns int
	redisAddr  string

	riverFetchCooldown     time.Duration
	riverFetchPollInterval time.Duration
	asynqTaskCheckInterval time.Duration
	asynqPollEvery         time.Duration
}

// ---------------------------------------------------------------------------
// Output

type result struct {
	metric string
	value  string
}

type reporter struct {
	opts    *options
	results []result
}

func (r *reporter) setting(name string, value any) {
	fmt.Printf("peer=%s durability=%s setting=%s value=%v\n", r.opts.peer, r.opts.durability, name, value)
}

func (r *reporter) metric(n int, name string, value float64, prec int) {
	v := strconv.FormatFloat(value, 'f', prec, 64)
	fmt.Printf("peer=%s durability=%s n=%d metric=%s value=%s\n", r.opts.peer, r.opts.durability, n, name, v)
	r.results = append(r.results, result{metric: name, value: v})
}

func (r *reporter) table() {
	fmt.Println()
	fmt.Printf("== %s / %s ==\n", r.opts.peer, r.opts.durability)
	fmt.Printf("%-34s %14s\n", "metric", "value")
	for _, res := range r.results {
		fmt.Printf("%-34s %14s\n", res.metric, res.value)
	}
}

// ---------------------------------------------------------------------------
// Start-time recording shared by both peers' handlers.

// startRecorder holds, per job sequence number, the time the handler started
// and the time the insert call returned, as nanoseconds since base (+1 so that
// zero means "not recorded").
type startRecorder struct {
	base     time.Time
	started  []atomic.Int64
	returned []atomic.Int64
}

func newStartRecorder(n int) *startRecorder {
	return &startRecorder{
		base:     time.Now(),
		started:  make([]atomic.Int64, n),
		returned: make([]atomic.Int64, n),
	}
}

func (r *startRecorder) now() int64 { return int64(time.Since(r.base)) + 1 }

// current is the recorder of the running latency scenario (nil otherwise).
var current atomic.Pointer[startRecorder]

// handlerStarted is called first thing in every handler.
func handlerStarted(seq int64) {
	r := current.Load()
	if r == nil || seq < 0 || seq >= int64(len(r.started)) {
		return
	}
	r.started[seq].CompareAndSwap(0, r.now())
}

// ---------------------------------------------------------------------------
// Waiting for completions, with a stall watchdog.

// completionWaiter tells when a target number of durable completions is
// reached. Peers feed it either by events (River) or by polling (asynq).
type completionWaiter struct {
	target int64
	count  atomic.Int64
	doneAt time.Time // set before done is closed
	done   chan struct{}
	once   sync.Once
}

func newCompletionWaiter(target int) *completionWaiter {
	return &completionWaiter{target: int64(target), done: make(chan struct{})}
}

// set records the current completion count (monotonic) and fires done when it
// reaches the target.
func (w *completionWaiter) set(n int64, at time.Time) {
	w.count.Store(n)
	if n >= w.target {
		w.once.Do(func() {
			w.doneAt = at
			close(w.done)
		})
	}
}

// wait blocks until the target is reached, a producer fails, or no progress is
// seen for stallTimeout.
func (w *completionWaiter) wait(what string, errCh <-chan error) (time.Time, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := int64(-1)
	lastChange := time.Now()
	for {
		select {
		case <-w.done:
			return w.doneAt, nil
		case err := <-errCh:
			if err != nil {
				return time.Time{}, fmt.Errorf("%s: producer failed: %w", what, err)
			}
			errCh = nil // producers finished fine; keep waiting
		case <-tick.C:
			c := w.count.Load()
			if c != last {
				last, lastChange = c, time.Now()
			} else if time.Since(lastChange) >= stallTimeout {
				return time.Time{}, fmt.Errorf("%s: STALLED: no progress for %s at %d/%d completions", what, stallTimeout, c, w.target)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Peer abstraction

type peer interface {
	// reset empties the store. Called with no client/server running.
	reset(ctx context.Context) error
	// start starts workers (and a warm-up job that must complete), returning
	// a waiter for n measured completions.
	start(ctx context.Context, n int) (*completionWaiter, error)
	stop(ctx context.Context) error
	insertOne(ctx context.Context, seq int64) error
	// insertBatch inserts seqs [from, to); fast selects River's InsertManyFast.
	insertBatch(ctx context.Context, from, to int64, fast bool) error
	supportsBatch() bool
}

// ---------------------------------------------------------------------------
// River

type noopArgs struct {
	Seq int64 `json:"seq"`
}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (w *noopWorker) Work(ctx context.Context, job *river.Job[noopArgs]) error {
	handlerStarted(job.Args.Seq)
	return nil
}

type riverPeer struct {
	opts   *options
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	cancel func()
	subWG  sync.WaitGroup
}

func newRiverPeer(ctx context.Context, opts *options, rep *reporter) (*riverPeer, error) {
	var sc string
	switch opts.durability {
	case "sync":
		sc = "on"
	case "async":
		sc = "off"
	default:
		return nil, fmt.Errorf("river: -durability must be sync or async, got %q", opts.durability)
	}
	cfg, err := pgxpool.ParseConfig(opts.pgURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(opts.pgMaxConns)
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = sc
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var got string
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&got); err != nil {
		pool.Close()
		return nil, fmt.Errorf("SHOW synchronous_commit: %w", err)
	}
	if got != sc {
		pool.Close()
		return nil, fmt.Errorf("synchronous_commit is %q, wanted %q", got, sc)
	}
	var fsync, version string
	_ = pool.QueryRow(ctx, "SHOW fsync").Scan(&fsync)
	_ = pool.QueryRow(ctx, "SHOW server_version").Scan(&version)
	rep.setting("synchronous_commit", got)
	rep.setting("fsync", fsync)
	rep.setting("server_version", strconv.Quote(version))
	rep.setting("pool_max_conns", opts.pgMaxConns)
	rep.setting("fetch_cooldown", opts.riverFetchCooldown)
	rep.setting("fetch_poll_interval", opts.riverFetchPollInterval)
	rep.setting("max_workers", opts.workers)

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		pool.Close()
		return nil, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		pool.Close()
		return nil, fmt.Errorf("river migrate: %w", err)
	}
	return &riverPeer{opts: opts, pool: pool}, nil
}

func (p *riverPeer) supportsBatch() bool { return true }

func (p *riverPeer) reset(ctx context.Context) error {
	_, err := p.pool.Exec(ctx, "TRUNCATE river_job")
	return err
}

func (p *riverPeer) start(ctx context.Context, n int) (*completionWaiter, error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, &noopWorker{})
	client, err := river.NewClient(riverpgxv5.New(p.pool), &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: p.opts.workers}},
		Workers:           workers,
		FetchCooldown:     p.opts.riverFetchCooldown,
		FetchPollInterval: p.opts.riverFetchPollInterval,
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	// Events are dropped when the channel is full, so size it for every job.
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: n + 1000,
		Kinds:    []river.EventKind{river.EventKindJobCompleted},
	})
	waiter := newCompletionWaiter(n)
	warm := newCompletionWaiter(1)
	p.subWG.Add(1)
	go func() {
		defer p.subWG.Done()
		var count int64
		for ev := range events {
			if ev.Kind != river.EventKindJobCompleted {
				continue
			}
			var a noopArgs
			if err := json.Unmarshal(ev.Job.EncodedArgs, &a); err != nil {
				continue
			}
			now := time.Now()
			if a.Seq < 0 {
				warm.set(1, now)
				continue
			}
			count++
			waiter.set(count, now)
		}
	}()
	if err := client.Start(ctx); err != nil {
		cancel()
		return nil, err
	}
	p.client, p.cancel = client, cancel
	// Warm-up: one job through the whole pipeline proves workers are ready.
	if err := p.insertOne(ctx, -1); err != nil {
		return nil, fmt.Errorf("warm-up insert: %w", err)
	}
	if _, err := warm.wait("river warm-up", nil); err != nil {
		return nil, err
	}
	return waiter, nil
}

func (p *riverPeer) stop(ctx context.Context) error {
	if p.client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := p.client.Stop(ctx)
	p.cancel()
	p.subWG.Wait()
	p.client, p.cancel = nil, nil
	return err
}

func (p *riverPeer) insertOne(ctx context.Context, seq int64) error {
	ctx, cancel := context.WithTimeout(ctx, stallTimeout)
	defer cancel()
	_, err := p.client.Insert(ctx, noopArgs{Seq: seq}, nil)
	return err
}

func (p *riverPeer) insertBatch(ctx context.Context, from, to int64, fast bool) error {
	ctx, cancel := context.WithTimeout(ctx, stallTimeout)
	defer cancel()
	params := make([]river.InsertManyParams, 0, to-from)
	for s := from; s < to; s++ {
		params = append(params, river.InsertManyParams{Args: noopArgs{Seq: s}})
	}
	var err error
	if fast {
		var k int
		k, err = p.client.InsertManyFast(ctx, params)
		if err == nil && k != len(params) {
			err = fmt.Errorf("InsertManyFast inserted %d of %d", k, len(params))
		}
	} else {
		var res []*rivertype.JobInsertResult
		res, err = p.client.InsertMany(ctx, params)
		if err == nil && len(res) != len(params) {
			err = fmt.Errorf("InsertMany inserted %d of %d", len(res), len(params))
		}
	}
	return err
}

func (p *riverPeer) close() { p.pool.Close() }

// ---------------------------------------------------------------------------
// asynq

const asynqQueue = "default"

type asynqPeer struct {
	opts     *options
	redisOpt asynq.RedisClientOpt
	rdb      *redis.Client
	srv      *asynq.Server
	client   *asynq.Client
	stopPoll chan struct{}
	pollWG   sync.WaitGroup
}

// processedTotalKey is asynq's per-queue all-time processed counter
// (base.ProcessedTotalKey), which Inspector.GetQueueInfo reports as
// ProcessedTotal; asynq's Done script increments it in the same Lua script
// that removes the finished task.
var processedTotalKey = "asynq:{" + asynqQueue + "}:processed"

func newAsynqPeer(ctx context.Context, opts *options, rep *reporter) (*asynqPeer, error) {
	switch opts.durability {
	case "always", "everysec", "no":
	default:
		return nil, fmt.Errorf("asynq: -durability must be always or everysec, got %q", opts.durability)
	}
	rdb := redis.NewClient(&redis.Options{Addr: opts.redisAddr})
	if err := rdb.ConfigSet(ctx, "appendfsync", opts.durability).Err(); err != nil {
		return nil, fmt.Errorf("CONFIG SET appendfsync: %w", err)
	}
	for _, k := range []string{"appendonly", "appendfsync", "save"} {
		m, err := rdb.ConfigGet(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("CONFIG GET %s: %w", k, err)
		}
		rep.setting(k, strconv.Quote(m[k]))
	}
	if m, _ := rdb.ConfigGet(ctx, "appendfsync").Result(); m["appendfsync"] != opts.durability {
		return nil, fmt.Errorf("appendfsync is %q, wanted %q", m["appendfsync"], opts.durability)
	}
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		for _, line := range splitLines(info) {
			if len(line) > 14 && line[:14] == "redis_version:" {
				rep.setting("server_version", line[14:])
			}
		}
	}
	rep.setting("concurrency", opts.workers)
	rep.setting("task_check_interval", opts.asynqTaskCheckInterval)
	rep.setting("processed_poll_every", opts.asynqPollEvery)
	return &asynqPeer{opts: opts, redisOpt: asynq.RedisClientOpt{Addr: opts.redisAddr}, rdb: rdb}, nil
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			line := s[start:i]
			if len(line) > 0 && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			out = append(out, line)
			start = i + 1
		}
	}
	return out
}

func (p *asynqPeer) supportsBatch() bool { return false }

func (p *asynqPeer) reset(ctx context.Context) error {
	return p.rdb.FlushAll(ctx).Err()
}

func (p *asynqPeer) processed(ctx context.Context) (int64, error) {
	v, err := p.rdb.Get(ctx, processedTotalKey).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return v, err
}

func (p *asynqPeer) start(ctx context.Context, n int) (*completionWaiter, error) {
	p.srv = asynq.NewServer(p.redisOpt, asynq.Config{
		Concurrency:       p.opts.workers,
		Queues:            map[string]int{asynqQueue: 1},
		TaskCheckInterval: p.opts.asynqTaskCheckInterval,
		LogLevel:          asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("noop", func(ctx context.Context, t *asynq.Task) error {
		if b := t.Payload(); len(b) == 8 {
			handlerStarted(int64(binary.LittleEndian.Uint64(b)))
		}
		return nil
	})
	if err := p.srv.Start(mux); err != nil {
		return nil, err
	}
	p.client = asynq.NewClient(p.redisOpt)

	// Warm-up: one task through the whole pipeline proves workers are ready.
	if err := p.insertOne(ctx, -1); err != nil {
		return nil, fmt.Errorf("warm-up enqueue: %w", err)
	}
	warm := newCompletionWaiter(1)
	base, err := p.pollUntil(ctx, warm, 0)
	if err != nil {
		return nil, err
	}
	waiter := newCompletionWaiter(n)
	p.stopPoll = make(chan struct{})
	p.pollWG.Add(1)
	go func() {
		defer p.pollWG.Done()
		t := time.NewTicker(p.opts.asynqPollEvery)
		defer t.Stop()
		for {
			select {
			case <-p.stopPoll:
				return
			case <-waiter.done:
				return
			case <-t.C:
				v, err := p.processed(ctx)
				if err != nil {
					continue // the stall watchdog reports persistent failure
				}
				waiter.set(v-base, time.Now())
			}
		}
	}()
	return waiter, nil
}

// pollUntil polls the processed counter until w fires (relative to base),
// returning the final counter value.
func (p *asynqPeer) pollUntil(ctx context.Context, w *completionWaiter, base int64) (int64, error) {
	deadline := time.Now().Add(stallTimeout)
	for time.Now().Before(deadline) {
		v, err := p.processed(ctx)
		if err == nil {
			w.set(v-base, time.Now())
			select {
			case <-w.done:
				return v, nil
			default:
			}
		}
		time.Sleep(p.opts.asynqPollEvery)
	}
	return 0, fmt.Errorf("asynq warm-up: STALLED for %s", stallTimeout)
}

func (p *asynqPeer) stop(ctx context.Context) error {
	if p.stopPoll != nil {
		close(p.stopPoll)
		p.pollWG.Wait()
		p.stopPoll = nil
	}
	var err error
	if p.client != nil {
		err = p.client.Close()
		p.client = nil
	}
	if p.srv != nil {
		p.srv.Shutdown()
		p.srv = nil
	}
	return err
}

func (p *asynqPeer) insertOne(ctx context.Context, seq int64) error {
	ctx, cancel := context.WithTimeout(ctx, stallTimeout)
	defer cancel()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seq))
	_, err := p.client.EnqueueContext(ctx, asynq.NewTask("noop", b[:]), asynq.Queue(asynqQueue))
	return err
}

func (p *asynqPeer) insertBatch(context.Context, int64, int64, bool) error {
	return errors.New("asynq has no batch insert API")
}

// verifyInspector cross-checks the processed count with asynq's Inspector.
func (p *asynqPeer) verifyInspector(rep *reporter, want int) {
	insp := asynq.NewInspector(p.redisOpt)
	defer insp.Close()
	qi, err := insp.GetQueueInfo(asynqQueue)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inspector: %v\n", err)
		return
	}
	rep.setting("inspector_processed_total", qi.ProcessedTotal)
	if qi.ProcessedTotal != want {
		fmt.Fprintf(os.Stderr, "WARNING: inspector ProcessedTotal=%d, expected %d\n", qi.ProcessedTotal, want)
	}
}

// ---------------------------------------------------------------------------
// Scenarios

// begin empties the peer's store and starts its workers for n jobs; the
// caller stops them.
func begin(ctx context.Context, p peer, n int) (*completionWaiter, error) {
	if err := p.reset(ctx); err != nil {
		return nil, fmt.Errorf("reset: %w", err)
	}
	waiter, err := p.start(ctx, n)
	if err != nil {
		_ = p.stop(ctx)
		return nil, fmt.Errorf("start: %w", err)
	}
	return waiter, nil
}

// runE2E measures jobs/s from the first insert to the n-th durable completion.
// mode is "batch", "batch_fast" or "single".
func runE2E(ctx context.Context, p peer, opts *options, rep *reporter, mode string) error {
	n := opts.n
	waiter, err := begin(ctx, p, n)
	if err != nil {
		return err
	}
	defer func() { _ = p.stop(ctx) }()

	errCh := make(chan error, 1)
	var lastInsert atomic.Int64 // ns since start
	start := time.Now()
	switch mode {
	case "batch", "batch_fast":
		go func() {
			for from := int64(0); from < int64(n); from += batchSize {
				to := min(from+batchSize, int64(n))
				if err := p.insertBatch(ctx, from, to, mode == "batch_fast"); err != nil {
					errCh <- err
					return
				}
			}
			lastInsert.Store(int64(time.Since(start)))
			errCh <- nil
		}()
	case "single":
		go func() {
			var next atomic.Int64
			var wg sync.WaitGroup
			var firstErr atomic.Pointer[error]
			for range opts.producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						seq := next.Add(1) - 1
						if seq >= int64(n) || firstErr.Load() != nil {
							return
						}
						if err := p.insertOne(ctx, seq); err != nil {
							firstErr.CompareAndSwap(nil, &err)
							return
						}
					}
				}()
			}
			wg.Wait()
			lastInsert.Store(int64(time.Since(start)))
			if e := firstErr.Load(); e != nil {
				errCh <- *e
				return
			}
			errCh <- nil
		}()
	}
	doneAt, err := waiter.wait(mode, errCh)
	if err != nil {
		return err
	}
	elapsed := doneAt.Sub(start)
	name := map[string]string{"batch": "jobs_per_s_batch", "batch_fast": "jobs_per_s_batch_fast", "single": "jobs_per_s_single"}[mode]
	rep.metric(n, name, float64(n)/elapsed.Seconds(), 1)
	if li := lastInsert.Load(); li > 0 {
		rep.metric(n, "inserts_"+name[len("jobs_"):], float64(n)/time.Duration(li).Seconds(), 1)
	}
	if ap, ok := p.(*asynqPeer); ok {
		ap.verifyInspector(rep, n+1) // +1: the warm-up task
	}
	return nil
}

// runLatency inserts latencyN jobs one at a time at a fixed rate from one
// producer and reports start and insert latency percentiles.
func runLatency(ctx context.Context, p peer, opts *options, rep *reporter) error {
	n := opts.latencyN
	waiter, err := begin(ctx, p, n)
	if err != nil {
		return err
	}
	defer func() { _ = p.stop(ctx) }()

	rec := newStartRecorder(n)
	current.Store(rec)
	defer current.Store(nil)

	insertDur := make([]float64, 0, n)
	ticker := time.NewTicker(time.Second / time.Duration(opts.rate))
	first := time.Now()
	for seq := range int64(n) {
		<-ticker.C
		t0 := time.Now()
		if err := p.insertOne(ctx, seq); err != nil {
			ticker.Stop()
			return fmt.Errorf("latency insert %d: %w", seq, err)
		}
		rec.returned[seq].Store(rec.now())
		insertDur = append(insertDur, float64(time.Since(t0))/1e6)
	}
	ticker.Stop()
	insertSpan := time.Since(first)
	if _, err := waiter.wait("latency", nil); err != nil {
		return err
	}

	startLat := make([]float64, 0, n)
	startedFirst := 0
	for i := range n {
		s, r := rec.started[i].Load(), rec.returned[i].Load()
		if s == 0 {
			return fmt.Errorf("latency: job %d completed but its handler start was not recorded", i)
		}
		d := s - r
		if d < 0 {
			startedFirst++
			d = 0
		}
		startLat = append(startLat, float64(d)/1e6)
	}
	rep.metric(n, "latency_achieved_insert_rate", float64(n)/insertSpan.Seconds(), 1)
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"max", 1}} {
		rep.metric(n, "start_latency_"+q.name+"_ms", percentile(startLat, q.p), 3)
	}
	rep.metric(n, "started_before_insert_returned", float64(startedFirst), 0)
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"max", 1}} {
		rep.metric(n, "insert_latency_"+q.name+"_ms", percentile(insertDur, q.p), 3)
	}
	return nil
}

// percentile returns the nearest-rank percentile (p in (0,1]) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	idx := int(math.Ceil(p*float64(len(s)))) - 1
	idx = max(0, min(idx, len(s)-1))
	return s[idx]
}

// ---------------------------------------------------------------------------

func main() {
	opts := &options{}
	flag.StringVar(&opts.peer, "peer", "river", "river|asynq")
	flag.StringVar(&opts.durability, "durability", "", "river: sync|async (synchronous_commit on|off); asynq: always|everysec (appendfsync)")
	flag.StringVar(&opts.scenario, "scenario", "all", "e2e|latency|all")
	flag.IntVar(&opts.n, "n", 20000, "jobs per e2e run")
	flag.IntVar(&opts.workers, "workers", 100, "concurrent workers (River MaxWorkers, asynq Concurrency)")
	flag.IntVar(&opts.producers, "producers", 8, "producer goroutines for the one-at-a-time e2e run")
	flag.IntVar(&opts.rate, "rate", 500, "insert rate (jobs/s) of the latency run")
	flag.IntVar(&opts.latencyN, "latency-n", 2000, "jobs in the latency run")
	flag.StringVar(&opts.pgURL, "pg", "postgres://postgres@127.0.0.1:25901/postgres?sslmode=disable", "PostgreSQL URL (River)")
	flag.IntVar(&opts.pgMaxConns, "pg-max-conns", 50, "pgx pool MaxConns (River)")
	flag.StringVar(&opts.redisAddr, "redis", "127.0.0.1:25902", "Redis address (asynq)")
	flag.DurationVar(&opts.riverFetchCooldown, "river-fetch-cooldown", time.Millisecond, "River FetchCooldown (minimum allowed: 1ms)")
	flag.DurationVar(&opts.riverFetchPollInterval, "river-fetch-poll-interval", 50*time.Millisecond, "River FetchPollInterval (minimum 1ms, >= FetchCooldown)")
	flag.DurationVar(&opts.asynqTaskCheckInterval, "asynq-task-check-interval", time.Millisecond, "asynq TaskCheckInterval (any value > 0; <= 0 means asynq's 1s default)")
	flag.DurationVar(&opts.asynqPollEvery, "asynq-poll", 2*time.Millisecond, "how often the processed counter is polled (asynq)")
	flag.Parse()

	if opts.durability == "" {
		opts.durability = map[string]string{"river": "sync", "asynq": "always"}[opts.peer]
	}
	if opts.n < 1 || opts.latencyN < 1 || opts.workers < 1 || opts.producers < 1 || opts.rate < 1 {
		fail(errors.New("-n, -latency-n, -workers, -producers and -rate must be >= 1"))
	}
	var e2e, lat bool
	switch opts.scenario {
	case "e2e":
		e2e = true
	case "latency":
		lat = true
	case "all":
		e2e, lat = true, true
	default:
		fail(fmt.Errorf("-scenario must be e2e, latency or all, got %q", opts.scenario))
	}

	ctx := context.Background()
	rep := &reporter{opts: opts}
	var p peer
	switch opts.peer {
	case "river":
		rp, err := newRiverPeer(ctx, opts, rep)
		if err != nil {
			fail(err)
		}
		defer rp.close()
		p = rp
	case "asynq":
		ap, err := newAsynqPeer(ctx, opts, rep)
		if err != nil {
			fail(err)
		}
		p = ap
	default:
		fail(fmt.Errorf("-peer must be river or asynq, got %q", opts.peer))
	}
	rep.setting("workers", opts.workers)
	rep.setting("producers", opts.producers)

	if e2e {
		modes := []string{"single"}
		if p.supportsBatch() {
			modes = []string{"batch", "batch_fast", "single"}
		}
		for _, m := range modes {
			if err := runE2E(ctx, p, opts, rep, m); err != nil {
				fail(fmt.Errorf("%s %s e2e %s: %w", opts.peer, opts.durability, m, err))
			}
		}
	}
	if lat {
		rep.setting("rate", opts.rate)
		if err := runLatency(ctx, p, opts, rep); err != nil {
			fail(fmt.Errorf("%s %s latency: %w", opts.peer, opts.durability, err))
		}
	}
	rep.table()
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
	os.Exit(1)
}
