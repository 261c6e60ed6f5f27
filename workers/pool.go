package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/jsapi"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Pool defaults.
const (
	ConcurrencyDefault = 10
	// ConcurrencyMax is the most jobs a pool runs at once, as River's
	// queues: more goes to more pools (or processes).
	ConcurrencyMax           = 10_000
	HeartbeatIntervalDefault = 10 * time.Second
	BackupPollDefault        = 30 * time.Second
	ShutdownGraceDefault     = 30 * time.Second
	// CancelWatchDelayDefault: a handler that runs longer than this gets a
	// watcher on its job's history; shorter ones finish before it matters,
	// and a cancel that came before the watcher is still read from the log.
	CancelWatchDelayDefault = 50 * time.Millisecond
	// ErrorCodeTimeout is the error code of an attempt that ran past the
	// pool's JobTimeout.
	ErrorCodeTimeout = "timeout"
	// ErrorCodeLostContact is the error code of an attempt whose handler the
	// pool stopped because its heartbeats no longer reached the server.
	ErrorCodeLostContact = "lost_contact"
)

// Heartbeat pacing against the server's hang-after (published by its hang
// detector, events.HangAfterDefault until one is): a pool beats at least six
// times per hang-after, and stops a handler none of whose beats was
// acknowledged for half of it, which leaves the other half for the handler
// to stop (an exec command's SIGTERM grace) and for clock skew before the
// detector fails the attempt and a retry starts elsewhere.
const (
	beatsPerHangAfter = 6
	fenceDivisor      = 2
	beatEveryMin      = 10 * time.Millisecond
)

// PoolConfig configures a Pool. A zero field takes its default (JobTimeout's
// is no limit); a negative one is refused with ErrInvalidConfig.
type PoolConfig struct {
	// Types the pool serves. Required.
	Types []string
	// Tags the pool has; it runs jobs whose tags are all among them.
	Tags map[string]string
	// Concurrency is how many jobs run at once. Default ConcurrencyDefault.
	Concurrency int
	// WorkerID names the pool in events; default host-pid-random. See
	// statemachine.ValidateWorkerID. Give each pool its own, not one per
	// host or process: a pool whose acquire's answer was lost finds out
	// from the job's history whether the acquire landed, and takes an
	// attempt recorded under its ID for its own, so two pools sharing an
	// ID could both run a job.
	WorkerID string
	// HeartbeatInterval is how often a running job's heartbeat is sent, at
	// most: a sixth of the server's hang-after when that is shorter. Default
	// HeartbeatIntervalDefault.
	HeartbeatInterval time.Duration
	// BackupPoll: an idle pool looks for work this often (give or take a
	// tenth, so that a fleet's pools spread their passes) even without a
	// wake-up, so a lost wake-up never strands a job. Default
	// BackupPollDefault.
	BackupPoll time.Duration
	// ShutdownGrace: Stop lets running handlers finish within it, then
	// cancels them and hands back the jobs of those that return an error
	// (a nil return still succeeds the job). Default ShutdownGraceDefault;
	// a Stop whose ctx is already done gives them none.
	ShutdownGrace time.Duration
	// JobTimeout: a handler still running after this long has its context
	// canceled with ErrJobTimeout, and unless it then returns nil its
	// attempt fails with ErrorCodeTimeout, retried while attempts remain.
	// A handler that ignores its context and is still running ShutdownGrace
	// (and 2 s) after the timeout has its attempt failed so without waiting for it
	// (it keeps its slot until it returns, its result is dropped, and Stop
	// does not wait for it).
	// Heartbeats prove a worker alive, not a handler making progress; this
	// bounds a handler that hangs. 0 (the default) means no limit.
	JobTimeout time.Duration
	// CancelWatchDelay: a handler running longer than this follows its job
	// for cancels; heartbeats start within HeartbeatInterval regardless.
	// Default CancelWatchDelayDefault.
	CancelWatchDelay time.Duration
	// OnResult, when set, is called once for each attempt whose outcome the
	// pool recorded in the job's history, after the append was
	// acknowledged: a metric or a test can count outcomes without reading
	// the log. It is called from several goroutines at once (the one that
	// ran the handler, holding a result slot, or the timer that fails a
	// handler ignoring its timeout), so it must be safe for concurrent use
	// and should return quickly; once Stop has returned nil, every call has
	// returned. An outcome the server refused (the attempt no longer held
	// the job) or never recorded is logged and not passed on, though one
	// whose last try went unanswered may be in the log. A failed append is
	// tried again for up to 15 minutes, or until Stop's ctx ends; the fail
	// of a handler that ignored its timeout is tried once, for up to 30 s.
	OnResult func(Result)
	// Logger; nil means no logging.
	Logger *zap.Logger
}

// Result is an attempt's outcome as the pool recorded it.
type Result struct {
	// Job is the job as the recorded event left it; its State is the
	// outcome: StateSucceeded, StateFailed, StateScheduled (retried after
	// its backoff), StatePending (handed back as the pool stopped, also a
	// job acquired as it stopped and never run) or StateCanceled. Job.Error
	// and Job.ErrorCode say why a failed attempt failed. Job.Errors may
	// lack the earlier attempts' errors, which a queue message leaves out
	// (statemachine.Machine.Load reads them).
	Job statemachine.Job
	// Err is what the handler returned, which is not the outcome: a handler
	// that returns nil after its job was canceled leaves the job canceled.
	// Nil for a job handed back before it ran; ErrJobTimeout when the
	// attempt was ended because its handler did not stop after its timeout
	// (the handler has not returned).
	Err error
}

func (c *PoolConfig) validate() error {
	if len(c.Types) == 0 {
		return fmt.Errorf("%w: no job types", ErrInvalidConfig)
	}
	for _, t := range c.Types {
		if err := statemachine.ValidateToken("type", t); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if err := statemachine.ValidateLabels("tag", c.Tags); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Concurrency == 0 {
		c.Concurrency = ConcurrencyDefault
	}
	if c.Concurrency < 0 || c.Concurrency > ConcurrencyMax {
		return fmt.Errorf("%w: concurrency %d, expected 1-%d", ErrInvalidConfig, c.Concurrency, ConcurrencyMax)
	}
	if c.JobTimeout < 0 {
		return fmt.Errorf("%w: job timeout %s, expected 0 (none) or more", ErrInvalidConfig, c.JobTimeout)
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		host = strings.ToValidUTF8(host[:min(len(host), 64)], "?")
		c.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])
	}
	if err := statemachine.ValidateWorkerID(c.WorkerID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	// Refused, not read as its default, a ShutdownGrace of -1 meant as
	// "none" would give handlers 30 s.
	return cmp.Or(
		config.Default(ErrInvalidConfig, "heartbeat interval", &c.HeartbeatInterval, HeartbeatIntervalDefault),
		config.Default(ErrInvalidConfig, "backup poll", &c.BackupPoll, BackupPollDefault),
		config.Default(ErrInvalidConfig, "shutdown grace", &c.ShutdownGrace, ShutdownGraceDefault),
		config.Default(ErrInvalidConfig, "cancel watch delay", &c.CancelWatchDelay, CancelWatchDelayDefault),
	)
}

// Pool runs a handler on the jobs its types and tags can serve. Its
// methods are safe for concurrent use; the handler runs on up to
// Concurrency jobs at once.
type Pool struct {
	js jetstream.JetStream
	nc *nats.Conn
	m  *statemachine.Machine
	hb *events.Heartbeats
	// hangAfter is the server's, as last published; 0 until one is.
	hangAfter      atomic.Int64
	hangChanged    *broadcast
	stopFollowHang func()
	// reconnected tells running attempts that the connection is back: a
	// beat in flight when it dropped will get no reply.
	reconnected *broadcast
	// recordBeat is the heartbeats' RecordAfter; tests lose replies
	// through it.
	recordBeat func(ctx context.Context, b events.Beat, after uint64) (uint64, error)
	logs       *Logs
	// Repeated failures said at a pace: see troubleLog.
	acquireTrouble, lineTrouble *troubleLog
	// reportsCtx ends the tries of results not yet recorded when Stop's
	// ctx ends: each makes the one under way, and no more.
	reportsCtx context.Context
	endReports context.CancelFunc
	// logAckTimeout: see logAckTimeoutDefault.
	logAckTimeout time.Duration
	// logJS publishes the jobs' log lines, without waiting for their acks.
	logJS   jetstream.JetStream
	cfg     PoolConfig
	handler Handler
	logger  *zap.Logger
	types   map[string]bool

	startMu sync.Mutex
	mu      sync.Mutex
	queues  map[string]*poolQueue
	// hot holds the queues to ask for jobs, by name and, in the order they
	// became hot, by priority.
	hot       map[string]bool
	hotByPrio queuesByPrio
	// claimedByPrio holds the hot queues whose shared wake-up this pool
	// claimed, asked before the other hot queues of their priority: a
	// claim announces a job for certain and expires after claimWindow,
	// where the others may be empty. Behind them, claims expired under
	// load and were passed on to every pool, which filled the hot lists
	// further.
	claimedByPrio queuesByPrio
	recheck       map[string]int
	// woken holds the queues a wake-up named since their last fetch, each
	// with the wake-up's number (wakes counts them): an empty answer from
	// such a queue is asked again (recheckDelays), while a queue hot for
	// the backup poll or a reconnect is asked once.
	woken map[string]uint64
	wakes uint64
	// claims holds the queues whose shared wake-up this pool took: it
	// fetches from each within claimWindow, or passes the wake-up on to
	// every pool, as it does when its fetch came back full or failed.
	claims map[string]*wakeClaim
	// claimWindow is claimWindowDefault; tests lengthen it.
	claimWindow time.Duration
	// unserved holds registered queues whose tags this pool lacks, and
	// looking the queues being read from the registry: a wake-up for either
	// costs nothing, where it used to cost a registry read every time.
	unserved map[string]bool
	looking  map[string]bool
	started  bool
	stopping bool
	// unrecorded counts the results (hand-backs included) that could not
	// be recorded once Stop began: those jobs wait for the hang detector.
	unrecorded int
	cancel     context.CancelFunc
	loopDone   chan struct{}
	runningWG  sync.WaitGroup
	runners    *runners
	// running cancels the handlers running, by lease: one job can have a
	// handler still running after losing its lease and a new attempt here.
	running map[uint64]runningJob
	// claimed holds the leases of the attempts acquired for this pool's
	// takes, until each attempt's result is recorded: two takes of one job
	// (its queue message delivered again while the first acquire went
	// unanswered) must not both run it. By lease, the job's ID: Stop names
	// the jobs whose results it could not wait for.
	claimed map[uint64]string

	busy atomic.Int64
	// backingUp is set while a backup pass lists the queue streams, which
	// Stop waits for (passes).
	backingUp atomic.Bool
	passes    sync.WaitGroup
	// reporting holds a token per result being recorded after its slot
	// was freed.
	reporting chan struct{}
	// recordResult is report; tests hold results back through it.
	recordResult func(ctx context.Context, held statemachine.Job, end attemptEnd)
	// follow is followJob; tests make it fail through it.
	follow func(ctx context.Context, jobID string, lease uint64, from *uint64, cancel context.CancelCauseFunc) error
	wake   chan struct{}
	freed  chan struct{}
	// leaveWakes stops this pool hearing wake-ups (joinWakeHub).
	leaveWakes func()
	watch      jetstream.KeyWatcher
	registry   jetstream.KeyValue
}

