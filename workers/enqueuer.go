package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Enqueuer defaults.
const (
	EnqueuerDurableDefault = "jj_enqueuer"
	TimersDurableDefault   = "jj_timers"
	EnqueueBatchDefault    = 512
	ReconcileEveryDefault  = 30 * time.Second
	// ReconcileAgeDefault: a pending job is checked for a lost queue message
	// only when it has been pending at least this long.
	ReconcileAgeDefault = 10 * time.Second
	// reconcileFullEvery: every this many passes, a reconcile pass looks up
	// the queue message of every pending job, even of those found queued
	// before.
	reconcileFullEvery = 10
	// RewakeAfterDefault: a queue whose last wake-up's job is still queued
	// this long after is woken again, on every pool.
	RewakeAfterDefault = time.Second
	// rewakeMax caps the pause between wake-ups of a queue whose job stays
	// queued (every pool busy, or none serving it).
	rewakeMax = 30 * time.Second
)

// QueuedJob is what Reconcile needs to know of a pending or scheduled job.
type QueuedJob struct {
	ID        string
	Type      string
	Tags      map[string]string
	Priority  int
	State     statemachine.State
	RunAt     *time.Time
	UpdatedAt time.Time
	// Version is the sequence of the job's last event as listed; 0 if not
	// known. A reconcile pass leaves a job that has moved since.
	Version uint64
}

// JobLister lists the jobs in some states (the projector's views).
type JobLister func(ctx context.Context, states []statemachine.State) ([]QueuedJob, error)

