package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Defaults for Config.
const (
	DurableDefault          = "jj_projector"
	HeartbeatDurableDefault = "jj_projector_hb"
	QuarantineStreamDefault = "JJ_QUARANTINE"
	QuarantinePrefixDefault = "jj.quarantine."
	BatchDefault            = 512
	WritersDefault          = 32
	AckWaitDefault          = 30 * time.Second
	cacheMax                = 50_000
)

// Config configures a Projector.
type Config struct {
	// Bucket holds the views. Default BucketDefault.
	Bucket string
	// Durable names the consumer over the events stream. Default DurableDefault.
	Durable string
	// HeartbeatDurable names the consumer over the heartbeat stream.
	HeartbeatDurable string
	// Batch is how many events are projected together. Default BatchDefault.
	Batch int
	// Writers is how many views are written concurrently. Default WritersDefault.
	Writers int
	// AckWait: an event not acknowledged within it is delivered again.
	AckWait time.Duration
	Logger  *zap.Logger
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
	if c.Batch <= 0 {
		c.Batch = BatchDefault
	}
	if c.Writers <= 0 {
		c.Writers = WritersDefault
	}
	if c.AckWait <= 0 {
		c.AckWait = AckWaitDefault
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

	kv     jetstream.KeyValue
	evCons jetstream.Consumer
	hbCons jetstream.Consumer

	cacheMu sync.Mutex
	cache   map[string]cached

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

type cached struct {
	view View
	rev  uint64
}

// New returns a projector; Start provisions what it needs and runs it.
func New(js jetstream.JetStream, log *events.Log, hb *events.Heartbeats, cfg Config) (*Projector, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Projector{js: js, log: log, hb: hb, cfg: cfg, logger: logging.OrNop(cfg.Logger, "projector"),
		cache: map[string]cached{}}, nil
}

// setup binds or creates the bucket, the quarantine stream and the
// consumers. A missing bucket means the views were lost: the consumers are
// recreated from the start of the log so that every view is rebuilt.
func (p *Projector) setup(ctx context.Context) error {
	_, err := p.js.KeyValue(ctx, p.cfg.Bucket)
	rebuild := errors.Is(err, jetstream.ErrBucketNotFound)
	if err != nil && !rebuild {
		return fmt.Errorf("look up views bucket: %w", err)
	}
	if p.kv, err = provision.KeyValue(ctx, p.js, provision.KeyValueConfig{Bucket: p.cfg.Bucket, AsyncPersist: true}); err != nil {
		return err
	}
	if _, err := provision.Stream(ctx, p.js, jetstream.StreamConfig{
		Name: QuarantineStreamDefault, Subjects: []string{QuarantinePrefixDefault + ">"},
		Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, MaxMsgs: -1, MaxBytes: -1,
	}); err != nil {
		return err
	}
	if rebuild {
		p.logger.Info("views bucket missing: rebuilding every view from the event log")
		for _, d := range []struct{ stream, name string }{{p.log.Stream(), p.cfg.Durable}, {p.hb.Stream(), p.cfg.HeartbeatDurable}} {
			if err := p.js.DeleteConsumer(ctx, d.stream, d.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("reset consumer %s: %w", d.name, err)
			}
		}
		p.cacheMu.Lock()
		p.cache = map[string]cached{}
		p.cacheMu.Unlock()
	}
	if p.evCons, err = p.js.CreateOrUpdateConsumer(ctx, p.log.Stream(), jetstream.ConsumerConfig{
		Durable: p.cfg.Durable, AckPolicy: jetstream.AckAllPolicy, AckWait: p.cfg.AckWait,
		MaxAckPending: p.cfg.Batch * 8, FilterSubject: p.log.SubjectPrefix() + ">", DeliverPolicy: jetstream.DeliverAllPolicy,
	}); err != nil {
		return fmt.Errorf("create projector consumer: %w", err)
	}
	if p.hbCons, err = p.js.CreateOrUpdateConsumer(ctx, p.hb.Stream(), jetstream.ConsumerConfig{
		Durable: p.cfg.HeartbeatDurable, AckPolicy: jetstream.AckAllPolicy, AckWait: p.cfg.AckWait,
		MaxAckPending: p.cfg.Batch * 8, DeliverPolicy: jetstream.DeliverAllPolicy,
	}); err != nil {
		return fmt.Errorf("create projector heartbeat consumer: %w", err)
	}
	return nil
}

// Start provisions the bucket and consumers (rebuilding lost views) and
// projects in the background until Stop. Safe to call twice.
func (p *Projector) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return nil
	}
	if err := p.setup(ctx); err != nil {
		return err
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	p.wg.Add(2)
	go func() { defer p.wg.Done(); consume.Loop(ctx, p.evCons, p.cfg.Batch, p.logger, p.processEvents) }()
	go func() { defer p.wg.Done(); consume.Loop(ctx, p.hbCons, p.cfg.Batch, p.logger, p.processBeats) }()
	return nil
}

// Stop ends the projection after the batch in hand. Safe to call twice.
func (p *Projector) Stop() {
	p.mu.Lock()
	cancel := p.cancel
	p.cancel = nil
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		p.wg.Wait()
	}
}