// queuesByPrio holds a list of queues per priority.
type queuesByPrio [statemachine.PriorityMax - statemachine.PriorityMin + 1][]*poolQueue

type poolQueue struct {
	key      queueKey
	name     string // key.name(), asked for on every fetch
	cons     jetstream.Consumer
	remaking atomic.Bool
	// remakeNotBefore (Unix ns) holds off a remake after one failed, and
	// remakeBackoff is how long; only the remaker (remaking) writes them.
	remakeNotBefore atomic.Int64
	remakeBackoff   time.Duration
	// dropped is set when the queue left the registry; a queue registered
	// again is a new poolQueue.
	dropped atomic.Bool
}

// NewPool returns a pool; Start runs it. The handler runs the jobs of every
// type in cfg.Types: to give each type its own handler (each a JSONHandler
// of its payload type, say), dispatch on Job.Type, as ExampleNewPool does,
// or run a pool per type.
func NewPool(js jetstream.JetStream, m *statemachine.Machine, cfg PoolConfig, handler Handler) (*Pool, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if handler == nil {
		return nil, fmt.Errorf("%w: no handler", ErrInvalidConfig)
	}
	if js == nil || m == nil {
		return nil, fmt.Errorf("%w: jetstream and machine are required", ErrInvalidConfig)
	}
	types := map[string]bool{}
	for _, t := range cfg.Types {
		types[t] = true
	}
	p := &Pool{js: js, nc: js.Conn(), m: m, cfg: cfg, handler: handler,
		logger: logging.OrNop(cfg.Logger, "pool").With(zap.String("worker", cfg.WorkerID)), types: types,
		queues: map[string]*poolQueue{}, hot: map[string]bool{}, recheck: map[string]int{}, woken: map[string]uint64{},
		unserved: map[string]bool{}, looking: map[string]bool{}, running: map[uint64]runningJob{}, claimed: map[uint64]string{}, claims: map[string]*wakeClaim{},
		reporting: make(chan struct{}, cfg.Concurrency), claimWindow: claimWindowDefault,
		wake: make(chan struct{}, 1), freed: make(chan struct{}, 1),
		hangChanged: newBroadcast(), reconnected: newBroadcast()}
	p.reportsCtx, p.endReports = context.WithCancel(context.Background())
	p.logAckTimeout = logAckTimeoutDefault
	p.acquireTrouble = newTroubleLog(p.logger, "acquire failed; the job is offered again later")
	p.lineTrouble = newTroubleLog(p.logger, "job log lines were not stored, or not acknowledged")
	p.recordResult = p.report
	p.recordBeat = func(ctx context.Context, b events.Beat, after uint64) (uint64, error) {
		return p.hb.RecordAfter(ctx, b, after)
	}
	p.follow = p.followJob
	return p, nil
}

// Start watches the tag set registry and wake-ups and starts acquiring.
// It needs the queue's streams (EnsureTopology; ErrNoQueues without them)
// and, for jobs to reach the queue, an Enqueuer running somewhere on the
// same NATS (a jetjob server runs one). ctx bounds the start only: the
// pool runs until Stop. Safe to call twice; after Stop it returns
// ErrStopped. A request or subscription of the start that NATS refuses the
// pool's user ends it at once in events.ErrPermission, wrapping the
// violation (nats.ErrPermissionViolation), which names the subject; so
// does any other violation the connection hears meanwhile.
func (p *Pool) Start(ctx context.Context) error {
	p.startMu.Lock()
	defer p.startMu.Unlock()
	p.mu.Lock()
	stopped := p.stopping
	p.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	if p.started {
		return nil
	}
	// Log lines are sent without waiting for their acks: the failures are
	// heard here, or a job's lines went missing unsaid. A server whose disk
	// is full does not answer, hence the timeout. The handle is the pool's
	// own, for these options, under the API prefix of the one it was given
	// (a domain's, through a leaf node).
	lineLost := func(jobID string, err error) { p.lineTrouble.add(err, zap.String("job", jobID)) }
	logJS, err := jsapi.New(p.nc, p.js, jetstream.WithPublishAsyncTimeout(p.logAckTimeout),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			lineLost(m.Subject[len(logPrefix):], err)
		}))
	if err != nil {
		return err
	}
	p.logJS = logJS
	// A request NATS refuses the pool's user goes unanswered: Start waited
	// out its 30 s for JetStream, and a subscription refused was not said
	// at all. Each refusal is told only to the connection's error handler
	// (the caller's) and as its last error, which Start watches.
	denials := startDenials(p.nc)
	ctx, stopWatching := denials.watch(ctx)
	defer stopWatching()
	refusedOr := func(err error) error {
		if denied := denials.heard(); denied != nil {
			return fmt.Errorf("start worker pool: %w", denied)
		}
		return err
	}
	// A pool started while its NATS cluster elects a leader (a node just
	// lost) waits for one: each of these requests may go unanswered or be
	// refused as "temporarily unavailable" meanwhile.
	said := func(err error) error {
		if provision.Transient(err) {
			p.logger.Info("JetStream did not answer; asking again (a NATS cluster electing a leader?)", zap.Error(err))
		}
		return err
	}
	err = provision.UntilAnswered(ctx, provision.ElectionWaitDefault, startTry, func(ctx context.Context) error {
		return said(p.bind(ctx, logJS))
	})
	if err != nil {
		return refusedOr(err)
	}
	p.logs.lost = lineLost
	kv := p.registry
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	err = provision.UntilAnswered(ctx, provision.ElectionWaitDefault, startTry, func(ctx context.Context) error {
		stopFollowHang, err := p.hb.FollowHangAfter(ctx, p.setHangAfter)
		if err != nil {
			return said(err)
		}
		watch, err := kv.WatchAll(loopCtx)
		if err != nil {
			stopFollowHang()
			return said(fmt.Errorf("watch tag sets: %w", err))
		}
		p.stopFollowHang, p.watch = stopFollowHang, watch
		return nil
	})
	if err != nil {
		cancel()
		return refusedOr(err)
	}
	// Take the registry as it is before the first pass.
	for e := range p.watch.Updates() {
		if e == nil {
			break
		}
		p.bindQueue(loopCtx, e, false)
	}
	// Subscribed only now: a wake-up for a queue not yet known reads the
	// registry, bound above. One sent before is not needed, since the first
	// pass asks every queue known that holds jobs.
	types := make([]string, 0, len(p.types))
	for t := range p.types {
		types = append(types, t)
	}
	if p.leaveWakes, err = joinWakeHub(p, types); err == nil {
		// A subscription refused is said after the SUB: the flush's
		// answer comes after it.
		if err = p.nc.FlushTimeout(startTry); err == nil || denials.heard() != nil {
			err = refusedOr(nil)
		} else {
			err = fmt.Errorf("start worker pool: join wake-ups: %w", err)
		}
		if err != nil {
			p.leaveWakes()
		}
	}
	if err != nil {
		cancel() // ends the registry watch too: see Stop
		p.stopFollowHang()
		return refusedOr(err)
	}
	p.mu.Lock()
	p.started = true
	p.cancel = cancel
	p.loopDone = make(chan struct{})
	p.runners = newRunners(loopCtx, runnerIdleDefault)
	p.mu.Unlock()
	go p.watchRegistry(loopCtx)
	// Wake-ups sent while the connection was down are lost: after a
	// reconnect, look at the queues holding jobs at once instead of at the
	// backup poll (every queue, as every worker did at once after a server
	// restart, was a burst of a fetch per queue per worker).
	// Counted in passes, as what it starts is: Stop waits for them all, and
	// a pass started meanwhile must not add to passes while Stop waits.
	reconnected := p.nc.StatusChanged(nats.CONNECTED)
	p.passes.Add(1)
	go func() {
		defer p.passes.Done()
		for {
			select {
			case <-loopCtx.Done():
				p.nc.RemoveStatusListener(reconnected)
				return
			case <-reconnected:
				p.reconnected.notify()
				p.backupPass(loopCtx)
				p.passes.Add(1)
				go func() {
					defer p.passes.Done()
					p.rescanRegistry(loopCtx)
				}()
			}
		}
	}()
	go func() {
		defer close(p.loopDone)
		p.acquireLoop(loopCtx)
	}()
	// Asked with the acquire loop running, so that wake-ups claimed
	// meanwhile are fetched, not left to expire.
	p.markHot(p.queuesHolding(ctx, p.knownQueues()))
	p.signal(p.wake)
	return nil
}

func (p *Pool) watchRegistry(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-p.watch.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				p.dropQueue(e.Key(), nil)
			} else if p.addQueue(ctx, e) {
				p.signal(p.wake)
			}
		}
	}
}

// addQueue binds to a registered queue this pool can serve, to be asked for
// jobs at once.
func (p *Pool) addQueue(ctx context.Context, e jetstream.KeyValueEntry) bool {
	return p.bindQueue(ctx, e, true)
}