// EnqueuerConfig configures an Enqueuer. A zero field takes its default; a
// negative one, or a durable that is not a token (statemachine.ValidateToken),
// is refused with ErrInvalidConfig.
type EnqueuerConfig struct {
	// Durable names the consumer over the event log, shared by every
	// server so that they split the work. Default EnqueuerDurableDefault.
	Durable string
	// TimersDurable names the consumer over fired timers. Default
	// TimersDurableDefault.
	TimersDurable string
	// Batch is how many messages are handled together. Default
	// EnqueueBatchDefault.
	Batch int
	// Lister, when set, lets the enqueuer repair lost queue messages and timers
	// every ReconcileEvery (or ten times as long as a pass's listing took, if
	// longer), the first two a second after Start and ReconcileAge later.
	Lister JobLister
	// ReconcileEvery is the pause between reconcile passes. Default
	// ReconcileEveryDefault.
	ReconcileEvery time.Duration
	// ReconcileAge: see ReconcileAgeDefault.
	ReconcileAge time.Duration
	// RewakeAfter: see RewakeAfterDefault.
	RewakeAfter time.Duration
	// Now is the clock a firing timer is checked against; default time.Now.
	Now func() time.Time
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *EnqueuerConfig) validate() error {
	if c.Durable == "" {
		c.Durable = EnqueuerDurableDefault
	}
	if c.TimersDurable == "" {
		c.TimersDurable = TimersDurableDefault
	}
	// Refused here, as a projector's are, rather than by NATS at Start.
	for _, d := range []struct{ what, name string }{{"durable", c.Durable}, {"timers durable", c.TimersDurable}} {
		if err := statemachine.ValidateToken(d.what, d.name); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "enqueuer batch", &c.Batch, EnqueueBatchDefault),
		config.Default(ErrInvalidConfig, "reconcile every", &c.ReconcileEvery, ReconcileEveryDefault),
		config.Default(ErrInvalidConfig, "reconcile age", &c.ReconcileAge, ReconcileAgeDefault),
		config.Default(ErrInvalidConfig, "rewake after", &c.RewakeAfter, RewakeAfterDefault),
	); err != nil {
		return err
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Enqueuer turns the event log into queue messages and timers: every event
// that leaves a job pending enqueues it, every future run-at or retry arms a
// JetStream message schedule that promotes the job at its time.
type Enqueuer struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	m      *statemachine.Machine
	cfg    EnqueuerConfig
	logger *zap.Logger

	evCons  jetstream.Consumer
	dueCons jetstream.Consumer
	queues  [QueueShards]jetstream.Stream
	tagsets jetstream.KeyValue

	// lastEventSeq and lastDueSeq are the last messages handled, where a
	// lost consumer is made again from.
	lastEventSeq atomic.Uint64
	lastDueSeq   atomic.Uint64

	// reconcileMu guards the pending jobs a reconcile pass found queued
	// (queuedSeen), the connection's reconnect count then, and the passes
	// since the set was last emptied.
	reconcileMu     sync.Mutex
	queuedSeen      map[string]bool
	seenReconnects  uint64
	passesSinceFull int

	// wokenMu guards woken: by queue name, the last job a wake-up was sent
	// for, until its queue message is found taken (rewakeLost).
	wokenMu sync.Mutex
	woken   map[string]*wokenQueue

	// lifeMu serializes Start and Stop, held by Stop until every goroutine
	// ended: a second Stop returns only then, and a Start after it starts
	// anew. Not mu, which the goroutines take.
	lifeMu  sync.Mutex
	mu      sync.Mutex
	known   map[string]bool // queue keys whose consumer exists
	started bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// NewEnqueuer returns an enqueuer; Start runs it.
func NewEnqueuer(js jetstream.JetStream, m *statemachine.Machine, cfg EnqueuerConfig) (*Enqueuer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if js == nil || m == nil {
		return nil, fmt.Errorf("%w: jetstream and machine are required", ErrInvalidConfig)
	}
	return &Enqueuer{js: js, nc: js.Conn(), m: m, cfg: cfg, logger: logging.OrNop(cfg.Logger, "enqueuer"),
		known: map[string]bool{}, woken: map[string]*wokenQueue{}}, nil
}

// setupOnce is setup for the callers that do not hold mu: Reconcile and
// runOnce, which a caller may run beside Start.
func (e *Enqueuer) setupOnce(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.setup(ctx)
}

// setup binds the consumers, streams and bucket the enqueuer uses, once; mu
// is held.
func (e *Enqueuer) setup(ctx context.Context) error {
	if e.evCons != nil {
		return nil
	}
	if err := EnsureTopology(ctx, e.js); err != nil {
		return err
	}
	log := e.m.Log()
	// Kept only once all of it is bound: a setup cut short (a request
	// unanswered while a cluster elects a leader) is made again whole, and
	// evCons set alone would have it skipped, with the rest nil.
	// Acks are explicit, one per message: with several servers sharing the
	// durable, an ack-all from one would also acknowledge events another
	// has in hand and may never enqueue.
	evCons, _, err := provision.Consumer(ctx, e.js, log.Stream(), e.eventsConsumerConfig())
	if err != nil {
		return fmt.Errorf("enqueuer: %w", err)
	}
	dueCons, _, err := provision.Consumer(ctx, e.js, TimersStream, e.timersConsumerConfig())
	if err != nil {
		return fmt.Errorf("enqueuer timers: %w", err)
	}
	var queues [QueueShards]jetstream.Stream
	for shard := range queues {
		if queues[shard], err = e.js.Stream(ctx, queueStream(shard)); err != nil {
			return fmt.Errorf("bind queue: %w", err)
		}
	}
	tagsets, err := e.js.KeyValue(ctx, TagsetsBucket)
	if err != nil {
		return fmt.Errorf("bind tag sets: %w", err)
	}
	e.evCons, e.dueCons, e.queues, e.tagsets = evCons, dueCons, queues, tagsets
	return nil
}

func (e *Enqueuer) eventsConsumerConfig() jetstream.ConsumerConfig {
	log := e.m.Log()
	return jetstream.ConsumerConfig{
		Durable: e.cfg.Durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		MaxAckPending: e.cfg.Batch * 8, FilterSubject: log.SubjectPrefix() + ">",
	}
}

func (e *Enqueuer) timersConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: e.cfg.TimersDurable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		FilterSubject: duePrefix + "*",
	}
}

