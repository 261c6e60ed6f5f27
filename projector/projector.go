package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/jsapi"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Names and defaults for Config. The names are stable across versions.
const (
	// BucketDefault is the KV bucket holding one view per job.
	BucketDefault = "jj_jobs"
	// DurableDefault names the consumer over the events stream; every
	// server uses it, so servers share the work.
	DurableDefault = "jj_projector"
	// HeartbeatDurableDefault names the consumer over the heartbeat stream.
	HeartbeatDurableDefault = "jj_projector_hb"
	// QuarantineStream keeps a copy of every message on an event subject
	// that is not a valid event, under QuarantinePrefix + job ID + "." +
	// the original's sequence (job ID "unknown" when the subject names none).
	QuarantineStream = "JJ_QUARANTINE"
	QuarantinePrefix = "jj.quarantine."
	// BatchDefault is how many messages are projected together: a job with
	// several events in a batch is written once, and the batch's writes
	// are all in flight at once. BatchLimit bounds it.
	BatchDefault = 1024
	BatchLimit   = 10_000
	// LingerDefault is how long, once the projector is busy, it lets
	// events gather before it projects the next batch: a job whose events
	// arrive within it is written once, not once per event, which under
	// load was about a tenth more jobs through the whole system
	// (docs/BENCHMARKS.md). Views then trail the log by up to this much
	// more, and only under load: after a batch of fewer than 16 events,
	// the next is projected as soon as it arrives. LingerLimit bounds it.
	LingerDefault = 20 * time.Millisecond
	LingerLimit   = time.Second
	// lingerAfter is the smallest batch after which the projector
	// lingers, 16 in LingerDefault's doc.
	lingerAfter = 16
	// WritersDefault is how many histories or views are read concurrently
	// when a batch needs them.
	WritersDefault = 32
	// AckWaitDefault: a message not acknowledged within it is delivered again.
	AckWaitDefault = 30 * time.Second
	// WriteTimeoutDefault bounds the wait for a batch's writes.
	WriteTimeoutDefault = 10 * time.Second
	// CheckEveryDefault is how often a running projector checks that its
	// bucket and consumers still exist, to recreate them (and replay the
	// log) when an operator deleted them.
	CheckEveryDefault = 5 * time.Second
	// CacheDefault is about how many unfinished jobs' views are kept in
	// memory, so that their next event needs no read.
	CacheDefault = 50_000
	// casRetries bounds how often one job's write is redone after another
	// writer moved its view.
	casRetries = 20
)

// ViewFormat is the version of what a view says of a history: of View's
// fields and of the fold that fills them. It goes up with every change to
// either that renders some stored history differently
// (TestViewFormatIsCurrent notices one), so that a server finding the views
// of an older format rebuilds them in place before it projects. Without it,
// views written by an older jetjob would differ from the fold of their
// history until an operator ran `jetjob admin rebuild`.
const ViewFormat = 1

// viewFormatKey names the entry of the bucket stream's metadata that records
// the ViewFormat of its views.
const viewFormatKey = "jetjob.view_format"