// bindQueue binds to a registered queue this pool can serve; hot: to be
// asked for jobs at once.
func (p *Pool) bindQueue(ctx context.Context, e jetstream.KeyValueEntry, hot bool) bool {
	if e.Operation() != jetstream.KeyValuePut {
		return false
	}
	p.mu.Lock()
	_, have := p.queues[e.Key()]
	unserved := p.unserved[e.Key()]
	p.mu.Unlock()
	if have || unserved {
		return false
	}
	var key queueKey
	if json.Unmarshal(e.Value(), &key) != nil || key.name() != e.Key() {
		return false
	}
	if !p.types[key.Type] || !subsetOf(key.Tags, p.cfg.Tags) ||
		key.Prio < statemachine.PriorityMin || key.Prio > statemachine.PriorityMax {
		// A queue's name fixes its type and tag set, so this never changes.
		p.mu.Lock()
		p.unserved[e.Key()] = true
		p.mu.Unlock()
		return false
	}
	cons, err := p.js.Consumer(ctx, key.stream(), key.consumer())
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Held in memory, it did not outlive a restart of its server.
		var cfg jetstream.ConsumerConfig
		if cfg, err = queueConsumerConfig(ctx, p.js, key); err == nil {
			cons, _, err = provision.Consumer(ctx, p.js, key.stream(), cfg)
		}
	}
	if err != nil {
		p.logger.Warn("bind queue consumer", zap.String("queue", key.name()), zap.Error(err))
		return false
	}
	p.mu.Lock()
	q := &poolQueue{key: key, name: e.Key(), cons: cons}
	p.queues[e.Key()] = q
	if hot {
		p.setHotLocked(q)
	}
	p.mu.Unlock()
	return true
}

// A pool with more queues than listQueuesAbove in a queue stream learns
// which hold jobs from the stream's subjects, if it holds at most
// listSubjectsAtMost messages (about 60 KB of subjects), instead of a fetch
// from each queue. Past that, most of its queues are likely to hold jobs,
// and every pool's backup pass would read the whole list.
const (
	listQueuesAbove    = 2
	listSubjectsAtMost = 1_000
	// listTimeout bounds a pass over the queue streams, asked side by side.
	listTimeout = 10 * time.Second
)

// queuesHolding returns those of qs that a starting pool must ask for jobs:
// those holding messages, pending or held by a worker that may have died
// (they come back after the ack wait). A pool serving a thousand tag sets
// used to ask each of them at start, a thousand round trips, most to
// empty queues; it now asks each queue stream what it holds, one request,
// or two when it holds anything: a message's subject names its queue. The
// stream's own state, and not its consumers' counts of pending messages,
// which a consumer updates a moment after the store acknowledged a message
// (nats-server signals consumers on a goroutine of its own). Asked after
// subscribing to wake-ups, so that a job queued since reaches the pool one
// way or the other.
func (p *Pool) queuesHolding(ctx context.Context, qs []*poolQueue) []*poolQueue {
	byShard := map[int][]*poolQueue{}
	for _, q := range qs {
		byShard[q.key.shard()] = append(byShard[q.key.shard()], q)
	}
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	var (
		mu   sync.Mutex
		look []*poolQueue
		wg   sync.WaitGroup
	)
	for shard, qs := range byShard {
		if len(qs) <= listQueuesAbove {
			mu.Lock()
			look = append(look, qs...)
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			holding, err := queuesWithMessages(ctx, p.js, shard)
			if err != nil && !errors.Is(err, context.Canceled) { // canceled: the pool stops
				p.logger.Warn("list a queue stream's subjects; asking each queue", zap.Int("shard", shard), zap.Error(err))
			}
			mu.Lock()
			defer mu.Unlock()
			for _, q := range qs {
				if holding == nil || holding[q.key.prefix()] {
					look = append(look, q)
				}
			}
		}()
	}
	wg.Wait()
	return look
}

// queuesWithMessages returns the subject prefixes of the queues holding
// messages in a queue stream, or nil if it could not tell.
func queuesWithMessages(ctx context.Context, js jetstream.JetStream, shard int) (map[string]bool, error) {
	st, err := js.Stream(ctx, queueStream(shard))
	if err != nil {
		return nil, err
	}
	holding := map[string]bool{}
	switch msgs := st.CachedInfo().State.Msgs; {
	case msgs == 0:
		return holding, nil
	case msgs > listSubjectsAtMost:
		return nil, nil
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(shardPrefix(shard)+">"))
	if err != nil {
		return nil, err
	}
	for subject := range info.State.Subjects {
		// <shard prefix><type>.<tagset>.<priority>.<job id>
		if i := strings.LastIndexByte(subject, '.'); i > 0 {
			holding[subject[:i]] = true
		}
	}
	return holding, nil
}

// dropQueue stops asking a queue removed from the registry (as idle, by
// ForgetIdleQueues); a job for it later registers it again. With only
// set, it drops that poolQueue and not one bound since under the same name
// (the queue registered again).
func (p *Pool) dropQueue(name string, only *poolQueue) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if only == nil {
		// Removed from the registry: a queue this pool cannot serve is
		// remembered no more, or the set would grow with every tag set
		// ever registered (tag sets per user or per repository).
		delete(p.unserved, name)
	}
	q := p.queues[name]
	if q == nil || (only != nil && q != only) {
		return
	}
	q.dropped.Store(true)
	delete(p.queues, name)
	delete(p.recheck, name)
	delete(p.woken, name)
	// Left in the hot lists, where takeHot skips it.
	delete(p.hot, name)
}

// claimWake takes a wake-up shared by the pools serving its type, if this
// pool serves the queue and has a free slot for it beside its other claims
// (or renews its claim on the queue): the pool then fetches from it within
// claimWindow, or passes the wake-up on to every pool.
func (p *Pool) claimWake(name string) bool {
	p.mu.Lock()
	q, serve := p.queues[name]
	// A slot per claim: a pool that took more claims than it had free
	// slots fetched the rest after their window, and each expired claim
	// was passed on to every pool.
	_, claimedBefore := p.claims[name]
	claim := serve && !p.stopping && (claimedBefore || p.free() > len(p.claims))
	if claim {
		p.setClaimedHotLocked(q)
		p.wakes++
		p.woken[name] = p.wakes
		if c := p.claims[name]; c != nil {
			c.wake = p.wakes // the fetch that answers it must be asked after this
		} else {
			p.claims[name] = &wakeClaim{wake: p.wakes, timer: time.AfterFunc(p.claimWindow, func() { p.release(name, claimExpired, true) })}
		}
	}
	p.mu.Unlock()
	if claim {
		p.signal(p.wake)
	}
	return claim
}

// claimWindowDefault bounds how long a pool that claimed a wake-up may take to
// fetch before every pool is woken: a claim it could not keep (its slots
// filled by another queue first, say) costs this, not the backup poll.
const claimWindowDefault = 5 * time.Millisecond

// wakeClaim is this pool's claim on a queue's shared wake-up.
type wakeClaim struct {
	// wake is the number of the last wake-up claimed (Pool.wakes): a fetch
	// asked before it cannot answer for it.
	wake  uint64
	timer *time.Timer
}

// claimExpired is release's asked for the claim's own timer: after every wake-up.
const claimExpired = ^uint64(0)

// release ends this pool's claim on a queue's wake-up, unless the fetch
// that answers it was asked before the claim's last wake-up (asked: the
// pool's wake-up count then), passing the wake-up on to every pool if pass
// (the claim expired, or the fetch came back full, failed or unanswered).
func (p *Pool) release(name string, asked uint64, pass bool) {
	p.mu.Lock()
	c, claimed := p.claims[name]
	if claimed && asked < c.wake {
		claimed = false // the claim's own timer, or a later fetch, answers it
	} else if claimed {
		c.timer.Stop()
		delete(p.claims, name)
	}
	p.mu.Unlock()
	if claimed && pass {
		passOnWake(p.nc, name)
	}
}

// onWake takes a wake-up that every pool serving its type gets.
func (p *Pool) onWake(name string) {
	p.mu.Lock()
	q, serve := p.queues[name]
	if serve {
		p.setHotLocked(q)
		p.wakes++
		p.woken[name] = p.wakes
	}
	skip := serve || p.unserved[name] || p.looking[name]
	p.mu.Unlock()
	if serve {
		p.signal(p.wake)
	} else if key, ok := parseKeyName(name); !skip && ok && p.types[key.Type] {
		// A queue the registry watch has not shown yet (it may be catching
		// up after a reconnect): read its registration directly.
		go p.lookupQueue(name)
	}
}

func (p *Pool) lookupQueue(name string) {
	p.mu.Lock()
	if p.looking[name] {
		p.mu.Unlock()
		return
	}
	p.looking[name] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.looking, name)
		p.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := p.registry.Get(ctx, name)
	if err != nil {
		return
	}
	if p.addQueue(ctx, e) {
		p.mu.Lock()
		p.wakes++
		p.woken[name] = p.wakes // as the wake-up that sent for it
		p.mu.Unlock()
		p.signal(p.wake)
	}
}

// rescanRegistry reads every registered queue, for when the watch may have
// missed some (after a reconnect).
func (p *Pool) rescanRegistry(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	keys, err := p.registry.ListKeys(ctx)
	if err != nil {
		return
	}
	defer func() { _ = keys.Stop() }()
	for name := range keys.Keys() {
		if ctx.Err() != nil {
			continue // read to the end: the lister's goroutine sends every key
		}
		p.mu.Lock()
		_, have := p.queues[name]
		p.mu.Unlock()
		if !have {
			p.lookupQueue(name)
		}
	}
}

func (p *Pool) unsubscribe() {
	if p.leaveWakes != nil {
		p.leaveWakes()
		p.leaveWakes = nil
	}
}

func (p *Pool) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// jittered is d give or take a tenth, at random: pools started together (a
// fleet deployed at once) would otherwise make their backup passes in the
// same moment, every time.
func jittered(d time.Duration) time.Duration {
	spread := d / 5
	if spread <= 0 {
		return d
	}
	return d - spread/2 + rand.N(spread)
}