// superviseRetry spaces the attempts to make a lost consumer again.
const superviseRetry = time.Second

// supervise consumes cons until ctx ends. When the consumer is lost under it
// (an operator deleted it, its server lost it), it makes the consumer again,
// starting after the last message this enqueuer handled rather than at the
// beginning of the stream, which would enqueue every job ever submitted
// again; what another server sharing the durable had in hand in between is
// left to the reconcile pass.
func (e *Enqueuer) supervise(ctx context.Context, stream string, cons jetstream.Consumer, cfg jetstream.ConsumerConfig, last *atomic.Uint64,
	batch int, process consume.Process) {
	tracked := func(ctx context.Context, msgs []jetstream.Msg) error {
		if err := process(ctx, msgs); err != nil {
			return err
		}
		if meta, err := msgs[len(msgs)-1].Metadata(); err == nil {
			last.Store(max(last.Load(), meta.Sequence.Stream))
		}
		return nil
	}
	for {
		consume.Loop(ctx, cons, consume.Batching{Max: batch}, e.logger, tracked)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(superviseRetry):
			}
			remake := cfg
			if seq := last.Load(); seq > 0 {
				remake.DeliverPolicy, remake.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
			}
			var err error
			if cons, _, err = provision.Consumer(ctx, e.js, stream, remake); err == nil {
				e.logger.Info("made the lost consumer again", zap.String("consumer", cfg.Durable), zap.Uint64("from", remake.OptStartSeq))
				break
			}
			e.logger.Warn("make the lost consumer again", zap.String("consumer", cfg.Durable), zap.Error(err))
		}
	}
}

// Start runs the enqueuer until Stop. Safe to call twice, and again after
// Stop.
func (e *Enqueuer) Start(ctx context.Context) error {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return nil
	}
	if err := e.setup(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// The queues made before a Stop may have been removed since as idle.
	e.known = map[string]bool{}
	removals, err := e.tagsets.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		cancel()
		return fmt.Errorf("watch tag sets: %w", err)
	}
	e.started, e.cancel = true, cancel
	e.wg.Add(4)
	go func() {
		defer e.wg.Done()
		e.forgetRemovedQueues(ctx, removals)
	}()
	go func() {
		defer e.wg.Done()
		e.rewakeLoop(ctx)
	}()
	go func() {
		defer e.wg.Done()
		e.supervise(ctx, e.m.Log().Stream(), e.evCons, e.eventsConsumerConfig(), &e.lastEventSeq, e.cfg.Batch, e.processEvents)
	}()
	go func() {
		defer e.wg.Done()
		e.supervise(ctx, TimersStream, e.dueCons, e.timersConsumerConfig(), &e.lastDueSeq, e.cfg.Batch, e.processDue)
	}()
	if e.cfg.Lister != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			// The first passes come a second after the start, for the
			// jobs pending long enough to judge already, and once the
			// others are too: a server killed soon after each start (its
			// queue messages persist asynchronously, and the log events
			// that made them are acknowledged) would otherwise never
			// repair them.
			first := []time.Duration{time.Second, e.cfg.ReconcileAge}
			pause := min(e.cfg.ReconcileEvery, first[0])
			for pass := 1; ; pass++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(pause):
				}
				res, err := e.Reconcile(ctx)
				if err != nil && ctx.Err() == nil {
					e.logger.Warn("reconcile", zap.Error(err))
				}
				// A pass reads every pending job's view: with a large
				// backlog the next waits ten times as long as that took
				// from this one's start, so that listings take at most a
				// tenth of the server's time.
				pause = max(e.cfg.ReconcileEvery, 10*res.Scan)
				if pass < len(first) {
					pause = min(pause, first[pass])
				}
			}
		}()
	}
	return nil
}