// Config configures a Projector. A zero field takes its default; a negative
// one is refused with ErrInvalidConfig, except Linger's and Cache's, which
// turn them off.
type Config struct {
	// Bucket holds the views. Default BucketDefault.
	Bucket string
	// Durable names the consumer over the events stream. Default DurableDefault.
	Durable string
	// HeartbeatDurable names the consumer over the heartbeat stream.
	// Default HeartbeatDurableDefault.
	HeartbeatDurable string
	// Batch: see BatchDefault (at most BatchLimit).
	Batch int
	// Writers: see WritersDefault.
	Writers int
	// Linger: see LingerDefault; negative turns it off.
	Linger time.Duration
	// AckWait: see AckWaitDefault.
	AckWait time.Duration
	// WriteTimeout: see WriteTimeoutDefault.
	WriteTimeout time.Duration
	// CheckEvery: see CheckEveryDefault.
	CheckEvery time.Duration
	// Cache: see CacheDefault; negative turns the cache off.
	Cache int
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *Config) validate() error {
	if c.Bucket == "" {
		c.Bucket = BucketDefault
	}
	if c.Durable == "" {
		c.Durable = DurableDefault
	}
	if c.HeartbeatDurable == "" {
		c.HeartbeatDurable = HeartbeatDurableDefault
	}
	for what, name := range map[string]string{"bucket": c.Bucket, "durable": c.Durable, "heartbeat durable": c.HeartbeatDurable} {
		if err := statemachine.ValidateToken(what, name); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if c.Durable == c.HeartbeatDurable {
		return fmt.Errorf("%w: durable and heartbeat durable are both %q", ErrInvalidConfig, c.Durable)
	}
	if c.Batch == 0 {
		c.Batch = BatchDefault
	}
	if c.Batch < 0 || c.Batch > BatchLimit {
		return fmt.Errorf("%w: batch %d, expected 1-%d", ErrInvalidConfig, c.Batch, BatchLimit)
	}
	if c.Linger == 0 {
		c.Linger = LingerDefault
	}
	if c.Linger > LingerLimit {
		return fmt.Errorf("%w: linger %s, expected at most %s", ErrInvalidConfig, c.Linger, LingerLimit)
	}
	// Linger's and Cache's negatives alone turn something off; theirs are
	// refused.
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "writers", &c.Writers, WritersDefault),
		config.Default(ErrInvalidConfig, "ack wait", &c.AckWait, AckWaitDefault),
		config.Default(ErrInvalidConfig, "write timeout", &c.WriteTimeout, WriteTimeoutDefault),
		config.Default(ErrInvalidConfig, "check every", &c.CheckEvery, CheckEveryDefault),
	); err != nil {
		return err
	}
	if c.Cache == 0 {
		c.Cache = CacheDefault
	}
	return nil
}

// Projector keeps the views bucket equal to the fold of the event log.
type Projector struct {
	js     jetstream.JetStream
	log    *events.Log
	hb     *events.Heartbeats
	cfg    Config
	logger *zap.Logger
	// kvPut prefixes the subjects views are written to: under js's API
	// prefix when it has its own (a domain's, through a leaf node, where
	// $KV.> is denied), as nats.go's KeyValue writes.
	kvPut string
	// folded, when set (by tests), runs between a rebuild's fold and its
	// writes, where other writers may act.
	folded func()

	// setupMu guards the handles below, which setup replaces.
	setupMu  sync.Mutex
	kv       jetstream.Stream
	evCons   jetstream.Consumer
	hbCons   jetstream.Consumer
	consumed [2]time.Time // creation times of evCons and hbCons
	// outdated: the bucket's views are of an older ViewFormat, to be
	// rebuilt before projecting.
	outdated bool

	// cache holds the views of unfinished jobs as last written, in two
	// generations (see remember).
	cacheMu sync.Mutex
	cache   map[string]stored
	older   map[string]stored

	// mu serializes Start and Stop, held by Stop until the projection
	// ended: a second Stop returns only then, and a Start after it starts
	// anew.
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}

	// refolds counts histories read again, for tests of the incremental path.
	refolds atomic.Int64
}

// New returns a projector; Start provisions what it needs and runs it.
func New(js jetstream.JetStream, log *events.Log, hb *events.Heartbeats, cfg Config) (*Projector, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if js == nil || log == nil || hb == nil {
		return nil, fmt.Errorf("%w: jetstream, log and heartbeats are required", ErrInvalidConfig)
	}
	return &Projector{js: js, log: log, hb: hb, cfg: cfg, logger: logging.OrNop(cfg.Logger, "projector"),
		kvPut: jsapi.KVPut(js, cfg.Bucket), cache: map[string]stored{}}, nil
}