// acquireLoop fetches while there are free slots and work, then waits for a
// wake-up, a freed slot, a recheck or the backup poll.
//
// While jobs run, a slot freed alone waits up to fetchGather for others
// before the round trip of a fetch: jobs finish in bursts, and one fetch for
// several slots costs what one for a single slot does. The wait is bounded,
// so a slot freed beside long-running jobs still takes a job that waits.
func (p *Pool) acquireLoop(ctx context.Context) {
	backup := time.NewTimer(jittered(p.cfg.BackupPoll))
	defer backup.Stop()
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	defer gather.Stop()
	gathering := false
	// now: fetch with the slots there are, as after a wake-up.
	now := true
	for {
		free := p.free()
		switch {
		case free == 0:
		case !now && p.busy.Load() > 0 && free < p.fetchAtLeast():
			if !gathering {
				gathering = true
				gather.Reset(fetchGather)
			}
		default:
			if gathering {
				gathering = false
				gather.Stop()
			}
			now = false
			got, again := p.fetchRound(ctx)
			if ctx.Err() != nil {
				return
			}
			if again > 0 {
				// Also when other queues gave jobs: the empty one is
				// looked at again on time, not at the next backup poll.
				recheck.Reset(again)
			}
			if got > 0 {
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.freed:
		case <-p.wake:
			now = true
		case <-gather.C:
			gathering, now = false, true
		case <-recheck.C:
			p.markRecheck()
			now = true
		case <-backup.C:
			p.backupPass(ctx)
			backup.Reset(jittered(p.cfg.BackupPoll))
		}
		if p.free() == 0 {
			// What woke the loop is in the hot set; the slots that free
			// next gather as usual.
			now = false
		}
	}
}

// fetchGather bounds how long a slot freed while jobs run waits for others
// to free before it fetches.
const fetchGather = time.Millisecond

func (p *Pool) fetchAtLeast() int { return max(1, p.cfg.Concurrency/8) }

func (p *Pool) free() int { return p.cfg.Concurrency - int(p.busy.Load()) }

func (p *Pool) markHot(qs []*poolQueue) {
	p.mu.Lock()
	for _, q := range qs {
		p.setHotLocked(q)
	}
	p.mu.Unlock()
}

// recheckDelays space the second looks at a queue that was empty right
// after a wake-up.
var recheckDelays = []time.Duration{time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond, 100 * time.Millisecond}

func (p *Pool) markRecheck() {
	p.mu.Lock()
	for name := range p.recheck {
		if q := p.queues[name]; q != nil {
			p.setHotLocked(q)
		}
	}
	p.mu.Unlock()
}

// backupPass looks at the queues holding jobs that no wake-up announced
// (one was lost, or a job held by a worker that died came back after the
// ack wait), on a goroutine of its own, so that a slow server does not hold
// up the acquire loop; one at a time.
func (p *Pool) backupPass(ctx context.Context) {
	if !p.backingUp.CompareAndSwap(false, true) {
		return
	}
	known := p.knownQueues()
	p.passes.Add(1)
	go func() {
		defer p.passes.Done()
		defer p.backingUp.Store(false)
		if look := p.queuesHolding(ctx, known); len(look) > 0 && ctx.Err() == nil {
			p.markHot(look)
			p.signal(p.wake)
		}
	}()
}

func (p *Pool) knownQueues() []*poolQueue {
	p.mu.Lock()
	defer p.mu.Unlock()
	known := make([]*poolQueue, 0, len(p.queues))
	for _, q := range p.queues {
		known = append(known, q)
	}
	return known
}

// fetchRound pulls from the hot queues, highest priority first, and starts
// what it got, until the slots or the hot queues run out. A queue that comes
// back empty is cold until a wake-up, a recheck or the backup poll.
func (p *Pool) fetchRound(ctx context.Context) (int, time.Duration) {
	got := 0
	var again time.Duration
	// Queues whose fetch failed are hot again after the round, not within
	// it, so a failing server is not asked again at once.
	var failed []*poolQueue
	defer func() { p.markHot(failed) }()
	for ctx.Err() == nil {
		n := p.free()
		if n <= 0 {
			return got, again
		}
		qs := p.takeHot(n)
		if len(qs) == 0 {
			return got, again
		}
		g, a := p.fetchFrom(ctx, qs, &failed)
		got += g
		if a > 0 && (again == 0 || a < again) {
			again = a
		}
	}
	return got, again
}

// setHotLocked marks q to be asked for jobs, behind the queues of its
// priority marked before it, so that every tag set gets its turn.
func (p *Pool) setHotLocked(q *poolQueue) { p.addHotLocked(&p.hotByPrio, q) }

// setClaimedHotLocked marks q to be asked for jobs ahead of the queues of
// its priority that are hot without a claim, unless it is hot already: a
// queue claimed again and again (one that is never empty) would otherwise
// keep overtaking the others, which then waited for two slots to free at
// once.
func (p *Pool) setClaimedHotLocked(q *poolQueue) { p.addHotLocked(&p.claimedByPrio, q) }

// addHotLocked appends q, if not hot already, to the list of its priority
// in lists.
func (p *Pool) addHotLocked(lists *queuesByPrio, q *poolQueue) {
	if q.dropped.Load() || p.hot[q.name] {
		return
	}
	p.hot[q.name] = true
	i := q.key.Prio - statemachine.PriorityMin
	lists[i] = append(lists[i], q)
}

// takeHot takes up to limit queues out of the hot set, highest priority
// first, claimed ones first, and in the order they became hot, in time
// independent of how many are hot: a pool with few free slots may have
// hundreds. A hot queue is in one of the two lists, once.
func (p *Pool) takeHot(limit int) []*poolQueue {
	p.mu.Lock()
	defer p.mu.Unlock()
	var picked []*poolQueue
	take := func(list []*poolQueue) []*poolQueue {
		k := 0
		for ; k < len(list) && len(picked) < limit; k++ {
			q := list[k]
			if q.dropped.Load() {
				continue // removed from the registry: takes no slot
			}
			delete(p.hot, q.name)
			picked = append(picked, q)
		}
		if k == len(list) {
			return list[:0] // reuse the array
		}
		return list[k:]
	}
	for i := len(p.hotByPrio) - 1; i >= 0 && len(picked) < limit; i-- {
		p.claimedByPrio[i] = take(p.claimedByPrio[i])
		p.hotByPrio[i] = take(p.hotByPrio[i])
	}
	return picked
}

// fetchFrom asks each queue for as many jobs as there are free slots.
func (p *Pool) fetchFrom(ctx context.Context, hot []*poolQueue, failed *[]*poolQueue) (int, time.Duration) {
	got := 0
	var again time.Duration
	for i, q := range hot {
		n := p.free()
		if n <= 0 {
			// Out of slots: the queues not yet asked stay hot.
			p.markHot(hot[i:])
			break
		}
		// A pool with more free slots than one fetch may ask for fills
		// the rest on its next round: this queue stays hot when full.
		n = min(n, queueMaxFetch)
		p.mu.Lock()
		wokenBefore, askedWake := p.woken[q.name], p.wakes
		p.mu.Unlock()
		askedAt := time.Now()
		batch, err := q.cons.FetchNoWait(n)
		if err != nil {
			p.logger.Debug("fetch", zap.String("queue", q.name), zap.Error(err))
			*failed = append(*failed, q)
			p.release(q.name, askedWake, true)
			continue
		}
		fetched := 0
		for msg := range batch.Messages() {
			fetched++
			p.busy.Add(1)
			p.runningWG.Add(1)
			p.runners.run(func() { p.take(ctx, q, msg) })
		}
		got += fetched
		if fetched == 0 && errors.Is(batch.Error(), nats.ErrNoResponders) {
			// The consumer is gone (its server restarted): make it anew,
			// then ask again.
			go p.remakeConsumer(ctx, q)
			continue
		}
		fetchErr := batch.Error()
		failedFetch := fetched == 0 && fetchErr != nil && !errors.Is(fetchErr, jetstream.ErrNoMessages)
		if failedFetch {
			p.logger.Warn("fetch", zap.String("queue", q.name), zap.Error(fetchErr))
		}
		noAnswer := fetched == 0 && fetchErr == nil && time.Since(askedAt) >= unanswered
		// Full, there may be more than this pool can take; failed or not
		// answered, another pool may do better.
		full := fetched == n
		p.release(q.name, askedWake, full || failedFetch || noAnswer)
		if noAnswer {
			// No answer, not even "none": the request may yet reach the
			// server (a connection that holds bytes without failing) and
			// be given jobs after the fetch stopped listening. Those come
			// back once the queue's ack wait has passed, and nothing
			// announces them.
			p.askAgainLater(q, 2*QueueAckWait)
		}
		p.mu.Lock()
		woken := p.woken[q.name] != 0
		if p.woken[q.name] == wokenBefore {
			// Answered. A wake-up that came during the fetch stays, for the
			// fetch that follows it: the job it announced may not have been
			// counted by the consumer yet.
			delete(p.woken, q.name)
		}
		switch {
		case full:
			p.setHotLocked(q) // there may be more
			delete(p.recheck, q.name)
		case fetched > 0:
			delete(p.recheck, q.name)
		case (woken || p.recheck[q.name] > 0) && p.recheck[q.name] < len(recheckDelays):
			// A wake-up can outrun the consumer's own count of pending
			// messages, so an empty answer right after one is asked again
			// a few times, shortly after.
			d := recheckDelays[p.recheck[q.name]]
			p.recheck[q.name]++
			if again == 0 || d < again {
				again = d
			}
		default:
			delete(p.recheck, q.name)
		}
		p.mu.Unlock()
	}
	return got, again
}

// unanswered is how long a fetch that waits for no message (FetchNoWait)
// goes without any answer before the client gives it up (1 s), less a
// margin.
const unanswered = 900 * time.Millisecond

// askAgainLater looks at q again after d, for jobs made available again
// with no wake-up: redelivered after the ack wait, or after a nak's delay.
func (p *Pool) askAgainLater(q *poolQueue, d time.Duration) {
	time.AfterFunc(d, func() {
		if q.dropped.Load() {
			return
		}
		p.markHot([]*poolQueue{q})
		p.signal(p.wake)
	})
}

// bind checks the work queue is there and binds the heartbeats, the logs
// and the tag set registry.
func (p *Pool) bind(ctx context.Context, logJS jetstream.JetStream) (err error) {
	// Before anything is made: a worker started ahead of its server
	// must not make the server's streams itself, with settings the
	// server would not choose (one replica, say).
	if err = checkQueues(ctx, p.js); err != nil {
		return err
	}
	if p.hb, err = events.OpenHeartbeats(ctx, p.js); err != nil {
		return err
	}
	if p.logs, err = AttachLogs(ctx, logJS); err != nil {
		return err
	}
	if p.registry, err = p.js.KeyValue(ctx, TagsetsBucket); err != nil {
		return fmt.Errorf("bind tag sets: %w", err)
	}
	return nil
}

// startTry bounds each try of a request Start makes (a request sent to a
// leader that has just died is never answered).
const startTry = 5 * time.Second

// remakeBackoffMin and remakeBackoffMax bound the pause after a failed
// remake of a queue's consumer, doubled at each failure in a row.
const (
	remakeBackoffMin = 250 * time.Millisecond
	remakeBackoffMax = 8 * time.Second
)

func (p *Pool) remakeConsumer(ctx context.Context, q *poolQueue) {
	if !q.remaking.CompareAndSwap(false, true) {
		return
	}
	defer q.remaking.Store(false)
	if time.Now().UnixNano() < q.remakeNotBefore.Load() {
		return // the remake after the last failed one is set already
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Gone from the registry too: removed as idle, not lost.
	if _, err := p.registry.Get(ctx, q.name); errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		p.dropQueue(q.name, q)
		return
	}
	cfg, err := queueConsumerConfig(ctx, p.js, q.key)
	if err == nil {
		_, _, err = provision.Consumer(ctx, p.js, q.key.stream(), cfg)
	}
	if err != nil {
		// A cluster electing leaders refuses at once; every fetch of the
		// queue would ask again, and fetches follow each wake-up.
		if time.Since(time.Unix(0, q.remakeNotBefore.Load())) > 2*remakeBackoffMax {
			q.remakeBackoff = 0 // an outage of its own, not this one going on
		}
		q.remakeBackoff = min(max(2*q.remakeBackoff, remakeBackoffMin), remakeBackoffMax)
		q.remakeNotBefore.Store(time.Now().Add(q.remakeBackoff).UnixNano())
		p.logger.Warn("remake queue consumer", zap.String("queue", q.name), zap.Duration("again_in", q.remakeBackoff), zap.Error(err))
		p.askAgainLater(q, q.remakeBackoff)
		return
	}
	q.remakeBackoff = 0
	p.markHot([]*poolQueue{q})
	p.signal(p.wake)
}

// take acquires the job of a queue message of q and runs it.
func (p *Pool) take(ctx context.Context, q *poolQueue, msg jetstream.Msg) {
	slot := &slot{p: p}
	defer func() {
		slot.free()
		slot.leave()
	}()
	subject := msg.Subject()
	jobID := subject[strings.LastIndexByte(subject, '.')+1:]
	// The acquire does not end with the pool's loop: an append handed to
	// the log is committed whether its caller still waits or not, and a job
	// acquired for a caller that gave up stayed running, never run, until
	// the hang detector failed it. Once acquired, a stopping pool hands the
	// job back (run).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), acquireTimeout)
	defer cancel()
	var held statemachine.Job
	var snapshot statemachine.Job
	var err error
	if json.Unmarshal(msg.Data(), &snapshot) == nil && snapshot.ID == jobID && snapshot.Version > 0 {
		held, err = p.m.AcquireFrom(ctx, snapshot, p.cfg.WorkerID)
	} else {
		snapshot = statemachine.Job{}
		held, err = p.m.Acquire(ctx, jobID, p.cfg.WorkerID)
	}
	if err != nil {
		if errors.Is(err, statemachine.ErrIllegalTransition) || errors.Is(err, events.ErrNotFound) ||
			errors.Is(err, events.ErrInvalidJobID) {
			// Canceled, finished or taken by someone else: the message is stale.
			_ = msg.Ack()
			return
		}
		mine, ok := p.acquiredAnyway(jobID, snapshot.Version)
		if !ok {
			// Not stored, another's, or this pool's and claimed by another
			// take: offered again, and then found stale.
			p.acquireTrouble.add(err, zap.String("job", jobID))
			// Offered again later each time it fails: a server that cannot
			// write fails every acquire, and each pending job was fetched
			// and refused every second.
			delay := acquireRetryDelay(msg)
			_ = msg.NakWithDelay(delay)
			p.askAgainLater(q, time.Second+100*time.Millisecond) // no wake-up says it is back
			return
		}
		held = mine
	} else if !p.claimLease(held.Lease, held.ID) {
		_ = msg.Ack()
		return
	}
	_ = msg.Ack()
	p.run(held, slot)
}

// logAckTimeoutDefault is how long a job's log line waits for its ack
// before it is said lost.
const logAckTimeoutDefault = 10 * time.Second

// acquireRetryDelay is 1 s after a job's first failed acquire, doubling
// with each delivery of its queue message to 10 s: no longer, since a job
// offered again after an outage waits out its last delay.
func acquireRetryDelay(msg jetstream.Msg) time.Duration {
	delivered := uint64(1)
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 0 {
		delivered = md.NumDelivered
	}
	return min(time.Second<<min(delivered-1, 4), 10*time.Second)
}

// acquireTimeout bounds an acquire, and the read that follows one whose
// outcome is unknown.
const acquireTimeout = 30 * time.Second

// acquiredAnyway reads a job whose acquire failed without an answer (a
// timeout, a lost connection): the append may have been committed all the
// same, and then the job is this pool's to run or hand back, claimed for
// the caller (claimLease).
func (p *Pool) acquiredAnyway(jobID string, after uint64) (statemachine.Job, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), acquireTimeout)
	defer cancel()
	held := func() (statemachine.Job, bool) {
		job, err := p.m.Load(ctx, jobID)
		return job, err == nil && job.State == statemachine.StateRunning && job.WorkerID == p.cfg.WorkerID && job.Lease > after
	}
	job, ok := held()
	if !ok || !p.claimLease(job.Lease, job.ID) {
		return statemachine.Job{}, false
	}
	// Read again once claimed: the take that ran the attempt may have
	// recorded its result, and given up its claim, between the read and the
	// claim; the attempt is over then, not this take's to run again.
	if again, ok := held(); !ok || again.Lease != job.Lease {
		p.mu.Lock()
		delete(p.claimed, job.Lease)
		p.mu.Unlock()
		return statemachine.Job{}, false
	}
	return job, true
}