// forgetRemovedQueues forgets that this enqueuer made a queue when the
// queue is unregistered (ForgetIdleQueues), so that the next job for it
// makes it again.
func (e *Enqueuer) forgetRemovedQueues(ctx context.Context, w jetstream.KeyWatcher) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case entry, ok := <-w.Updates():
			if !ok {
				return
			}
			if entry != nil && entry.Operation() != jetstream.KeyValuePut {
				e.mu.Lock()
				delete(e.known, entry.Key())
				e.mu.Unlock()
			}
		}
	}
}

// Stop ends the enqueuer. Safe to call twice.
func (e *Enqueuer) Stop() {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	e.mu.Lock()
	cancel := e.cancel
	e.cancel = nil
	e.mu.Unlock()
	if cancel != nil {
		cancel()
		e.wg.Wait()
	}
	e.mu.Lock()
	e.started = false // Start runs it again
	e.mu.Unlock()
}

// runOnce processes every event and due timer available now; tests call it
// instead of Start.
func (e *Enqueuer) runOnce(ctx context.Context) (int, error) {
	if err := e.setupOnce(ctx); err != nil {
		return 0, err
	}
	n, err := consume.Available(ctx, e.evCons, e.cfg.Batch, e.processEvents)
	if err != nil {
		return n, err
	}
	due, err := consume.Available(ctx, e.dueCons, e.cfg.Batch, e.processDue)
	return n + due, err
}

// makesPending holds the event types after which a job may be runnable now
// or at a time to arm a timer for: the only ones the enqueuer acts on.
var makesPending = map[string]bool{
	events.TypeSubmitted: true, events.TypePromoted: true, events.TypeReleased: true, events.TypeAttemptFailed: true,
}

// eventItem is an event of a batch the enqueuer acts on.
type eventItem struct {
	rec events.Record
	// job, key and later are set for a job.submitted event: the job as
	// the event made it; later: it runs at a time still to come, so it
	// waits for a timer.
	job   statemachine.Job
	key   queueKey
	later bool
}

func (e *Enqueuer) processEvents(ctx context.Context, msgs []jetstream.Msg) error {
	log := e.m.Log()
	// Read the batch first, so that the queues its submits need for the
	// first time can be made all at once rather than one round trip after
	// another: 1,000 new tag sets in a batch were seconds of enqueuing
	// stalled.
	items := make([]eventItem, 0, len(msgs))
	var fresh []queueKey
	seen := map[string]bool{}
	for _, msg := range msgs {
		if t := events.TypeOf(msg.Headers()); t != "" && !makesPending[t] {
			continue // two of a job's three events, not worth decoding
		}
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		rec := events.RecordFromMsg(msg.Headers(), msg.Data(), meta.Sequence.Stream)
		jobID, ok := log.JobIDFromSubject(msg.Subject())
		if !ok || rec.Err != nil || rec.JobID != jobID {
			continue
		}
		it := eventItem{rec: rec}
		if rec.Type == events.TypeSubmitted {
			// The fold reads the event's data once, for the queue key and
			// for the job the queue message carries.
			job := &it.job
			*job = statemachine.Job{State: statemachine.StateNew}
			if job.Apply(rec) != nil || statemachine.ValidateToken("type", job.Type) != nil {
				continue
			}
			it.key = queueKey{Type: job.Type, Tagset: TagsetID(job.Tags), Prio: job.Priority, Tags: job.Tags}
			it.later = job.State == statemachine.StateScheduled
			if !it.later && !seen[it.key.name()] && !e.isKnown(it.key) {
				seen[it.key.name()] = true
				fresh = append(fresh, it.key)
			}
		}
		items = append(items, it)
	}
	if err := e.ensureQueues(ctx, fresh); err != nil {
		return err
	}
	loaded, err := e.loadRunnable(ctx, items)
	if err != nil {
		return err
	}

	var acks []jetstream.PubAckFuture
	wakes := map[string]wokenQueue{} // by queue name: the last job
	for _, it := range items {
		rec, jobID := it.rec, it.rec.JobID
		switch rec.Type {
		case events.TypeSubmitted:
			if it.later {
				f, err := e.armTimer(jobID, *it.job.RunAt, rec.Seq)
				if err != nil {
					return err
				}
				acks = append(acks, f)
				continue
			}
			f, err := e.enqueue(ctx, it.job, it.key, "e"+strconv.FormatUint(rec.Seq, 10))
			if err != nil {
				return err
			}
			acks = append(acks, f)
			wakes[it.key.name()] = wokenQueue{key: it.key, jobID: jobID}
		case events.TypePromoted, events.TypeReleased:
			job, ok := loaded[jobID]
			if !ok || job.State != statemachine.StatePending {
				continue // moved on since: nothing to run
			}
			key := queueKey{Type: job.Type, Tagset: TagsetID(job.Tags), Prio: job.Priority, Tags: job.Tags}
			f, err := e.enqueue(ctx, job, key, "e"+strconv.FormatUint(rec.Seq, 10))
			if err != nil {
				return err
			}
			acks = append(acks, f)
			wakes[key.name()] = wokenQueue{key: key, jobID: jobID}
		case events.TypeAttemptFailed:
			var d events.AttemptFailed
			if rec.DecodeData(&d) != nil {
				continue
			}
			f, err := e.armTimer(jobID, d.RetryAt, rec.Seq)
			if err != nil {
				return err
			}
			acks = append(acks, f)
		}
	}
	if err := waitAcks(ctx, e.js, acks); err != nil {
		return err
	}
	e.wake(wakes)
	// Acknowledged only once what they caused is stored.
	for _, msg := range msgs {
		_ = msg.Ack()
	}
	return nil
}