func (p *Projector) kvSubject(id string) string { return "$KV." + p.cfg.Bucket + "." + id }
func (p *Projector) kvStreamName() string       { return "KV_" + p.cfg.Bucket }

// storage is what provisionStorage found of the views bucket.
type storage struct {
	// lost: the bucket did not exist (it does now, empty).
	lost bool
	// format is the ViewFormat its views were written in; 0 when it was
	// made before formats were recorded.
	format int
}

// provisionStorage creates or upgrades the bucket and the quarantine stream.
// A bucket found missing means the views were lost: the consumers are
// reset before it is made, so every view is projected again.
func (p *Projector) provisionStorage(ctx context.Context) (storage, error) {
	var found storage
	existing, err := p.js.Stream(ctx, p.kvStreamName())
	found.lost = errors.Is(err, jetstream.ErrStreamNotFound)
	if err != nil && !found.lost {
		return storage{}, fmt.Errorf("look up views bucket: %w", err)
	}
	var meta map[string]string
	if found.lost {
		// Projected from the start of the log by this version: the
		// consumers are reset first, so that a start cut short after it
		// made the bucket (which the next finds) leaves them reset.
		for _, d := range []struct{ stream, name string }{{p.log.Stream(), p.cfg.Durable}, {p.hb.Stream(), p.cfg.HeartbeatDurable}} {
			if err := p.js.DeleteConsumer(ctx, d.stream, d.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return storage{}, fmt.Errorf("reset consumer %s: %w", d.name, err)
			}
		}
		found.format = ViewFormat
		meta = map[string]string{viewFormatKey: strconv.Itoa(ViewFormat)}
	} else {
		recorded, ok := existing.CachedInfo().Config.Metadata[viewFormatKey]
		found.format, _ = strconv.Atoi(recorded)
		if ok {
			// Laid out with the format it records, as the bucket was made:
			// without it, the configuration's hash differed from the one
			// recorded at the making, and every second start updated the
			// bucket. Only a rebuild records another format (recordFormat).
			meta = map[string]string{viewFormatKey: recorded}
		}
	}
	// Views are derived from the log and can be rebuilt, so they need no
	// fsync before the ack.
	if _, err := provision.KeyValue(ctx, p.js, provision.KeyValueConfig{Bucket: p.cfg.Bucket, AsyncPersist: true, Metadata: meta}); err != nil {
		return found, err
	}
	kv, err := p.js.Stream(ctx, p.kvStreamName())
	if err != nil {
		return found, fmt.Errorf("bind views bucket: %w", err)
	}
	if _, err := provision.Stream(ctx, p.js, jetstream.StreamConfig{
		Name:        QuarantineStream,
		Description: "jetjob quarantine: messages on event subjects that are not valid events",
		Subjects:    []string{QuarantinePrefix + ">"},
		Storage:     jetstream.FileStorage,
		MaxMsgs:     -1,
		MaxBytes:    -1,
	}); err != nil {
		return found, err
	}
	p.setupMu.Lock()
	p.kv = kv
	p.setupMu.Unlock()
	return found, nil
}