// runOnce projects every event and beat available now; tests call it
// instead of Start.
func (p *Projector) runOnce(ctx context.Context) (int, error) {
	if p.evCons == nil {
		if err := p.setup(ctx); err != nil {
			return 0, err
		}
	}
	events, err := consume.Available(ctx, p.evCons, p.cfg.Batch, p.processEvents)
	if err != nil {
		return events, err
	}
	beats, err := consume.Available(ctx, p.hbCons, p.cfg.Batch, p.processBeats)
	return events + beats, err
}

// jobBatch is one job's part of a batch, in stream order.
type jobBatch struct {
	id   string
	recs []events.Record
}

func (p *Projector) processEvents(ctx context.Context, msgs []jetstream.Msg) error {
	var order []*jobBatch
	byJob := map[string]*jobBatch{}
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		rec := events.RecordFromMsg(m.Headers(), m.Data(), meta.Sequence.Stream)
		id, ok := p.log.JobIDFromSubject(m.Subject())
		if !ok || events.ValidateJobID(id) != nil {
			p.quarantine(ctx, "unknown", m.Subject(), rec, fmt.Errorf("subject %q names no job", m.Subject()))
			continue
		}
		jb := byJob[id]
		if jb == nil {
			jb = &jobBatch{id: id}
			byJob[id] = jb
			order = append(order, jb)
		}
		jb.recs = append(jb.recs, rec)
	}
	if err := p.parallel(ctx, order, func(ctx context.Context, jb *jobBatch) error {
		return p.projectJob(ctx, jb)
	}); err != nil {
		return err
	}
	return ackAll(msgs)
}

// ackAll acknowledges a batch: the consumers ack all up to the last.
func ackAll(msgs []jetstream.Msg) error {
	if len(msgs) == 0 {
		return nil
	}
	return msgs[len(msgs)-1].Ack()
}

// parallel runs fn for every job batch on Writers goroutines.
func (p *Projector) parallel(ctx context.Context, jobs []*jobBatch, fn func(context.Context, *jobBatch) error) error {
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		firstEr error
	)
	work := make(chan *jobBatch)
	for range min(p.cfg.Writers, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for jb := range work {
				if err := fn(ctx, jb); err != nil {
					errMu.Lock()
					if firstEr == nil {
						firstEr = err
					}
					errMu.Unlock()
				}
			}
		}()
	}
	for _, jb := range jobs {
		work <- jb
	}
	close(work)
	wg.Wait()
	return firstEr
}

// projectJob applies one job's new records to its view, folding the whole
// history again when they do not follow the view's version.
func (p *Projector) projectJob(ctx context.Context, jb *jobBatch) error {
	for try := 0; ; try++ {
		cur, err := p.load(ctx, jb.id)
		if err != nil {
			return err
		}
		job := cur.view.Job()
		if cur.rev == 0 {
			job = statemachine.Job{State: statemachine.StateNew}
		}
		beat := cur.view.beat()
		changed, refold := false, false
		for _, rec := range jb.recs {
			if rec.Seq <= job.Version {
				continue // delivered again, already in the view
			}
			if rec.PrevSeq != job.Version {
				refold = true
				break
			}
			if err := job.Apply(rec); err != nil {
				p.quarantine(ctx, jb.id, p.log.Subject(jb.id), rec, err)
			}
			changed = true
		}
		if refold {
			recs, err := p.log.Load(ctx, jb.id)
			if err != nil && !errors.Is(err, events.ErrNotFound) {
				return fmt.Errorf("project job %s: %w", jb.id, err)
			}
			var bad []statemachine.QuarantinedRecord
			job, bad = statemachine.Fold(recs)
			// Everything past the stored view is covered by this write and
			// will be skipped when delivered: quarantine it now (the copy is
			// deduplicated by sequence).
			for _, q := range bad {
				if q.Record.Seq > cur.view.Version {
					p.quarantine(ctx, jb.id, p.log.Subject(jb.id), q.Record, q.Reason)
				}
			}
			if b, ok, err := p.hb.Last(ctx, jb.id); err == nil && ok {
				beat = &b
			}
			changed = job.Version > cur.view.Version || cur.rev == 0
		}
		if !changed || job.State == statemachine.StateNew {
			return nil // nothing new, or no valid submit: no job to show
		}
		v := ViewOf(job, beat)
		if v.ID == "" {
			v.ID = jb.id
		}
		err = p.store(ctx, jb.id, v, cur.rev)
		if errors.Is(err, errStale) && try < 20 {
			continue
		}
		return err
	}
}