// loadParallel bounds the histories read at once for a batch's promoted and
// released jobs.
const loadParallel = 64

// loadRunnable reads the jobs that a batch's promoted and released events
// may have made runnable, several at once: a retry storm promotes thousands
// of jobs together, and reading them one after another delayed every one.
// A job with no history (purged) is left out.
func (e *Enqueuer) loadRunnable(ctx context.Context, items []eventItem) (map[string]statemachine.Job, error) {
	loaded := map[string]statemachine.Job{}
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)
	sem := make(chan struct{}, loadParallel)
	for _, it := range items {
		if it.rec.Type != events.TypePromoted && it.rec.Type != events.TypeReleased {
			continue
		}
		id := it.rec.JobID
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			job, err := e.m.Load(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				loaded[id] = job
			case !errors.Is(err, events.ErrNotFound) && firstErr == nil:
				firstErr = err
			}
		}()
	}
	wg.Wait()
	return loaded, firstErr
}

func waitAcks(ctx context.Context, js jetstream.JetStream, acks []jetstream.PubAckFuture) error {
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("store queue message: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
			return errors.New("store queue message: no ack within 10s")
		}
	}
	return nil
}

func (e *Enqueuer) isKnown(key queueKey) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.known[key.name()]
}

// ensureQueuesParallel bounds how many new queues are made at once.
const ensureQueuesParallel = 16