// recordFormat notes in the bucket's metadata that its views are of this
// ViewFormat.
func (p *Projector) recordFormat(ctx context.Context) error {
	s, err := p.js.Stream(ctx, p.kvStreamName())
	if err != nil {
		return fmt.Errorf("record the views' format: %w", err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Metadata[viewFormatKey] == strconv.Itoa(ViewFormat) {
		return nil
	}
	cfg.Metadata = maps.Clone(cfg.Metadata)
	if cfg.Metadata == nil {
		cfg.Metadata = map[string]string{}
	}
	cfg.Metadata[viewFormatKey] = strconv.Itoa(ViewFormat)
	if _, err := p.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("record the views' format: %w", err)
	}
	return nil
}

// setup provisions the storage and binds the consumers. A missing bucket
// means the views were lost: the consumers are recreated from the start of
// both streams, so every view is projected again.
func (p *Projector) setup(ctx context.Context) error {
	found, err := p.provisionStorage(ctx)
	if err != nil {
		return err
	}
	switch {
	case found.format < ViewFormat:
		p.logger.Info("views bucket holds views of an older format: rebuilding them in place before projecting",
			zap.Int("format", found.format), zap.Int("current", ViewFormat))
	case found.format > ViewFormat:
		p.logger.Warn("views bucket holds views of a newer jetjob: projecting over them as this version renders them",
			zap.Int("format", found.format), zap.Int("current", ViewFormat))
	}
	p.setupMu.Lock()
	p.outdated = found.format < ViewFormat
	p.setupMu.Unlock()
	if found.lost {
		p.logger.Info("views bucket made: projecting every view from the start of the event log (a first start, or the views were lost)")
	}
	p.clearCache()
	ev, err := p.consumer(ctx, p.log.Stream(), jetstream.ConsumerConfig{
		Durable: p.cfg.Durable, Description: "jetjob projector: job views from the event log",
		FilterSubject: p.log.SubjectPrefix() + ">",
	})
	if err != nil {
		return err
	}
	hb, err := p.consumer(ctx, p.hb.Stream(), jetstream.ConsumerConfig{
		Durable: p.cfg.HeartbeatDurable, Description: "jetjob projector: heartbeats into job views",
	})
	if err != nil {
		return err
	}
	// Asked anew, not taken from the create's answer: after a NATS restart
	// that answer gives the time of the restart, and every later info the
	// consumer's real creation, which would look like a consumer recreated.
	var created [2]time.Time
	for i, c := range []jetstream.Consumer{ev, hb} {
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("consumer info: %w", err)
		}
		created[i] = info.Created
	}
	p.setupMu.Lock()
	p.evCons, p.hbCons = ev, hb
	p.consumed = created
	p.setupMu.Unlock()
	return nil
}

// consumer creates or binds a durable consumer. Acks are explicit, one per
// message: with several servers sharing the durable, an ack-all from one
// would also acknowledge messages another has in hand and may never finish.
func (p *Projector) consumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	cfg.AckWait = p.cfg.AckWait
	cfg.MaxAckPending = p.cfg.Batch * 8
	cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	c, replacedFrom, err := provision.Consumer(ctx, p.js, stream, cfg)
	if err != nil {
		return nil, err
	}
	if replacedFrom > 0 {
		p.logger.Info("replaced a consumer of an older configuration", zap.String("consumer", cfg.Durable), zap.Uint64("from", replacedFrom))
	}
	return c, nil
}

// Start provisions the bucket and consumers (projecting lost views again)
// and projects in the background until Stop; ctx bounds only the setup.
// Safe to call twice.
func (p *Projector) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		return nil
	}
	if err := p.setup(ctx); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel, p.done = cancel, make(chan struct{})
	go p.supervise(runCtx, p.done)
	return nil
}

// Stop ends the projection after the batches in hand. Safe to call twice;
// Start may be called again after it.
func (p *Projector) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		p.cancel()
		<-p.done
		p.cancel, p.done = nil, nil
	}
}