// claimLease reserves an acquired attempt for the take that is to run it,
// until run has recorded its result; false when another take of this pool
// has it: the one whose acquire it was, or one whose acquire also went
// unanswered and found the same lease.
func (p *Pool) claimLease(lease uint64, jobID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.claimed[lease]; ok {
		return false
	}
	p.claimed[lease] = jobID
	return true
}

// slot is one of the pool's Concurrency places to run a handler, held from
// the fetch until the handler returns.
type slot struct {
	p     *Pool
	freed bool
	left  sync.Once
}

// leave tells Stop that it need not wait for the slot's take any more:
// when it returns, or once its handler's attempt was failed without it
// (JobTimeout), though the handler may never return.
func (s *slot) leave() { s.left.Do(s.p.runningWG.Done) }

func (s *slot) free() {
	if s.freed {
		return
	}
	s.freed = true
	s.p.busy.Add(-1)
	s.p.signal(s.p.freed)
}

// run runs the handler on an acquired job and reports its result, fenced by
// the attempt's lease.
func (p *Pool) run(held statemachine.Job, slot *slot) {
	defer func() {
		p.mu.Lock()
		delete(p.claimed, held.Lease)
		p.mu.Unlock()
	}()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	p.mu.Lock()
	stopping := p.stopping
	if !stopping {
		p.running[held.Lease] = runningJob{id: held.ID, cancel: cancel}
	}
	p.mu.Unlock()
	if stopping {
		// Acquired as the pool stopped: handed back without running, and
		// without using up an attempt.
		slot.free()
		rctx, rcancel := context.WithTimeout(context.Background(), acquireTimeout)
		defer rcancel()
		recorded, err := p.m.Release(rctx, held, "worker shutting down")
		switch {
		case err == nil:
			p.passResult(recorded, nil)
		case !errors.Is(err, statemachine.ErrLeaseLost):
			p.logger.Warn("hand back a job acquired while stopping", zap.String("job", held.ID), zap.Error(err))
			p.countUnrecorded()
		}
		return
	}
	job := &Job{ID: held.ID, Type: held.Type, Tags: held.Tags, Meta: held.Meta, Payload: held.Payload, Priority: held.Priority,
		Attempt: held.Attempt, MaxAttempts: held.MaxAttempts, Lease: held.Lease, WorkerID: p.cfg.WorkerID, held: held, logs: p.logs}

	// The attempt beats until its result is recorded, not only while its
	// handler runs: a result the server cannot record yet is tried again,
	// and its attempt must not look hung meanwhile.
	beatCtx, stopBeats := context.WithCancel(context.Background())

	// handlerReturned ends the job timeout once the handler returned: its
	// result may take long to record (a server that cannot write), and a
	// timeout firing meanwhile failed an attempt whose work was done.
	handlerReturned := func() {}
	if p.cfg.JobTimeout > 0 {
		timeout := time.AfterFunc(p.cfg.JobTimeout, func() { cancel(ErrJobTimeout) })
		// A handler that ignores its context is failed without it, its
		// slot kept until it returns.
		abandoned := make(chan struct{})
		abandon := time.AfterFunc(config.SumDurations(p.cfg.JobTimeout, p.cfg.ShutdownGrace, abandonMargin), func() {
			defer close(abandoned)
			if p.failUnstopped(held) {
				// Its attempt is over, its outcome recorded: Stop does
				// not wait for a handler that may never return, nor
				// name its job as one left running, and nothing beats
				// for the attempt any more.
				stopBeats()
				p.mu.Lock()
				delete(p.claimed, held.Lease)
				delete(p.running, held.Lease)
				p.mu.Unlock()
				slot.leave()
			}
		})
		var once sync.Once
		handlerReturned = func() {
			once.Do(func() {
				timeout.Stop()
				// A failure under way is waited for, so that Stop, which
				// waits for run, returns after its OnResult.
				if !abandon.Stop() {
					<-abandoned
				}
			})
		}
	}
	watchDone := make(chan struct{})
	defer func() {
		stopBeats()
		<-watchDone
	}()
	go p.watchAttempt(ctx, beatCtx, held, cancel, watchDone)
	returned := false
	defer func() {
		if !returned {
			// The handler called runtime.Goexit (t.FailNow does): no
			// error to return and no panic to recover, and this goroutine
			// ends once its deferred calls are done. Unended, the attempt
			// would stay running, its slot taken, until the hang detector
			// failed it.
			p.logger.Error("handler exited without returning", zap.String("job", job.ID), zap.Int("attempt", job.Attempt))
			job.logStream(StreamStderr, ErrHandlerExited.Error())
			p.endAttempt(ctx, cancel, held, job, slot, handlerReturned, ErrHandlerExited)
		}
	}()
	err := p.callHandler(ctx, job)
	returned = true
	p.endAttempt(ctx, cancel, held, job, slot, handlerReturned, err)
}