// ensureQueues makes the queues of keys, several at a time.
func (e *Enqueuer) ensureQueues(ctx context.Context, keys []queueKey) error {
	if len(keys) == 1 {
		return e.ensureQueue(ctx, keys[0])
	}
	sem := make(chan struct{}, ensureQueuesParallel)
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, key := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = e.ensureQueue(ctx, key)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ensureQueue creates the consumer of a new (type, tag set, priority) and
// registers it for workers, once.
func (e *Enqueuer) ensureQueue(ctx context.Context, key queueKey) error {
	if e.isKnown(key) {
		return nil
	}
	if err := registerQueue(ctx, e.js, e.tagsets, key); err != nil {
		return err
	}
	e.mu.Lock()
	e.known[key.name()] = true
	e.mu.Unlock()
	return nil
}

// registerQueue makes a queue's consumer, then registers the queue for
// pools: a pool that sees the registration finds the consumer.
func registerQueue(ctx context.Context, js jetstream.JetStream, registry jetstream.KeyValue, key queueKey) error {
	// Create, or find unchanged, in one request; provision handles what
	// that cannot (a consumer of an older version to replace).
	cfg, err := queueConsumerConfig(ctx, js, key)
	if err != nil {
		return fmt.Errorf("queue %s: %w", key.name(), err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, key.stream(), cfg); err != nil {
		if _, _, err := provision.Consumer(ctx, js, key.stream(), cfg); err != nil {
			return fmt.Errorf("queue %s: %w", key.name(), err)
		}
	}
	reg, _ := json.Marshal(key)
	if _, err := registry.Put(ctx, key.name(), reg); err != nil {
		return fmt.Errorf("register tag set %s: %w", key.name(), err)
	}
	return nil
}

// enqueue publishes a job's queue message, carrying the job as folded so
// that a worker can acquire it without reading its history; dedupe makes a
// redelivered event enqueue nothing twice.
func (e *Enqueuer) enqueue(ctx context.Context, job statemachine.Job, key queueKey, dedupe string) (jetstream.PubAckFuture, error) {
	if err := e.ensureQueue(ctx, key); err != nil {
		return nil, err
	}
	jobID := job.ID
	m := nats.NewMsg(key.subject(jobID))
	// Acquiring needs none of the earlier attempts' errors, and they could
	// outgrow the room the job's submitted event left (events.MessageRoom).
	job.Errors, job.Error = nil, ""
	// A fold that does not encode (none does that this version folds)
	// goes as an empty message, which still names the job: the worker then
	// acquires it from its history, where a failed enqueue would stall every
	// job behind it.
	m.Data, _ = json.Marshal(job)
	m.Header.Set(jetstream.MsgIDHeader, jobID+":"+dedupe)
	f, err := e.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("enqueue job %s: %w", jobID, err)
	}
	return f, nil
}

// armTimer schedules the job's promotion at its time with a JetStream
// message schedule, which survives restarts and needs no polling.
func (e *Enqueuer) armTimer(jobID string, at time.Time, seq uint64) (jetstream.PubAckFuture, error) {
	m := nats.NewMsg(timerPrefix + jobID)
	m.Data = []byte(jobID)
	m.Header.Set("Nats-Schedule", "@at "+at.UTC().Format(time.RFC3339Nano))
	// Carried to the due message: the promote checks that the job still
	// runs at this time, so a stale timer never starts a retry early.
	m.Header.Set(dueAtHeader, at.UTC().Format(time.RFC3339Nano))
	m.Header.Set("Nats-Schedule-Target", duePrefix+jobID)
	m.Header.Set(jetstream.MsgIDHeader, jobID+":t"+strconv.FormatUint(seq, 10))
	f, err := e.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("arm timer of job %s: %w", jobID, err)
	}
	return f, nil
}

// dueAtHeader carries the run-at a timer was armed for.
const dueAtHeader = "Jj-Due-At"

// promoteParallel bounds the promotes in flight at once: thousands of jobs
// due together are promoted in the log's atomic batches, not one fsync'd
// append after another.
const promoteParallel = 256

// processDue promotes the jobs whose timer fired, several at once.
func (e *Enqueuer) processDue(ctx context.Context, msgs []jetstream.Msg) error {
	sem := make(chan struct{}, promoteParallel)
	var wg sync.WaitGroup
	for _, msg := range msgs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			e.promote(ctx, msg)
		}()
	}
	wg.Wait()
	return nil
}