var errStale = errors.New("view changed concurrently")

// load returns the stored view and its revision (0: none), from the cache
// when it has it.
func (p *Projector) load(ctx context.Context, id string) (cached, error) {
	p.cacheMu.Lock()
	c, ok := p.cache[id]
	p.cacheMu.Unlock()
	if ok {
		return c, nil
	}
	e, err := p.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return cached{}, nil
	}
	if err != nil {
		return cached{}, fmt.Errorf("read view of job %s: %w", id, err)
	}
	var v View
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		// An unreadable view is rebuilt from the log.
		return cached{rev: e.Revision()}, nil
	}
	return cached{view: v, rev: e.Revision()}, nil
}

// store writes the view if the stored one is still at rev; errStale when
// another writer got there first (the cache entry is dropped, to reread).
func (p *Projector) store(ctx context.Context, id string, v View, rev uint64) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode view of job %s: %w", id, err)
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = p.kv.Create(ctx, id, data)
	} else {
		newRev, err = p.kv.Update(ctx, id, data, rev)
	}
	if err != nil {
		p.cacheMu.Lock()
		delete(p.cache, id)
		p.cacheMu.Unlock()
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSeq(err) {
			return errStale
		}
		return fmt.Errorf("write view of job %s: %w", id, err)
	}
	p.cacheMu.Lock()
	if len(p.cache) >= cacheMax {
		p.cache = map[string]cached{}
	}
	p.cache[id] = cached{view: v, rev: newRev}
	p.cacheMu.Unlock()
	return nil
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// processBeats carries each job's newest beat into its view.
func (p *Projector) processBeats(ctx context.Context, msgs []jetstream.Msg) error {
	latest := map[string]events.Beat{}
	var order []*jobBatch
	for _, m := range msgs {
		var b events.Beat
		if err := json.Unmarshal(m.Data(), &b); err != nil {
			continue
		}
		id, ok := p.hb.JobIDFromSubject(m.Subject())
		if !ok || id != b.JobID {
			continue
		}
		if _, seen := latest[id]; !seen {
			order = append(order, &jobBatch{id: id})
		}
		latest[id] = b
	}
	err := p.parallel(ctx, order, func(ctx context.Context, jb *jobBatch) error {
		b := latest[jb.id]
		for try := 0; try < 20; try++ {
			cur, err := p.load(ctx, jb.id)
			if err != nil || cur.rev == 0 {
				return err // no view yet: the event projection will read the beat
			}
			v := cur.view
			if !v.applyBeat(&b) {
				return nil
			}
			if err := p.store(ctx, jb.id, v, cur.rev); !errors.Is(err, errStale) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return ackAll(msgs)
}

// quarantine copies a message that is not a valid event aside, once.
func (p *Projector) quarantine(ctx context.Context, jobID, subject string, rec events.Record, reason error) {
	p.logger.Warn("quarantined a message on an event subject", zap.String("job", jobID),
		zap.Uint64("seq", rec.Seq), zap.Error(reason))
	m := nats.NewMsg(QuarantinePrefixDefault + jobID)
	m.Data = rec.Raw
	if rec.Err == nil {
		m.Data, _ = events.Encode(rec.Event)
	}
	m.Header.Set(jetstream.MsgIDHeader, "q-"+strconv.FormatUint(rec.Seq, 10))
	m.Header.Set("Jetjob-Original-Seq", strconv.FormatUint(rec.Seq, 10))
	m.Header.Set("Jetjob-Original-Subject", subject)
	m.Header.Set("Jetjob-Reason", reason.Error())
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		p.logger.Warn("copy to quarantine", zap.Error(err))
	}
}