// endAttempt records how the attempt whose handler returned err ended.
func (p *Pool) endAttempt(ctx context.Context, cancel context.CancelCauseFunc, held statemachine.Job, job *Job, slot *slot,
	handlerReturned func(), err error) {
	handlerReturned()
	cancel(nil) // stops the cancel watch; a cause set before stays
	p.mu.Lock()
	delete(p.running, held.Lease)
	p.mu.Unlock()

	// The result is recorded while the slot runs the next job, as River's
	// completer does: waiting for the commit would hold each slot idle for
	// a whole batched, fsync'd append, which bounds throughput at the
	// concurrency over the commit latency. A result not yet recorded when
	// the process dies is lost as a crash inside the handler would lose it:
	// the hang detector fails the attempt. At most Concurrency results wait
	// at once; beyond that the slot waits too.
	p.reporting <- struct{}{}
	defer func() { <-p.reporting }()
	slot.free()
	// Not ended by Stop: a try under way, or a hand-back begun after Stop's
	// ctx ended, is made once (pauseReport ends the tries).
	rctx, rcancel := context.WithTimeout(context.Background(), reportRetryLimit)
	defer rcancel()
	job.resultMu.Lock()
	result := job.result
	job.over = true
	job.resultMu.Unlock()
	job.linesStored(rctx, p.reportsCtx.Done(), p.logAckTimeout)
	p.recordResult(rctx, held, attemptEnd{cause: context.Cause(ctx), err: err, result: result})
}

// attemptEnd is how an attempt ended: the cause of its context's end, if
// it ended, what the handler returned, and the result it set.
type attemptEnd struct {
	cause, err error
	result     json.RawMessage
}

// abandonMargin is how much longer than ShutdownGrace a handler past its
// timeout is waited for: the exec handler SIGKILLs its command at the end
// of its grace, the worker's too, and was failed as unstopped in the same
// moment its command died, its own result refused.
const abandonMargin = 2 * time.Second

// failUnstopped fails an attempt whose handler ran past its timeout and did
// not stop within the grace after it. The handler's own result, if it ever
// returns, is refused: the attempt no longer holds the job. It reports
// whether the attempt is over: failed (or its cancel acknowledged) now, or
// ended before by someone else.
func (p *Pool) failUnstopped(held statemachine.Job) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msg := fmt.Sprintf("ran past the job timeout of %s and did not stop within %s after it", p.cfg.JobTimeout, config.SumDurations(p.cfg.ShutdownGrace, abandonMargin))
	recorded, err := p.m.Fail(ctx, held, statemachine.FailParams{Code: ErrorCodeTimeout, Error: msg})
	var illegal *statemachine.IllegalTransitionError
	if errors.As(err, &illegal) && illegal.State == statemachine.StateCanceling {
		// Canceled meanwhile: the cancel is what ends the attempt.
		recorded, err = p.m.AcknowledgeCancel(ctx, held)
	}
	switch {
	case err == nil:
		p.passResult(recorded, ErrJobTimeout)
	case !errors.Is(err, statemachine.ErrLeaseLost):
		p.logger.Warn("fail an attempt that ignored its timeout", zap.String("job", held.ID), zap.Error(err))
		return false
	}
	return true
}

func (p *Pool) callHandler(ctx context.Context, job *Job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
			// Where it panicked is what makes a panic worth reading: in
			// the worker's log, and in the job's, where its owner looks.
			stack := debug.Stack()
			p.logger.Error("handler panicked", zap.String("job", job.ID), zap.Int("attempt", job.Attempt),
				zap.String("panic", fmt.Sprint(r)), zap.ByteString("stack", stack))
			job.logStream(StreamStderr, err.Error())
			for _, line := range strings.Split(strings.TrimRight(string(stack), "\n"), "\n") {
				job.logStream(StreamStderr, line)
			}
		}
	}()
	return p.handler(ctx, job)
}

// errorText is a handler's error as recorded. An Error method that panics
// (a nil pointer inside the handler's own error type) must fail the attempt,
// not the worker.
func errorText(err error) (text string) {
	defer func() {
		if r := recover(); r != nil {
			text = fmt.Sprintf("%T whose Error method panicked: %v", err, r)
		}
	}()
	return err.Error()
}

func (p *Pool) report(ctx context.Context, held statemachine.Job, end attemptEnd) {
	err := end.err
	if errors.Is(end.cause, ErrLeaseLost) {
		p.logger.Info("lost the job; its result is dropped", zap.String("job", held.ID))
		return
	}
	// A result the server could not record (a full disk, a server
	// restarting, an election past the log's own wait) is tried again:
	// dropped, the attempt would be failed as hung and the job run again,
	// its work done. A report is fenced by the lease, so a try that lands
	// after the detector failed the attempt is refused, never recorded twice.
	pause := reportRetryFirst
	mayHaveLanded := false
	for tries := 1; ; tries++ {
		recorded, rerr := p.recordOnce(ctx, held, end)
		if rerr == nil {
			if tries > 1 {
				p.logger.Info("result recorded", zap.String("job", held.ID), zap.Int("tries", tries))
			}
			p.passResult(recorded, err)
			return
		}
		if mayHaveLanded && !reportWorthRetrying(rerr) {
			// Refused now, perhaps because an earlier try, whose answer
			// never came, was recorded.
			if job, ok := p.reportLanded(held); ok {
				p.logger.Info("result recorded by an earlier try", zap.String("job", held.ID), zap.Int("tries", tries))
				p.passResult(job, err)
				return
			}
		}
		if errors.Is(rerr, statemachine.ErrLeaseLost) {
			p.logger.Info("result refused: the attempt no longer holds the job", zap.String("job", held.ID), zap.Error(rerr))
			return
		}
		if !reportWorthRetrying(rerr) || !p.pauseReport(ctx, jittered(pause)) {
			p.logger.Warn("report result", zap.String("job", held.ID), zap.Int("tries", tries), zap.Error(rerr))
			p.countUnrecorded()
			return
		}
		if tries == 1 {
			p.logger.Warn("report result; trying again until it is recorded", zap.String("job", held.ID), zap.Error(rerr))
		}
		mayHaveLanded = mayHaveLanded || errors.Is(rerr, statemachine.ErrOutcomeUnknown)
		pause = min(2*pause, reportRetryMax)
	}
}

// pauseReport waits d before a report's next try, less if the connection
// is made again meanwhile (the server is back: the sooner the result is
// recorded, the less its attempt can look hung); false if ctx ended.
func (p *Pool) pauseReport(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.reconnected.wait():
	case <-ctx.Done():
		return false
	case <-p.reportsCtx.Done():
		return false
	}
	return true
}

// Pauses between tries of a report.
const (
	reportRetryFirst = 100 * time.Millisecond
	reportRetryMax   = time.Second
)

// reportRetryLimit bounds the tries of a report (they end sooner when Stop's
// ctx ends): long enough for an operator to free a full disk and restart
// the server. The attempt beats meanwhile, and a try after the detector
// failed it anyway is refused.
const reportRetryLimit = 15 * time.Minute

// recordOnce records the attempt's end once, as the handler's return and
// the cause of its context's end say.
func (p *Pool) recordOnce(ctx context.Context, held statemachine.Job, end attemptEnd) (statemachine.Job, error) {
	cause, err := end.cause, end.err
	var (
		recorded statemachine.Job
		rerr     error
	)
	switch {
	case errors.Is(cause, ErrCanceled):
		recorded, rerr = p.m.AcknowledgeCancel(ctx, held)
	case err == nil:
		// Also after a shutdown cancel: the handler finished the work, and
		// handing the job back would run it twice.
		recorded, rerr = p.m.Succeed(ctx, held, end.result)
	case errors.Is(cause, ErrShutdown):
		recorded, rerr = p.m.Release(ctx, held, "worker shutting down")
	case errors.Is(cause, ErrLostContact):
		recorded, rerr = p.m.Fail(ctx, held, statemachine.FailParams{Code: ErrorCodeLostContact, Error: cause.Error()})
	case errors.Is(cause, ErrJobTimeout):
		msg := fmt.Sprintf("ran past the job timeout of %s", p.cfg.JobTimeout)
		if err != nil && !errors.Is(err, ErrJobTimeout) {
			msg += ": " + errorText(err) // what the handler said as it stopped
		}
		recorded, rerr = p.m.Fail(ctx, held, statemachine.FailParams{Code: ErrorCodeTimeout, Error: msg})
	default:
		fp := statemachine.FailParams{Error: errorText(err)}
		var noRetry *NoRetryError
		fp.NoRetry = errors.As(err, &noRetry)
		var coded *CodedError
		if errors.As(err, &coded) {
			fp.Code = coded.Code
		}
		recorded, rerr = p.m.Fail(ctx, held, fp)
	}
	// A cancel that arrived after the handler returned: acknowledge it.
	var illegal *statemachine.IllegalTransitionError
	if errors.As(rerr, &illegal) && illegal.State == statemachine.StateCanceling {
		recorded, rerr = p.m.AcknowledgeCancel(ctx, held)
	}
	return recorded, rerr
}

// reportWorthRetrying tells a refusal, which another try would meet again,
// from a failure to reach or write to the log.
func reportWorthRetrying(err error) bool {
	var illegal *statemachine.IllegalTransitionError
	switch {
	case errors.Is(err, statemachine.ErrLeaseLost), errors.As(err, &illegal), errors.Is(err, events.ErrNotFound),
		errors.Is(err, statemachine.ErrInvalid), errors.Is(err, events.ErrTooLarge), errors.Is(err, events.ErrInvalidJobID),
		// A connection closed, or a log, stays so.
		errors.Is(err, events.ErrNotSent), errors.Is(err, events.ErrClosed), errors.Is(err, nats.ErrConnectionClosed):
		return false
	}
	return true
}

// reportLanded reads whether this attempt's end was recorded: an event of
// the job's history that ended the attempt under its lease. The detector
// fails an attempt under its lease too, once silent for the hang-after;
// with a hang-after under 60 s a report may be tried that long, and
// OnResult then gets the job as the detector left it. The history is read,
// not the job as it now is: a recorded failure clears the job's lease, and
// a failure recorded by an earlier try was taken for a refusal. The job is
// returned as that event left it, not as it is by the time of the read.
func (p *Pool) reportLanded(held statemachine.Job) (statemachine.Job, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), acquireTimeout)
	defer cancel()
	recs, err := p.m.Log().Load(ctx, held.ID)
	if err != nil {
		return statemachine.Job{}, false
	}
	job := statemachine.Job{State: statemachine.StateNew}
	for _, rec := range recs {
		before := job
		if job.Apply(rec) != nil {
			job = before // an event the fold refuses changes nothing
			continue
		}
		inAttempt := before.State == statemachine.StateRunning || before.State == statemachine.StateCanceling
		if inAttempt && before.Lease == held.Lease && job.State != statemachine.StateRunning && job.State != statemachine.StateCanceling {
			// The job as this event left it, as Result says: by now it
			// may have been retried and taken by another attempt.
			return job, true
		}
	}
	return statemachine.Job{}, false
}