// promote makes the job of a due message pending, if the message is its
// current timer's (else the job's own timer is yet to fire) and its time came.
func (e *Enqueuer) promote(ctx context.Context, msg jetstream.Msg) {
	jobID := msg.Subject()[len(duePrefix):]
	var err error
	if due, perr := time.Parse(time.RFC3339Nano, msg.Headers().Get(dueAtHeader)); perr == nil {
		if due.After(e.cfg.Now().Add(statemachine.PromoteEarlyTolerance)) {
			// NATS fires at once a timer armed past the time it can
			// represent; submits refuse such run-ats and backoffs are
			// bounded, but a log written before then may hold one. The job
			// stays scheduled rather than run centuries early.
			e.logger.Warn("timer fired before its time; the job stays scheduled", zap.String("job", jobID), zap.Time("due", due))
			_ = msg.Ack()
			return
		}
		_, err = e.m.PromoteDue(ctx, jobID, due)
	} else {
		_, err = e.m.Promote(ctx, jobID) // a timer armed before the header was written
	}
	var notDue *statemachine.NotDueError
	switch {
	case err == nil, errors.Is(err, statemachine.ErrIllegalTransition), errors.Is(err, events.ErrNotFound),
		errors.Is(err, events.ErrInvalidJobID):
		// Promoted, or no longer scheduled (canceled, promoted already, purged).
		_ = msg.Ack()
	case errors.As(err, &notDue):
		// A stale timer, delivered again or replayed: the job now runs at
		// another time, for which its own timer is armed (and the
		// reconcile pass promotes a job whose time passed regardless).
		e.logger.Debug("stale timer", zap.String("job", jobID), zap.Time("runs_at", notDue.RunAt))
		_ = msg.Ack()
	default:
		e.logger.Warn("promote", zap.String("job", jobID), zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
	}
}

// ReconcileResult says what Reconcile repaired: the IDs of the jobs queued
// again and of those promoted.
type ReconcileResult struct {
	Requeued []string
	Promoted []string
	// Restored names the queues made again because pending jobs were
	// enqueued to them after they were removed as idle.
	Restored []string
	// Scan is how long listing the pending and scheduled jobs took.
	Scan time.Duration
}

// Reconcile re-enqueues pending jobs whose queue message is missing and
// promotes scheduled jobs whose time passed without their timer firing.
// Without EnqueuerConfig.Lister it does nothing.
func (e *Enqueuer) Reconcile(ctx context.Context) (ReconcileResult, error) {
	var res ReconcileResult
	if e.cfg.Lister == nil {
		return res, nil
	}
	if err := e.setupOnce(ctx); err != nil {
		return res, err
	}
	began := time.Now()
	jobs, err := e.cfg.Lister(ctx, []statemachine.State{statemachine.StatePending, statemachine.StateScheduled})
	res.Scan = time.Since(began)
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	e.reconcileMu.Lock()
	defer e.reconcileMu.Unlock()
	// A queue message found once stays while its job is pending, unless the
	// NATS server restarted (the queue persists asynchronously), which the
	// connection sees as a reconnect, or someone removed it by hand: the
	// jobs found queued are looked up again only after a reconnect, and
	// every reconcileFullEvery passes. A backlog of 1,000,000 pending jobs
	// would otherwise cost a million lookups a pass.
	reconnects := e.nc.Stats().Reconnects
	if e.queuedSeen == nil || reconnects != e.seenReconnects || e.passesSinceFull >= reconcileFullEvery {
		e.queuedSeen, e.seenReconnects, e.passesSinceFull = map[string]bool{}, reconnects, 0
	}
	e.passesSinceFull++
	seen := map[string]bool{}
	defer func() { e.queuedSeen = seen }()
	now := time.Now()
	// First, so that a job whose message is found below is in a queue.
	var restoreErr error
	res.Restored, restoreErr = e.restoreQueues(ctx, e.queuesOfPending(jobs, now))
	fail := func(err error) (ReconcileResult, error) { return res, errors.Join(restoreErr, err) }
	for _, j := range jobs {
		if now.Sub(j.UpdatedAt) < e.cfg.ReconcileAge {
			continue
		}
		if j.State == statemachine.StatePending && e.queuedSeen[j.ID] {
			seen[j.ID] = true
			continue
		}
		if j.State != statemachine.StatePending && j.State != statemachine.StateScheduled {
			continue
		}
		if j.State == statemachine.StateScheduled {
			if j.RunAt != nil && now.Sub(*j.RunAt) > e.cfg.ReconcileAge {
				if _, err := e.m.Promote(ctx, j.ID); err == nil {
					res.Promoted = append(res.Promoted, j.ID)
				}
			}
			continue
		}
		key := queueKey{Type: j.Type, Tagset: TagsetID(j.Tags), Prio: j.Priority, Tags: j.Tags}
		queued, err := e.holdsQueueMessage(ctx, key, j.ID)
		if err != nil {
			return fail(fmt.Errorf("reconcile job %s: %w", j.ID, err))
		}
		if queued {
			seen[j.ID] = true
			continue
		}
		// A job that moved since the listing (acquired, failed and pending
		// again) has a new pending spell, whose message the enqueuer may
		// not have made yet; the next pass judges it.
		job, err := e.m.Load(ctx, j.ID)
		if err != nil || job.State != statemachine.StatePending || j.Version != 0 && job.Version != j.Version {
			continue
		}
		f, err := e.enqueue(ctx, job, key, "r"+strconv.FormatInt(now.UnixNano(), 10))
		if err != nil {
			return fail(err)
		}
		if err := waitAcks(ctx, e.js, []jetstream.PubAckFuture{f}); err != nil {
			return fail(err)
		}
		e.wake(map[string]wokenQueue{key.name(): {key: key, jobID: j.ID}})
		res.Requeued = append(res.Requeued, j.ID)
		e.logger.Info("re-enqueued a pending job whose queue message was lost", zap.String("job", j.ID))
	}
	return res, restoreErr
}

// holdsQueueMessage reports whether the job's queue message is in its queue
// stream. The look-up is a direct get, which any replica of a clustered
// stream may answer; one that has not caught up (a node paused a while
// ago) does not have a message published since, and a job re-enqueued on
// its word is a second message in the queue. A message not found is asked
// of the stream's leader.
func (e *Enqueuer) holdsQueueMessage(ctx context.Context, key queueKey, jobID string) (bool, error) {
	q := e.queues[key.shard()]
	subject := key.subject(jobID)
	_, err := q.GetLastMsgForSubject(ctx, subject)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, err
	}
	info, err := q.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return false, err
	}
	return info.State.Subjects[subject] > 0, nil
}