// supervise runs the two consume loops and, when the bucket or a consumer
// disappears under them (an operator deleted it, another server reset it),
// stops them, sets up again and restarts them.
func (p *Projector) supervise(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		if !p.upgradeViews(ctx) {
			return
		}
		p.setupMu.Lock()
		ev, hb := p.evCons, p.hbCons
		p.setupMu.Unlock()
		loopCtx, stop := context.WithCancel(ctx)
		// A loop that ends on its own (its consumer could not be
		// consumed) is restarted with the rest.
		ended := make(chan struct{}, 2)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			consume.Loop(loopCtx, ev, consume.Batching{Max: p.cfg.Batch, Linger: p.cfg.Linger, LingerAfter: lingerAfter,
				LeaderLost: p.redeliver(p.log.Stream(), p.cfg.Durable)}, p.logger, p.processEvents)
			ended <- struct{}{}
		}()
		go func() {
			defer wg.Done()
			// Beats wait until the events are caught up: a beat for a view
			// not projected yet costs a read of the job's history.
			if p.waitCaughtUp(loopCtx, ev) {
				consume.Loop(loopCtx, hb, consume.Batching{Max: p.cfg.Batch, LeaderLost: p.redeliver(p.hb.Stream(), p.cfg.HeartbeatDurable)},
					p.logger, p.processBeats)
			}
			ended <- struct{}{}
		}()
		loopEnded := p.watchSetup(loopCtx, ended)
		stop()
		wg.Wait()
		if loopEnded {
			select { // do not spin on a consumer that cannot be consumed
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		for ctx.Err() == nil {
			err := p.setup(ctx)
			if err == nil {
				break
			}
			p.logger.Warn("set up again", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(p.cfg.CheckEvery):
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// redeliverTimeout bounds a request of redeliver, which asks again, a
// redeliverTimeout apart, for at most AckWait: a leader lost is not
// always replaced when the loss is noticed, and past AckWait the consumer
// delivers again by itself.
const redeliverTimeout = 2 * time.Second

// redeliver returns what a consume loop calls when its consumer's leader
// changed or stopped answering: it has the consumer deliver again, now,
// every message not acknowledged. A leader that froze (SIGSTOP, a
// partition) may have told its followers of a delivery that never reached
// the projector; its successor delivers such a message again only after
// AckWait (30 s), and the job's view lagged the log that long. What is
// delivered again and was projected already writes nothing. A NATS too old
// to reset a consumer leaves it to AckWait: one that refuses the request
// ends the tries at once, one where nothing answers it is asked a
// redeliverTimeout apart until AckWait has passed.
func (p *Projector) redeliver(stream, durable string) func(context.Context) {
	return func(ctx context.Context) {
		for start := time.Now(); ctx.Err() == nil && time.Since(start) < p.cfg.AckWait; {
			rctx, cancel := context.WithTimeout(ctx, redeliverTimeout)
			_, err := p.js.ResetConsumer(rctx, stream, durable)
			cancel()
			var refused *jetstream.APIError
			if err == nil || errors.As(err, &refused) && refused.Code < 500 {
				return // done, or refused by a NATS that answers (one too old to reset)
			}
			p.logger.Debug("deliver the unacknowledged messages again", zap.String("consumer", durable), zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(redeliverTimeout):
			}
		}
	}
}

// upgradeViews rebuilds the views when setup found them of an older
// ViewFormat, retrying until it succeeds; false when ctx ended first. It
// runs before the consume loops, so that no event is projected onto a view
// of the older format meanwhile; the events appended during the rebuild are
// projected after it.
func (p *Projector) upgradeViews(ctx context.Context) bool {
	for ctx.Err() == nil {
		p.setupMu.Lock()
		outdated := p.outdated
		p.setupMu.Unlock()
		if !outdated {
			return true
		}
		stats, err := p.Rebuild(ctx)
		if err == nil {
			p.logger.Info("views rebuilt in the current format", zap.Int("format", ViewFormat),
				zap.Int("jobs", stats.Jobs), zap.Int("written", stats.Written), zap.Float64("seconds", stats.Seconds))
			return true
		}
		if ctx.Err() == nil {
			p.logger.Warn("rebuild of views of an older format failed; trying again", zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(p.cfg.CheckEvery):
		}
	}
	return false
}

// watchSetup returns when ctx ends, when a loop ended, or when the bucket
// or a consumer is gone or was recreated.
func (p *Projector) watchSetup(ctx context.Context, ended <-chan struct{}) (loopEnded bool) {
	tick := time.NewTicker(p.cfg.CheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-ended:
			if ctx.Err() == nil {
				p.logger.Warn("a consume loop ended: setting up again")
			}
			return true
		case <-tick.C:
		}
		if reason := p.setupLost(ctx); reason != "" && ctx.Err() == nil {
			p.logger.Warn("setting up again", zap.String("why", reason))
			return false
		}
	}
}

// setupLost says what is missing, or "" when all is in place (or the
// server cannot be asked now: a disconnection is not a loss).
func (p *Projector) setupLost(ctx context.Context) string {
	_, err := p.js.Stream(ctx, p.kvStreamName())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return "views bucket deleted"
	}
	p.setupMu.Lock()
	created := p.consumed
	p.setupMu.Unlock()
	for i, c := range []struct{ stream, name string }{{p.log.Stream(), p.cfg.Durable}, {p.hb.Stream(), p.cfg.HeartbeatDurable}} {
		cons, err := p.js.Consumer(ctx, c.stream, c.name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return "consumer " + c.name + " deleted"
		}
		if err == nil && !cons.CachedInfo().Created.Equal(created[i]) {
			return "consumer " + c.name + " recreated"
		}
	}
	return ""
}

// waitCaughtUp waits until the consumer has few messages left; false when
// ctx ended first.
func (p *Projector) waitCaughtUp(ctx context.Context, c jetstream.Consumer) bool {
	for {
		info, err := c.Info(ctx)
		if err == nil && info.NumPending <= uint64(p.cfg.Batch) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runOnce projects every event, then every beat, available now, and returns
// how many messages it processed; tests call it instead of Start.
func (p *Projector) runOnce(ctx context.Context) (int, error) {
	p.setupMu.Lock()
	ready := p.evCons != nil
	p.setupMu.Unlock()
	if !ready {
		if err := p.setup(ctx); err != nil {
			return 0, err
		}
	}
	p.setupMu.Lock()
	ev, hb := p.evCons, p.hbCons
	p.setupMu.Unlock()
	n, err := consume.Available(ctx, ev, p.cfg.Batch, p.processEvents)
	if err != nil {
		return n, err
	}
	m, err := consume.Available(ctx, hb, p.cfg.Batch, p.processBeats)
	return n + m, err
}

// stored is a view as the bucket holds it.
type stored struct {
	view View
	// rev is the key's revision, 0 when the key has no entry at all.
	rev uint64
	// ok: view holds the decoded view. False for a missing key, a delete
	// marker (rev set) or a value that is not a view.
	ok bool
}

func (p *Projector) cached(id string) (stored, bool) {
	p.cacheMu.Lock()
	defer p.cacheMu.Unlock()
	if s, ok := p.cache[id]; ok {
		return s, true
	}
	s, ok := p.older[id]
	return s, ok
}

// remember caches a written view. Finished jobs are not kept: they rarely
// get another event, and the cache is for the jobs still moving.
func (p *Projector) remember(id string, s stored) {
	if p.cfg.Cache < 0 {
		return
	}
	p.cacheMu.Lock()
	defer p.cacheMu.Unlock()
	old, ok := p.cache[id]
	if !ok {
		old, ok = p.older[id]
	}
	if ok && old.rev > s.rev {
		return // a newer write of this process got there first
	}
	delete(p.older, id)
	if s.view.State.Finished() {
		delete(p.cache, id)
		return
	}
	if len(p.cache) >= max(p.cfg.Cache/2, 1) {
		// Two generations: the views not touched for a whole generation
		// are dropped, which keeps the busy ones without an LRU's upkeep.
		p.older, p.cache = p.cache, make(map[string]stored, len(p.cache))
	}
	p.cache[id] = s
}

func (p *Projector) forget(id string) {
	p.cacheMu.Lock()
	delete(p.cache, id)
	delete(p.older, id)
	p.cacheMu.Unlock()
}

func (p *Projector) clearCache() {
	p.cacheMu.Lock()
	p.cache, p.older = map[string]stored{}, nil
	p.cacheMu.Unlock()
}