func (p *Pool) passResult(recorded statemachine.Job, err error) {
	if p.cfg.OnResult != nil {
		p.cfg.OnResult(Result{Job: recorded, Err: err})
	}
}

// countUnrecorded counts a result that could not be recorded, if Stop has
// begun: Stop reports them.
func (p *Pool) countUnrecorded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		p.unrecorded++
	}
}

// stopped is what Stop returns once its handlers have finished.
func (p *Pool) stopped() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unrecorded > 0 {
		return fmt.Errorf("stop pool: %w: %d jobs stay running until the hang detector takes them", ErrNotRecorded, p.unrecorded)
	}
	return nil
}

// watchAttempt keeps the lease alive with heartbeats and, once the handler
// has run CancelWatchDelay, follows the job's own history from the lease on:
// a cancel request cancels the handler with ErrCanceled, anything that ends
// the attempt from outside with ErrLeaseLost. Reading the log (not a
// message) means a cancel sent while the watcher was not yet running or was
// reconnecting is still seen. When no beat has been acknowledged for half
// the server's hang-after, the worker is cut off (or was paused): the
// handler is canceled with ErrLostContact before the detector can fail the
// attempt, so that its retry does not run beside it.
func (p *Pool) watchAttempt(ctx, beatCtx context.Context, held statemachine.Job, cancel context.CancelCauseFunc, done chan<- struct{}) {
	defer close(done)
	// The detector counts silence from the acquire, just before this.
	lastAck := time.Now()
	fenced := func() bool {
		silent, limit := time.Since(lastAck), p.fenceAfter()
		if silent < limit || ctx.Err() != nil {
			// Once the handler's context ended (it returned, or was told
			// to stop), there is nothing more to stop it with; beats go on
			// while its result is tried, for when the server is back.
			return false
		}
		err := fmt.Errorf("%w: no heartbeat acknowledged for %s, and the server fails an attempt after %s without one",
			ErrLostContact, silent.Round(time.Millisecond), p.hangAfterNow())
		p.logger.Warn("stopping a handler cut off from the server", zap.String("job", held.ID), zap.Error(err))
		cancel(err)
		return true
	}
	// A beat timer set by a longer hang-after than the one published since
	// (a server restarted with another, or the first published after this
	// worker started) would let the detector find the attempt silent.
	hangChanged := p.hangChanged.wait()
	reconnected := p.reconnected.wait()
	// The first beat comes within a heartbeat interval even when the watch
	// waits longer: the detector knows nothing of the watch's delay.
	nextBeat := time.NewTimer(min(p.cfg.CancelWatchDelay, p.beatEvery()))
	defer nextBeat.Stop()
	rearmed := false
	watch := time.NewTimer(p.cfg.CancelWatchDelay)
	defer watch.Stop()
	// One beat at a time, each after the attempt's previous one; an ack
	// late under load still proves contact as of the beat's sending.
	acks := make(chan beatAck, 1)
	inFlight, beatAgain := false, false
	var abandonBeat chan struct{}
	var after uint64
	var handlerEnded time.Time // first seen by the beat timer
	beatNow := false           // the connection was made again
	for {
		select {
		case <-beatCtx.Done():
			return
		case <-watch.C:
			if ctx.Err() == nil {
				go p.watchCancels(ctx, held, cancel)
			}
		case <-hangChanged:
			// Beat now at the new pace; a silence that the old pace
			// allowed is not a lost contact.
			hangChanged = p.hangChanged.wait()
			rearmed = true
			nextBeat.Reset(0)
		case <-reconnected:
			// A beat in flight when the connection dropped gets no reply:
			// stop waiting for it, and beat now.
			reconnected = p.reconnected.wait()
			beatNow = true
			if inFlight && !beatAgain {
				close(abandonBeat)
				beatAgain = true
			} else if !inFlight {
				nextBeat.Reset(0)
			}
		case a := <-acks:
			inFlight = false
			if beatAgain {
				beatAgain = false
				nextBeat.Reset(0)
			}
			switch {
			case errors.Is(a.err, events.ErrBeatSuperseded):
				p.logger.Info("a later attempt of the job beats: this one lost it", zap.String("job", held.ID), zap.Error(a.err))
				cancel(ErrLeaseLost)
				return
			case a.err != nil:
				if beatCtx.Err() == nil {
					p.logger.Debug("heartbeat", zap.String("job", held.ID), zap.Error(a.err))
				}
			default:
				after = a.seq
				if a.sent.After(lastAck) {
					lastAck = a.sent
				}
			}
		case <-nextBeat.C:
			// Checked before beating too: a process paused past the
			// limit finds its beat timer due when it resumes.
			if !rearmed && fenced() {
				return
			}
			// A result is most often recorded within milliseconds of its
			// handler's return: beats for it begin only a beat interval
			// later (the last one came less than one before), so that
			// they cost nothing unless it waits.
			if ctx.Err() != nil && !rearmed && !beatNow {
				if handlerEnded.IsZero() {
					handlerEnded = time.Now()
				}
				if wait := p.beatEvery() - time.Since(handlerEnded); wait > 0 {
					nextBeat.Reset(wait)
					continue
				}
			}
			rearmed, beatNow = false, false
			if !inFlight {
				inFlight = true
				abandonBeat = make(chan struct{})
				go p.beat(beatCtx, held, after, abandonBeat, acks)
			}
			nextBeat.Reset(p.beatEvery())
		}
	}
}

type beatAck struct {
	sent time.Time
	seq  uint64
	err  error
}

// timeoutOrClosed is ctx with a timeout of d, ended also when done is
// closed.
func timeoutOrClosed(ctx context.Context, d time.Duration, done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, d)
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// beat records a heartbeat after the attempt's previous one, waiting for
// its ack until the attempt is out of contact or abandon is closed (the
// connection was made again).
func (p *Pool) beat(ctx context.Context, held statemachine.Job, after uint64, abandon <-chan struct{}, acks chan<- beatAck) {
	sent := time.Now()
	bctx, cancel := timeoutOrClosed(ctx, p.fenceAfter(), abandon)
	defer cancel()
	seq, err := p.recordBeat(bctx, events.Beat{JobID: held.ID, Lease: held.Lease, WorkerID: p.cfg.WorkerID, At: sent.UTC()}, after)
	acks <- beatAck{sent: sent, seq: seq, err: err}
}

func (p *Pool) setHangAfter(d time.Duration) {
	if time.Duration(p.hangAfter.Swap(int64(d))) == d {
		return
	}
	p.logger.Info("following the server's hang-after", zap.Duration("hang_after", d),
		zap.Duration("beat_every", p.beatEvery()), zap.Duration("stop_out_of_contact_after", p.fenceAfter()))
	p.hangChanged.notify()
}

// broadcast wakes every goroutine waiting on it at once, each time.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

// wait is closed at the next notify.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
}

// HangAfter is the server's hang-after as the pool last read it (the
// default until a server has published one): the pool beats at least six
// times within it, and stops a handler out of contact for half of it.
func (p *Pool) HangAfter() time.Duration { return p.hangAfterNow() }

// hangAfterNow is the server's hang-after, as last published.
func (p *Pool) hangAfterNow() time.Duration {
	if d := time.Duration(p.hangAfter.Load()); d > 0 {
		return d
	}
	return events.HangAfterDefault
}

func (p *Pool) beatEvery() time.Duration {
	return max(min(p.cfg.HeartbeatInterval, p.hangAfterNow()/beatsPerHangAfter), beatEveryMin)
}

func (p *Pool) fenceAfter() time.Duration { return p.hangAfterNow() / fenceDivisor }

// Retries of a job's watch that could not be made or broke, from the first
// pause to the longest.
const (
	watchRetryFirst = 50 * time.Millisecond
	watchRetryMax   = 5 * time.Second
)

// watchCancels follows the attempt's job in the log, and cancels the handler
// on a cancel request or the end of the attempt, until ctx ends. A watch that
// cannot be made (the server is busy or restarting) or that breaks is made
// again from the next event not seen: without it, a canceled job would run
// on to its end.
func (p *Pool) watchCancels(ctx context.Context, held statemachine.Job, cancel context.CancelCauseFunc) {
	from := held.Lease + 1
	pause := watchRetryFirst
	for {
		began := time.Now()
		err := p.follow(ctx, held.ID, held.Lease, &from, cancel)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > watchRetryMax {
			// It worked for a while: an outage long past does not slow the
			// watch's return from the next one.
			pause = watchRetryFirst
		}
		p.logger.Warn("watch job for cancels; trying again", zap.String("job", held.ID), zap.Duration("in", pause), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, watchRetryMax)
	}
}

// A job's watch reads the job's history when it hears of an event on the
// job's subject. An event can be heard before the log has stored it (a
// batch's messages go out before its commit, and a plain publish reaches
// subscribers as the stream takes it in), so a read that does not find a
// heard event reads again, after watchCheckFirst, doubling up to
// watchCheckMax, for watchHeardFor: an event still not stored by then was
// refused. After the subscription is made, and after each reconnect, the
// history is read at once and again at each of watchSettleChecks, for an
// event published just before the server had the subscription (in a
// cluster, before the interest reached the node it was published on) and
// stored just after the first read; and about every heartbeat interval, for
// an event missed on the way (core messages are delivered at most once).
const (
	watchCheckFirst = 250 * time.Microsecond
	watchCheckMax   = 250 * time.Millisecond
	watchHeardFor   = 5 * time.Second
	watchHeardMax   = 64
)

var watchSettleChecks = []time.Duration{50 * time.Millisecond, time.Second}

// watchPlan says when a job's watch reads the job's history next, from what
// it heard and read.
type watchPlan struct {
	unstored     map[string]time.Time // heard events not yet read, by event ID
	read         map[string]bool      // the events read, by ID: few per attempt
	pause        time.Duration        // the last wait for a heard event
	settleFrom   time.Time
	settleChecks []time.Duration
}

func newWatchPlan(now time.Time) *watchPlan {
	return &watchPlan{unstored: map[string]time.Time{}, read: map[string]bool{}, settleFrom: now, settleChecks: watchSettleChecks}
}

// heard notes a message on the job's subject. One without an event ID is no
// event of jetjob's (the projector quarantines it): it is read past, not
// waited for.
func (w *watchPlan) heard(id string, now time.Time) {
	if id != "" && !w.read[id] && len(w.unstored) < watchHeardMax {
		w.unstored[id] = now
	}
	w.pause = 0
}

// reconnected starts the settle checks again: events published while the
// connection was down were heard by no one, and the server may not have the
// subscription yet.
func (w *watchPlan) reconnected(now time.Time) {
	w.settleFrom, w.settleChecks = now, watchSettleChecks
}