// queuesOfPending names the queues of the pending jobs the reconcile pass
// looks at.
func (e *Enqueuer) queuesOfPending(jobs []QueuedJob, now time.Time) map[string]queueKey {
	queues := map[string]queueKey{}
	for _, j := range jobs {
		if j.State != statemachine.StatePending || now.Sub(j.UpdatedAt) < e.cfg.ReconcileAge {
			continue
		}
		key := queueKey{Type: j.Type, Tagset: TagsetID(j.Tags), Prio: j.Priority}
		if _, ok := queues[key.name()]; !ok {
			key.Tags = j.Tags
			queues[key.name()] = key
		}
	}
	return queues
}

// restoreQueues makes again the queues of pending jobs that are missing
// from the registry: removed as idle while an enqueuer that had not heard
// of it yet enqueued a job to them.
func (e *Enqueuer) restoreQueues(ctx context.Context, queues map[string]queueKey) ([]string, error) {
	if len(queues) == 0 {
		return nil, nil
	}
	names, err := e.tagsets.ListKeys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, fmt.Errorf("reconcile: read %s: %w", TagsetsBucket, err)
	}
	if err == nil {
		for name := range names.Keys() {
			delete(queues, name)
		}
	}
	var restored []string
	for name, key := range queues {
		e.mu.Lock()
		delete(e.known, name)
		e.mu.Unlock()
		if err := e.ensureQueue(ctx, key); err != nil {
			return restored, fmt.Errorf("reconcile: %w", err)
		}
		_ = e.nc.Publish(key.wake(), nil)
		restored = append(restored, name)
		e.logger.Info("made again a removed queue that has pending jobs", zap.String("queue", name))
	}
	return restored, nil
}