// stored notes an event read from the log.
func (w *watchPlan) stored(id string) {
	delete(w.unstored, id)
	w.read[id] = true
}

// next is how long until the next read, after one at now; false when only
// the sweep is due.
func (w *watchPlan) next(now time.Time) (time.Duration, bool) {
	for id, at := range w.unstored {
		if now.Sub(at) > watchHeardFor {
			delete(w.unstored, id) // refused
		}
	}
	next, due := time.Duration(0), false
	if len(w.unstored) > 0 {
		w.pause = min(max(2*w.pause, watchCheckFirst), watchCheckMax)
		next, due = w.pause, true
	}
	for len(w.settleChecks) > 0 && now.Sub(w.settleFrom) >= w.settleChecks[0] {
		w.settleChecks = w.settleChecks[1:]
	}
	if len(w.settleChecks) > 0 {
		if settle := w.settleFrom.Add(w.settleChecks[0]).Sub(now); !due || settle < next {
			next, due = settle, true
		}
	}
	return next, due
}

// followJob reads the job's events from *from on, moving *from past each,
// and returns when ctx ends (nil) or a read fails. It makes no consumer on
// the log: nats-server allows 1,000 consumers on a stream unless told
// otherwise, and a consumer for each running job stopped cancels from
// reaching the jobs past that, fleet-wide. A subscription to the job's
// subject costs the server an entry in its interest table.
func (p *Pool) followJob(ctx context.Context, jobID string, lease uint64, from *uint64, cancel context.CancelCauseFunc) error {
	heard := make(chan *nats.Msg, watchHeardMax)
	sub, err := p.nc.ChanSubscribe(p.m.Log().Subject(jobID), heard)
	if err != nil {
		return fmt.Errorf("make watch: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	plan := newWatchPlan(time.Now())
	check := time.NewTimer(0)
	defer check.Stop()
	sweep := time.NewTimer(jittered(p.beatEvery()))
	defer sweep.Stop()
	reconnected := p.reconnected.wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-heard:
			plan.heard(m.Header.Get(jetstream.MsgIDHeader), time.Now())
		case <-check.C:
		case <-sweep.C:
			sweep.Reset(jittered(p.beatEvery()))
		case <-reconnected:
			reconnected = p.reconnected.wait()
			plan.reconnected(time.Now())
		}
		recs, err := p.readNews(ctx, jobID, lease, from)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read watched job: %w", err)
		}
		for _, rec := range recs {
			*from = rec.Seq + 1
			plan.stored(rec.Event.ID)
			switch rec.Event.Type {
			case events.TypeCancelRequested:
				cancel(ErrCanceled)
			case events.TypeAttemptFailed, events.TypeFailed, events.TypeCanceled, events.TypeSucceeded, events.TypeReleased:
				cancel(ErrLeaseLost)
			}
		}
		if next, due := plan.next(time.Now()); due {
			check.Reset(next)
		}
	}
}

// readNews reads the job's events from sequence *from on. Most reads find
// none, and the job's last sequence says so in one lookup; reading the
// events after a sequence walks the log's other messages in between. A
// log that holds less of the job than was read (a server with fsync
// interval lost its tail in a crash, and hands those sequences out again;
// or a replica behind the one read before) is read again from its end, so
// that an event stored at a sequence handed out again is not passed over;
// never from before the attempt's lease, though: a replica that had not
// caught up with the acquire itself had the watch read the job's earlier
// attempts again, and an earlier attempt's end (a hand-back, a retried
// failure) canceled the running handler as having lost the job, its result
// dropped and the job left running until the detector failed it as hung.
func (p *Pool) readNews(ctx context.Context, jobID string, lease uint64, from *uint64) ([]events.Record, error) {
	lg := p.m.Log()
	last, err := lg.LastSeq(ctx, jobID)
	if err != nil {
		return nil, err
	}
	if last+1 < *from {
		*from = max(last+1, lease+1)
	}
	if last < *from {
		return nil, nil
	}
	return lg.LoadAfter(ctx, jobID, *from-1)
}

// Stop stops acquiring, lets running handlers finish within ShutdownGrace,
// then cancels them and hands their jobs back. With a deadline on ctx, the
// handlers are canceled 2 s before it, so that the hand-backs land in time;
// when ctx ends first, Stop waits up to 2 s more for them. Results the
// server cannot record yet are tried again until ctx ends (up to 15
// minutes: a ctx with no deadline waits for them). A result or hand-back
// that could not be recorded (the connection lost, say) makes it return
// ErrNotRecorded, as do handlers that had not returned 2 s after ctx ended
// (the error names their jobs, which stay running: a handler's late result
// is still recorded). A handler whose attempt JobTimeout already failed
// without it is not waited for: its job's outcome is recorded, and it may
// never return. Called from a handler (to stop the worker on a fatal
// error), it waits for that handler too, until ctx ends: with no deadline,
// forever; call it from a goroutine of its own. Safe to call twice; a pool
// stopped before it started does not start.
func (p *Pool) Stop(ctx context.Context) error {
	p.startMu.Lock()
	defer p.startMu.Unlock()
	p.mu.Lock()
	if !p.started || p.stopping {
		p.stopping = true // a pool stopped before it started does not start
		p.mu.Unlock()
		return nil
	}
	p.stopping = true
	cancel, loopDone := p.cancel, p.loopDone
	p.mu.Unlock()
	// Counts of failures not yet said would go with the pool.
	defer p.lineTrouble.close()
	defer p.acquireTrouble.close()
	cancel()
	<-loopDone
	p.passes.Wait()
	p.unsubscribe()
	// The registry watch ended with the loop's ctx: nats.go unsubscribes
	// then, and deletes its consumer in the background. p.watch.Stop here
	// would wait for that delete's answer (nats.go's 5 s on a stalled
	// connection, whatever ctx says) whenever it came first.
	// Handlers still running after Stop returns keep fencing by the last
	// hang-after known.
	defer p.stopFollowHang()
	finished := make(chan struct{})
	go func() {
		p.runningWG.Wait()
		p.closeLogs(ctx)
		close(finished)
	}()
	// The handlers still running at the end of the grace are stopped early
	// enough that their jobs can be handed back before ctx's deadline: a
	// job left running is failed as hung later, which costs an attempt.
	graceFor := p.cfg.ShutdownGrace
	if deadline, ok := ctx.Deadline(); ok {
		graceFor = max(min(graceFor, time.Until(deadline)-handBackReserve), 0)
	}
	grace := time.NewTimer(graceFor)
	defer grace.Stop()
	select {
	case <-finished:
		return p.stopped()
	case <-grace.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	for _, r := range p.running {
		r.cancel(ErrShutdown)
	}
	p.mu.Unlock()
	select {
	case <-finished:
		return p.stopped()
	case <-ctx.Done():
	}
	// ctx ended first (with no deadline to plan for, or a handler slow to
	// stop): a short while more for the hand-backs under way, and results
	// the server cannot record are tried no more.
	p.endReports()
	select {
	case <-finished:
		if err := p.stopped(); err != nil {
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil
	case <-time.After(handBackReserve):
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// A run is a handler that has not returned, or one that has and whose
	// result or hand-back is under way (a server that does not answer):
	// said apart, as "0 handlers had not returned (jobs )" said nothing.
	var running, recording []string
	for lease, id := range p.claimed {
		if _, ok := p.running[lease]; ok {
			running = append(running, id)
		} else {
			recording = append(recording, id)
		}
	}
	slices.Sort(running)
	slices.Sort(recording)
	var why []string
	if len(running) > 0 {
		why = append(why, "the handlers of "+jobsNamed(running)+" had not returned: they stay running until their handlers return, or until the hang detector takes them if the process ends first")
	}
	if len(recording) > 0 {
		why = append(why, "the results or hand-backs of "+jobsNamed(recording)+" were still being recorded: recorded if the server answers before the process ends, else the hang detector takes those jobs")
	}
	if len(why) == 0 {
		why = append(why, "jobs being acquired as it stopped were not handed back yet: the hang detector takes them if the process ends first")
	}
	return fmt.Errorf("stop pool: %w: %w: %s", ErrNotRecorded, ctx.Err(), strings.Join(why, "; "))
}

// jobsNamed is "job A", or "2 jobs (A, B)".
func jobsNamed(ids []string) string {
	if len(ids) == 1 {
		return "job " + ids[0]
	}
	return fmt.Sprintf("%d jobs (%s)", len(ids), strings.Join(ids, ", "))
}

// closeLogs lets the log lines in flight be acknowledged (for at most their
// ack timeout, or until ctx ends), then drops the publisher Start made for
// them: its reply subscription and goroutine would otherwise outlive the
// pool on a connection that goes on, one of each per pool.
func (p *Pool) closeLogs(ctx context.Context) {
	wait := time.NewTimer(p.logAckTimeout)
	defer wait.Stop()
	select {
	case <-p.logJS.PublishAsyncComplete():
	case <-wait.C:
	case <-ctx.Done():
	}
	p.logJS.CleanupPublisher()
}

// runningJob is a handler that has not returned, and how to stop it.
type runningJob struct {
	id     string
	cancel context.CancelCauseFunc
}

// handBackReserve is the time Stop keeps for handing running jobs back.
const handBackReserve = 2 * time.Second

// denials are the permission violations a connection hears from a point
// on: nats.go tells each only to the connection's error handler and as
// its last error, and a request refused goes unanswered.
type denials struct {
	nc     *nats.Conn
	before error
}

func startDenials(nc *nats.Conn) denials { return denials{nc: nc, before: nc.LastError()} }

// heard returns the last violation heard since, as events.ErrPermission
// wrapping it (which names the subject), or nil. Each violation is an
// error of its own, so an old one is never taken for a new one.
func (d denials) heard() error {
	if err := d.nc.LastError(); err != d.before && errors.Is(err, nats.ErrPermissionViolation) {
		return fmt.Errorf("%w: %w", events.ErrPermission, err)
	}
	return nil
}

// watch returns ctx, ended once a violation is heard, so that what waits
// on an answer the NATS will never send ends with it; looked at every
// denialsPoll, since the error handler is the caller's. stop ends the
// watch.
func (d denials) watch(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		tick := time.NewTicker(denialsPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if err := d.heard(); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	return ctx, func() { cancel(nil) }
}

// denialsPoll paces denials.watch: a refusal is said within it, not after
// a request's 5 s.
const denialsPoll = 25 * time.Millisecond
