package events

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/jsapi"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
)

// Defaults for Config.
const (
	MaxBatchDefault       = 1000
	MaxBatchLimit         = 1000
	MinBatchDefault       = 16
	FlushersDefault       = 1
	LingerDefault         = 500 * time.Microsecond
	LingerLimit           = time.Second
	PublishTimeoutDefault = 5 * time.Second
	PublishRetriesDefault = 3
	loadPageSize          = 512
	// unavailablePause spaces the loads asked again of a stream that is
	// not served yet.
	unavailablePause = 50 * time.Millisecond
)

// Config configures a Log. A zero field takes its default; a negative one
// is refused with ErrInvalidConfig, except Linger's, which turns it off.
type Config struct {
	// Stream is the events stream name. Default StreamDefault.
	Stream string
	// SubjectPrefix prefixes each job ID: tokens without spaces, '*' or
	// '>', each ending in '.', not starting with '$'. Default
	// SubjectPrefixDefault.
	SubjectPrefix string
	// MaxBatch caps how many concurrent appends go into one atomic batch;
	// 1 turns coalescing off. Default MaxBatchDefault (at most 1,000, the
	// server's limit).
	MaxBatch int
	// MinBatch is the fewest waiting appends worth an atomic batch: the
	// server prepares a staging store for every batch, which costs more than
	// a few separate appends, so fewer are pipelined one by one instead.
	// Default MinBatchDefault. A value above MaxBatch never batches, which
	// suits a server that does not fsync each append anyway: the flusher
	// then publishes each append as it arrives and its caller waits for its
	// own ack, so that no append waits for another's. Follow switches
	// between the two as the stream records.
	MinBatch int
	// Flushers is how many batches may be in flight at once. Default
	// FlushersDefault: the server commits one stream's batches one after
	// another, so a second flusher only splits what waits into two smaller
	// batches, each paying the staging cost.
	Flushers int
	// Linger: after an atomic batch, the flusher waits up to this long for
	// more appends before the next commit, so that the appends set off by
	// the batch's answers go in one commit. Not after a commit of fewer than
	// MinBatch, so a lightly loaded log adds no delay. Default
	// LingerDefault, at most LingerLimit; negative turns it off.
	Linger time.Duration
	// PublishTimeout bounds one publish round trip. Default PublishTimeoutDefault.
	PublishTimeout time.Duration
	// PublishRetries is how many times in all an append is published when
	// its acks are lost, before Append gives up, and a read's request sent
	// when its answers are lost. Default PublishRetriesDefault.
	PublishRetries int
	// RecordAppends makes Open record in the stream's metadata whether this
	// log batches or streams its appends, for the logs that Follow it. Set
	// by a server that knows its NATS's durability (the embedded one);
	// left false where it is not known, so as not to undo that record.
	RecordAppends bool
	// Relay sends this log's appends, while it batches them and has fewer
	// than 256 under way, to the server's log (ServeRelay), which
	// commits them with its own and other processes' in its atomic
	// batches: a worker process running a few jobs gathers too few
	// appends for a batch worth its cost. Where no server relays, appends
	// go to the stream directly. For workers and clients; default false.
	Relay bool
	// Logger; nil means no logging.
	Logger *zap.Logger
}

// The stream metadata recording how appends are best sent (Config.RecordAppends).
const (
	AppendsMetadataKey = "jetjob_appends"
	// AppendsBatched: the server fsyncs every append, so concurrent ones
	// are worth coalescing into atomic batches.
	AppendsBatched = "batched"
	// AppendsStreamed: the server does not fsync each append, so each is
	// published as it comes; an atomic batch would only add its staging.
	AppendsStreamed = "streamed"
)

func (c *Config) validate() error {
	if c.Stream == "" {
		c.Stream = StreamDefault
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = SubjectPrefixDefault
	}
	if err := cmp.Or(validateStreamName(c.Stream), validateSubjectPrefix(c.SubjectPrefix)); err != nil {
		return err
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = MaxBatchDefault
	}
	if c.MaxBatch < 1 || c.MaxBatch > MaxBatchLimit {
		return fmt.Errorf("%w: max batch %d, expected 1-%d", ErrInvalidConfig, c.MaxBatch, MaxBatchLimit)
	}
	// Linger's negative alone turns something off; theirs are refused.
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "min batch", &c.MinBatch, MinBatchDefault),
		config.Default(ErrInvalidConfig, "flushers", &c.Flushers, FlushersDefault),
		config.Default(ErrInvalidConfig, "publish retries", &c.PublishRetries, PublishRetriesDefault),
	); err != nil {
		return err
	}
	if c.Linger == 0 {
		c.Linger = LingerDefault
	}
	if c.Linger > LingerLimit {
		return fmt.Errorf("%w: linger %s, expected at most %s", ErrInvalidConfig, c.Linger, LingerLimit)
	}
	return config.Default(ErrInvalidConfig, "publish timeout", &c.PublishTimeout, PublishTimeoutDefault)
}

// StreamConfig is the events stream: limits retention, file storage, one
// subject per job, atomic batches allowed, direct gets for fast loads. Its
// durability is the server's fsync setting (jetjob's embedded server fsyncs
// every write before the ack by default).
func StreamConfig(stream, subjectPrefix string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               stream,
		Description:        "jetjob event log: the source of truth for every job",
		Subjects:           []string{subjectPrefix + ">"},
		Retention:          jetstream.LimitsPolicy,
		Storage:            jetstream.FileStorage,
		Discard:            jetstream.DiscardNew,
		MaxMsgs:            -1,
		MaxBytes:           -1,
		MaxAge:             0,
		Duplicates:         2 * time.Minute,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		AllowRollup:        false,
		DenyDelete:         false,
		DenyPurge:          false,
		Replicas:           1,
	}
}

// Log appends events to jobs' histories and reads them back. It is safe
// for concurrent use, and meant for it: concurrent appends are what it
// coalesces into atomic batches.
type Log struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg Config
	// directGet and msgGet are the stream's direct get and message get
	// subjects under js's API prefix (a domain's, through a leaf node),
	// which the reads publish to on the connection.
	directGet, msgGet string
	logger            *zap.Logger
	reqs              chan *appendReq
	done              chan struct{}
	closeOnce         sync.Once // closes done
	closed            chan struct{}
	// connClosed is closed when the connection closes: the acks of the
	// appends published on their own and still in flight then never come
	// (nats.go drops them without an error), so nobody waits for them.
	connClosed chan struct{}

	muxMu     sync.Mutex
	muxSub    *nats.Subscription
	muxPrefix string
	muxChans  map[string]chan *nats.Msg
	muxNext   uint64

	// streamMu guards stream, the events stream once looked up: a purge
	// needs only its name, not a fresh look-up per job.
	streamMu sync.Mutex
	stream   jetstream.Stream

	// streamed: each append is published by its caller as it comes
	// (appendEncoded), not gathered into commits. Follow may change it
	// while appends are queued; streamLoop answers those.
	streamed atomic.Bool
	// relayOffUntil: appends go straight to the stream until then (Unix
	// nanoseconds), after a relayed one found no server relaying or got
	// no answer.
	relayOffUntil atomic.Int64
	// following: Follow was called, and is again after a reconnect.
	following atomic.Bool
	// inFlight counts the appends under way, relayed or not, where the log relays.
	inFlight atomic.Int64
	// answering counts the appends a flusher handed on to answerLater.
	answering sync.WaitGroup
}

// eventsStream returns the events stream, looked up once.
func (l *Log) eventsStream(ctx context.Context) (jetstream.Stream, error) {
	l.streamMu.Lock()
	defer l.streamMu.Unlock()
	if l.stream == nil {
		s, err := l.js.Stream(ctx, l.cfg.Stream)
		if err != nil {
			return nil, err
		}
		l.stream = s
	}
	return l.stream, nil
}

// Open provisions the events stream (creating or upgrading it) and returns a
// Log on it. A stream that exists with other subjects (made with another
// SubjectPrefix) is refused with ErrInvalidConfig and left as it is: moved,
// its jobs' histories would be on subjects it no longer takes. Close stops
// its flushers.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Log, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	scfg := StreamConfig(cfg.Stream, cfg.SubjectPrefix)
	// A stream's subjects are where its jobs' histories are: provisioning
	// another prefix over them left every history on subjects the stream no
	// longer takes, and every other log's appends unanswered.
	if s, err := js.Stream(ctx, cfg.Stream); err == nil {
		if have := s.CachedInfo().Config.Subjects; !slices.Equal(have, scfg.Subjects) {
			return nil, fmt.Errorf("%w: stream %s takes subjects %s, not %s: give its subject prefix, or another stream",
				ErrInvalidConfig, cfg.Stream, strings.Join(have, " "), strings.Join(scfg.Subjects, " "))
		}
	}
	if cfg.RecordAppends {
		scfg.Metadata = map[string]string{AppendsMetadataKey: cfg.appends()}
	}
	if _, err := provision.Stream(ctx, js, scfg); err != nil {
		return nil, err
	}
	return newLog(js, cfg), nil
}

// Attach returns a Log on an events stream that a server already
// provisioned, without touching the stream's configuration: for workers and
// short-lived clients such as the CLI. Follow then sends appends as the
// server recorded. A process with few appends of its own (a worker, a
// client submitting one job at a time) sets Config.Relay and calls Follow,
// as the CLI and `jetjob worker` do: its appends then join the server's
// atomic batches, which on a log fsync'd before each ack commit three to
// four times the appends a second of appends sent one by one.
func Attach(js jetstream.JetStream, cfg Config) (*Log, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return newLog(js, cfg), nil
}

func newLog(js jetstream.JetStream, cfg Config) *Log {
	l := &Log{
		nc:        js.Conn(),
		js:        js,
		cfg:       cfg,
		directGet: jsapi.Prefix(js) + "DIRECT.GET." + cfg.Stream,
		msgGet:    consume.MsgGetSubject(js, cfg.Stream),
		logger:    logging.OrNop(cfg.Logger, "events"),
		reqs:      make(chan *appendReq, cfg.MaxBatch*cfg.Flushers*4),
		done:      make(chan struct{}),
		closed:    make(chan struct{}),
	}
	l.streamed.Store(cfg.appends() == AppendsStreamed)
	l.watchConn()
	finished := make(chan struct{}, cfg.Flushers)
	for range cfg.Flushers {
		go func() {
			l.flushLoop()
			finished <- struct{}{}
		}()
	}
	go func() {
		for range cfg.Flushers {
			<-finished
		}
		// The flushers start no more; what they handed on is answered
		// before the log counts as closed, since Append takes a closed log
		// with no answer as nothing stored.
		l.answering.Wait()
		close(l.closed)
	}()
	return l
}

// Close stops the log's flushers after the appends in flight finish. Safe to call twice.
func (l *Log) Close() {
	l.closeOnce.Do(func() { close(l.done) })
	<-l.closed
	l.muxMu.Lock()
	if l.muxSub != nil {
		_ = l.muxSub.Unsubscribe()
		l.muxSub = nil
	}
	l.muxMu.Unlock()
}

// MessageRoom is what an event leaves unused of the server's max_payload:
// room for its headers, and for the messages made from it that carry more
// (a job's queue message is its fold, the submitted event's data and a few
// hundred bytes of state).
const MessageRoom = 8 << 10

// MaxEventSize is the largest encoded event Append sends: the max_payload
// of the server the log is connected to, less MessageRoom.
func (l *Log) MaxEventSize() int {
	most := int(l.nc.MaxPayload()) - MessageRoom
	if most <= 0 {
		return math.MaxInt // no server has told its max_payload: the client decides
	}
	return most
}

// Stream is the events stream's name.
func (l *Log) Stream() string { return l.cfg.Stream }

// Subject is the subject holding a job's history.
func (l *Log) Subject(jobID string) string { return l.cfg.SubjectPrefix + jobID }

// SubjectPrefix prefixes every job's subject.
func (l *Log) SubjectPrefix() string { return l.cfg.SubjectPrefix }

// JobIDFromSubject returns the job ID a subject belongs to.
func (l *Log) JobIDFromSubject(subject string) (string, bool) {
	if len(subject) <= len(l.cfg.SubjectPrefix) || subject[:len(l.cfg.SubjectPrefix)] != l.cfg.SubjectPrefix {
		return "", false
	}
	return subject[len(l.cfg.SubjectPrefix):], true
}

// Append appends ev to its job's history if the history's last sequence is
// still expectedSeq (0: the job has no events yet) and returns the event's
// sequence. A moved history gives a *ConflictError. An append whose ack was
// lost is resent with the same message ID and, if that is refused, read back
// by event ID, so a landed event is never reported as a conflict.
func (l *Log) Append(ctx context.Context, ev Event, expectedSeq uint64) (uint64, error) {
	if err := ValidateJobID(ev.JobID); err != nil {
		return 0, err
	}
	data, err := Encode(ev)
	if err != nil {
		return 0, fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	if most := l.MaxEventSize(); len(data) > most {
		// The client would refuse it unsent; in an atomic batch it would
		// take the batch's other appends down with it.
		return 0, &TooLargeError{JobID: ev.JobID, Size: len(data), Max: most}
	}
	if !l.cfg.Relay {
		return l.appendEncoded(ctx, ev, data, expectedSeq, false)
	}
	// A process with hundreds of appends under way (a bulk submit) makes
	// batches as large as the server's; relaying them would only add a
	// hop each.
	defer l.inFlight.Add(-1)
	relay := l.inFlight.Add(1) <= relayUnder && l.relaying()
	return l.appendEncoded(ctx, ev, data, expectedSeq, relay)
}

// appendEncoded appends data, ev encoded, through a server's relay first if
// relay; of ev it reads only the job, ID and type.
func (l *Log) appendEncoded(ctx context.Context, ev Event, data []byte, expectedSeq uint64, relay bool) (uint64, error) {
	req := &appendReq{ctx: ctx, ev: ev, data: data, expected: expectedSeq, result: make(chan appendResult, 1)}
	// Checked before the select, which picks at random among ready cases:
	// the queue's free room must not win over a closed log or a done context.
	select {
	case <-l.done:
		return 0, ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("append to job %s: %w", ev.JobID, err)
	}
	if l.cfg.MaxBatch == 1 {
		seq, err := l.appendOne(ctx, req)
		return seq, err
	}
	if relay {
		if seq, err, done := l.relay(ctx, req); done {
			return seq, err
		}
		if req.unanswered {
			return l.appendOne(ctx, req)
		}
	}
	if l.streamed.Load() {
		// Published by its caller, which waits for its own ack: no append
		// waits for the acks of others, and none waits for a flusher's
		// goroutine to be scheduled, which under load cost each submit of
		// one producer at a time a hand-off there and one back.
		f, err := l.js.PublishMsgAsync(l.msg(req))
		if err != nil {
			f = nil
		} else {
			req.sent = true
		}
		return l.awaitAck(ctx, req, f)
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		return 0, fmt.Errorf("append to job %s: %w", ev.JobID, ctx.Err())
	case <-l.done:
		return 0, ErrClosed
	}
	select {
	case r := <-req.result:
		return r.seq, r.err
	case <-ctx.Done():
		// The flusher still completes the request; the caller stops waiting.
		return 0, &OutcomeUnknownError{JobID: ev.JobID, Cause: ctx.Err()}
	case <-l.closed:
		// Every flusher has answered what it took; a request queued after
		// the last drain was never published.
		select {
		case r := <-req.result:
			return r.seq, r.err
		default:
			return 0, ErrClosed
		}
	}
}

// appends is how a log of this config sends its appends.
func (c *Config) appends() string {
	if c.MinBatch > c.MaxBatch {
		return AppendsStreamed
	}
	return AppendsBatched
}

// Follow reads how the server that provisioned the stream records appends
// are best sent (Config.RecordAppends) and sends this log's so from now on.
// A stream with no record leaves the log as configured. The log follows
// the record again after each reconnect. Without it, a
// worker on a server that does not fsync each append pays an atomic
// batch's staging for every commit: about half its throughput.
func (l *Log) Follow(ctx context.Context) error {
	if l.cfg.MaxBatch == 1 {
		return nil // every append goes alone, whatever the server
	}
	l.following.Store(true)
	s, err := l.js.Stream(ctx, l.cfg.Stream)
	if isNoLog(err) {
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			err = fmt.Errorf("%s %w", provision.NoJetStreamSays, err)
		}
		return fmt.Errorf("look up stream %s: %w (%v)", l.cfg.Stream, ErrNoLog, err)
	}
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", l.cfg.Stream, err)
	}
	l.streamMu.Lock()
	l.stream = s
	l.streamMu.Unlock()
	switch s.CachedInfo().Config.Metadata[AppendsMetadataKey] {
	case AppendsStreamed:
		l.streamed.Store(true)
	case AppendsBatched:
		l.streamed.Store(false)
	}
	return nil
}

// Appends is how the log sends its appends now: AppendsBatched or AppendsStreamed.
func (l *Log) Appends() string {
	if l.streamed.Load() {
		return AppendsStreamed
	}
	return AppendsBatched
}

// awaitAck waits for the ack of an append its caller published (f, nil if
// the publish failed); an append refused or unanswered takes the careful
// path of appendOne, as in pipeline.
func (l *Log) awaitAck(ctx context.Context, r *appendReq, f jetstream.PubAckFuture) (uint64, error) {
	if f == nil {
		return l.appendOne(ctx, r)
	}
	timeout := time.NewTimer(l.cfg.PublishTimeout)
	defer timeout.Stop()
	select {
	case ack := <-f.Ok():
		return ack.Sequence, nil
	case err := <-f.Err():
		r.unanswered = !isAnswer(err)
	case <-timeout.C:
		r.unanswered = true
	case <-l.connClosed:
		r.unanswered = true
	case <-ctx.Done():
		return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: ctx.Err()}
	}
	return l.appendOne(ctx, r)
}

// watchConn closes connClosed when the connection closes, and follows the
// stream's record again on each reconnect (an embedded server restarted
// with another fsync setting), until the log closes.
func (l *Log) watchConn() {
	l.connClosed = make(chan struct{})
	status := l.nc.StatusChanged(nats.CLOSED, nats.CONNECTED)
	go func() {
		defer l.nc.RemoveStatusListener(status)
		for {
			select {
			case st, ok := <-status:
				if !ok || st == nats.CLOSED {
					close(l.connClosed)
					return
				}
				if l.following.Load() {
					go l.followAgain()
				}
			case <-l.closed:
				return
			}
		}
	}()
}

// followAgain is Follow after a reconnect, and once more a little later:
// a restarted embedded server takes connections before it records how it
// takes appends. Failing, the log goes on as it sent.
func (l *Log) followAgain() {
	for _, after := range []time.Duration{0, followAgainLater} {
		select {
		case <-time.After(after):
		case <-l.done:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.PublishTimeout)
		err := l.Follow(ctx)
		cancel()
		if err != nil {
			l.logger.Debug("could not read the stream's record of appends after a reconnect", zap.Error(err))
		}
	}
}

// followAgainLater: when a reconnected log reads the record a second time.
const followAgainLater = 10 * time.Second

type appendReq struct {
	ctx      context.Context
	ev       Event
	data     []byte
	expected uint64
	result   chan appendResult
	// sent: the append may have reached the server (set before any publish
	// that may have gone out); one that never did is known not stored.
	sent bool
	// unanswered: a send of it got no answer, so it may be stored whatever
	// a later send is told.
	unanswered bool
}

type appendResult struct {
	seq uint64
	err error
}

func (l *Log) msg(r *appendReq) *nats.Msg {
	m := nats.NewMsg(l.Subject(r.ev.JobID))
	m.Data = r.data
	m.Header.Set(jetstream.MsgIDHeader, r.ev.ID)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(r.expected, 10))
	m.Header.Set(TypeHeader, r.ev.Type)
	return m
}

// appendOne publishes one event on its own, resending it if its ack is lost.
func (l *Log) appendOne(ctx context.Context, r *appendReq) (uint64, error) {
	var lastErr error
	// nats.go tells a publish its user may not make only to the
	// connection's error handler, and as its last error: a violation
	// there that was not there before these tries is theirs.
	before := l.nc.LastError()
	// No stream leader answering (a cluster electing one, which takes a few
	// seconds) costs no try: nothing took the message. It is published again
	// after a pause, for up to the time the tries would take.
	var leaderless time.Time
	pause := unavailablePause
	for try := 0; try < l.cfg.PublishRetries; try++ {
		if !r.sent && l.nc.IsClosed() {
			return 0, fmt.Errorf("append to job %s: %w", r.ev.JobID, ErrNotSent)
		}
		r.sent = true
		pctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
		ack, err := l.js.PublishMsg(pctx, l.msg(r))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		if isWrongLastSeq(err) {
			// The refused message may be a resend of one that landed (its
			// ack lost here or by the caller): the history decides.
			seq, found, err := l.findEvent(ctx, r.ev.JobID, r.expected, r.ev.ID)
			switch {
			case found:
				return seq, nil
			case err != nil:
				// Not read back, it may be there all the same: a
				// conflict would tell the caller it was not stored.
				return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: err}
			}
			return 0, &ConflictError{JobID: r.ev.JobID, Expected: r.expected}
		}
		if ctx.Err() != nil {
			// The message may have gone out before the caller gave up.
			return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: err}
		}
		if isAnswer(err) {
			if r.unanswered {
				// This send was refused, but an earlier one may have landed.
				return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: err}
			}
			// The stream answered: it did not store this message.
			return 0, fmt.Errorf("append to job %s: %w", r.ev.JobID, err)
		}
		// No answer, or the answer that an earlier send of this message is
		// still being stored (a cluster electing a leader): asked again.
		r.unanswered = true
		inProcess := isInProcess(err)
		if !inProcess && !isLostAck(err) {
			// No answer from the stream, and no resend possible (the
			// connection closed): this message, or an atomic batch that
			// held it, may have been stored before the failure.
			return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: err}
		}
		lastErr = err
		if inProcess || errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			if leaderless.IsZero() {
				if !inProcess && l.noStream(ctx) {
					return 0, fmt.Errorf("append to job %s: %w", r.ev.JobID, ErrNoLog)
				}
				leaderless = time.Now()
			}
			if time.Since(leaderless) < time.Duration(l.cfg.PublishRetries)*l.cfg.PublishTimeout {
				l.logger.Debug("no stream leader answers, publishing again", zap.String("job", r.ev.JobID), zap.Duration("after", pause))
				select {
				case <-ctx.Done():
					return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: ctx.Err()}
				case <-time.After(pause):
				}
				pause = min(2*pause, time.Second)
				try--
				continue
			}
		}
		l.logger.Debug("append ack lost, resending", zap.String("job", r.ev.JobID), zap.Error(err))
	}
	if denied := l.nc.LastError(); denied != before && refusedPublish(denied, l.Subject(r.ev.JobID)) {
		// Which try was refused is not told: an earlier one may have been
		// stored, its ack lost, before the user's permissions changed. The
		// history decides.
		seq, found, err := l.findEvent(ctx, r.ev.JobID, r.expected, r.ev.ID)
		switch {
		case found:
			return seq, nil
		case err != nil:
			return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: fmt.Errorf("%w; reading the job's history back: %w", denied, err)}
		}
		return 0, fmt.Errorf("append to job %s: %w: %w; nothing was stored", r.ev.JobID, ErrPermission, denied)
	}
	return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: fmt.Errorf("no ack after %d tries: %w", l.cfg.PublishRetries, lastErr)}
}

// refusedPublish says whether err is NATS's refusal of a publish to
// subject: a message it refused is not stored. Each violation nats.go
// hears is an error of its own, naming the subject.
func refusedPublish(err error, subject string) bool {
	return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `Publish to "`+subject+`"`)
}

// noStream reports whether the stream is known not to exist, rather than
// to be without a leader for now: an append no stream answered is then not
// waited on for the time a leader election takes.
func (l *Log) noStream(ctx context.Context) bool {
	// A cluster with no leader to answer does not hold the append up.
	ctx, cancel := context.WithTimeout(ctx, noStreamAsk)
	defer cancel()
	_, err := l.js.Stream(ctx, l.cfg.Stream)
	return isNoLog(err)
}

// isNoLog says whether looking up the log's stream found that there is
// none: the stream is not there, or JetStream is not.
func isNoLog(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || provision.NoJetStream(err)
}

// noStreamAsk bounds the question whether the log's stream exists.
const noStreamAsk = time.Second

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// errCodeDuplicateInProcess is nats-server's JSStreamDuplicateMessageConflict:
// a message with this message ID is being stored, and may land.
const errCodeDuplicateInProcess jetstream.ErrorCode = 10158

// isAnswer says whether an append's error is the stream's answer, which
// tells that it did not store the message.
func isAnswer(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode != errCodeDuplicateInProcess
}

// isInProcess: an earlier send of the message is still being stored.
func isInProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeDuplicateInProcess
}

func isLostAck(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// findEvent looks for an event by ID in a job's history after a sequence.
// After a conflict the stream said it holds more than that sequence: a
// read that finds nothing after it was answered by a replica that has not
// caught up, and is asked again. After a permission refusal nothing says
// so: the leader's last sequence for the job ends the wait when it is not
// past that sequence. An error says the history could not be read, so
// whether it holds the event is not known.
func (l *Log) findEvent(ctx context.Context, jobID string, after uint64, eventID string) (uint64, bool, error) {
	recs, err := l.readPast(ctx, jobID, after, after)
	if err != nil {
		return 0, false, err
	}
	for _, rec := range recs {
		if rec.ID == eventID {
			return rec.Seq, true, nil
		}
	}
	return 0, false, nil
}

// flushLoop takes whatever appends are waiting, up to MaxBatch, at most one
// per job, and commits them as one atomic batch.
func (l *Log) flushLoop() {
	var carry []*appendReq
	busy := false
	for {
		if len(carry) == 0 && l.streamed.Load() {
			if !l.streamLoop() {
				l.drain()
				return
			}
			continue
		}
		batch, next, ok := l.gather(carry, busy)
		if !ok {
			l.drain()
			return
		}
		carry = next
		busy = len(batch) >= l.cfg.MinBatch
		l.commit(batch)
	}
}

// batchBytesMax bounds the events' bytes in one atomic batch: the server
// holds a batch whole until its commit (staged in memory, by jetjob's
// embedded server), and a thousand submits of payloads near the 1 MiB
// limit would otherwise make one of a gigabyte. A single larger event goes
// alone.
const batchBytesMax = 16 << 20

// gather collects the next commit: the appends carried over from the last
// one, else the first to arrive; then whatever else waits, up to MaxBatch
// appends and batchBytesMax bytes; then, when busy, what arrives within
// Linger. A second append to a job already in the batch is carried over to
// the next, since the server checks each one's expectation against the
// stream before the batch. ok is false when the log closed while waiting
// for the first.
//
// The linger runs only after a commit that was an atomic batch: under load,
// the answers to one batch set off the next wave of appends (each acquired
// job's result, each producer's next submit) within a fraction of a
// millisecond, and a commit started just before that wave lands carries a
// few appends at the full fixed cost of a batch, or of an fsync each, while
// the wave waits for it.
func (l *Log) gather(carry []*appendReq, busy bool) (batch, next []*appendReq, ok bool) {
	jobs := map[string]bool{}
	size := 0
	take := func(r *appendReq) {
		if jobs[r.ev.JobID] || len(batch) > 0 && size+len(r.data) > batchBytesMax {
			next = append(next, r)
			return
		}
		jobs[r.ev.JobID] = true
		size += len(r.data)
		batch = append(batch, r)
	}
	for _, r := range carry {
		take(r)
	}
	if len(batch) == 0 {
		select {
		case r := <-l.reqs:
			take(r)
		case <-l.done:
			return nil, nil, false
		}
	}
fill:
	for len(batch) < l.cfg.MaxBatch && size < batchBytesMax {
		select {
		case r := <-l.reqs:
			take(r)
		default:
			break fill
		}
	}
	if !busy || l.cfg.Linger <= 0 {
		return batch, next, true
	}
	linger := time.NewTimer(l.cfg.Linger)
	defer linger.Stop()
	for len(batch) < l.cfg.MaxBatch && size < batchBytesMax {
		select {
		case r := <-l.reqs:
			take(r)
		case <-linger.C:
			return batch, next, true
		case <-l.done:
			return batch, next, true
		}
	}
	return batch, next, true
}

// streamLoop runs in place of commits while the log streams, when each
// append is published by its caller (appendEncoded): it answers the appends
// queued before Follow made the log stream, whose callers wait for a
// result, on the careful path of appendOne. Two appends to one job in
// flight at once are two writers racing, and the server refuses the second
// as it would in a batch. It returns when the log stops streaming (true)
// or closes (false).
func (l *Log) streamLoop() bool {
	for l.streamed.Load() {
		select {
		case r := <-l.reqs:
			l.answerLater(r)
		case <-l.done:
			return false
		}
	}
	return true
}

// drain answers the appends still queued at Close.
func (l *Log) drain() {
	for {
		select {
		case r := <-l.reqs:
			r.result <- appendResult{err: ErrClosed}
		default:
			return
		}
	}
}

func (l *Log) commit(batch []*appendReq) {
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.result <- appendResult{err: fmt.Errorf("append to job %s: %w", r.ev.JobID, err)}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	if len(live) < l.cfg.MinBatch {
		l.pipeline(live)
		return
	}
	first, err := l.publishAtomic(live)
	if err == nil {
		for i, r := range live {
			r.result <- appendResult{seq: first + uint64(i)}
		}
		return
	}
	// One stale expectation fails the whole batch; each append then gets its
	// own answer. A lost commit ack lands here too, and the per-event resend
	// finds the events by message ID.
	l.logger.Debug("atomic batch refused, appending one by one", zap.Int("size", len(live)), zap.Error(err))
	l.pipeline(live)
}

// pipeline publishes appends each on its own, all in flight at once. The
// server still checks each one's expectation; an append that is refused or
// whose ack is lost takes the careful path of appendOne.
func (l *Log) pipeline(reqs []*appendReq) {
	futures := make([]jetstream.PubAckFuture, len(reqs))
	for i, r := range reqs {
		f, err := l.js.PublishMsgAsync(l.msg(r))
		if err != nil {
			futures[i] = nil
			continue
		}
		r.sent = true
		futures[i] = f
	}
	timeout := time.NewTimer(l.cfg.PublishTimeout)
	defer timeout.Stop()
	for i, r := range reqs {
		f := futures[i]
		if f == nil {
			l.answerLater(r)
			continue
		}
		select {
		case ack := <-f.Ok():
			r.result <- appendResult{seq: ack.Sequence}
		case err := <-f.Err():
			r.unanswered = !isAnswer(err)
			l.answerLater(r)
		case <-timeout.C:
			l.answerEach(reqs[i:])
			return
		case <-l.connClosed:
			l.answerEach(reqs[i:])
			return
		}
	}
}

// answerEach answers appends whose publish got no answer in time.
func (l *Log) answerEach(reqs []*appendReq) {
	for _, r := range reqs {
		r.unanswered = r.unanswered || r.sent
		l.answerLater(r)
	}
}

// answerLater answers r on the careful path of appendOne, apart from the
// flusher that hands it on; Close waits for it.
func (l *Log) answerLater(r *appendReq) {
	l.answering.Add(1)
	go func() {
		defer l.answering.Done()
		seq, err := l.appendOne(r.ctx, r)
		r.result <- appendResult{seq, err}
	}()
}

type batchAck struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	BatchSize int    `json:"count"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error,omitempty"`
}

// publishAtomic commits the appends as one JetStream atomic batch and returns
// the sequence of the first.
func (l *Log) publishAtomic(batch []*appendReq) (uint64, error) {
	id := batch[0].ev.ID
	for i, r := range batch {
		m := l.msg(r)
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(batch)-1 {
			if err := l.nc.PublishMsg(m); err != nil {
				return 0, fmt.Errorf("publish batch message: %w", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		// Staged messages are stored only with their commit.
		for _, r := range batch {
			r.sent = true
		}
		resp, err := l.nc.RequestMsg(m, l.cfg.PublishTimeout)
		var ack batchAck
		if err == nil {
			err = json.Unmarshal(resp.Data, &ack)
		}
		if err == nil && ack.Error == nil && ack.BatchSize != len(batch) {
			err = fmt.Errorf("committed %d of %d", ack.BatchSize, len(batch))
		}
		if err != nil {
			for _, r := range batch {
				r.unanswered = true // the batch may have been stored
			}
			return 0, fmt.Errorf("commit batch: %w", err)
		}
		if ack.Error != nil {
			return 0, fmt.Errorf("commit batch: %s (%d)", ack.Error.Description, ack.Error.ErrCode)
		}
		return ack.Seq - uint64(len(batch)) + 1, nil
	}
	return 0, errors.New("empty batch")
}

// Load reads a job's whole history in order. A job with no events gives
// ErrNotFound.
//
// The reads are direct gets, which any replica of a clustered log may
// answer, and one that has not caught up does not have a job submitted a
// moment ago (on a 3-node cluster, a cancel right after its submit found no
// job once in seven). A job no history is read for is asked of the stream's
// leader (Holds), and read again until a replica has it.
func (l *Log) Load(ctx context.Context, jobID string) ([]Record, error) {
	recs, err := l.LoadAfter(ctx, jobID, 0)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		held, herr := l.Holds(ctx, jobID)
		if herr != nil || !held {
			// A leader that cannot be asked leaves the read as it was.
			return nil, fmt.Errorf("load job %s: %w", jobID, ErrNotFound)
		}
		if recs, err = l.readPast(ctx, jobID, 0, 0); err != nil {
			return nil, err
		}
		if len(recs) == 0 { // purged since the leader was asked
			return nil, fmt.Errorf("load job %s: %w", jobID, ErrNotFound)
		}
	}
	return recs, nil
}

// LoadPast reads a job's whole history, as Load does, when the log is known
// to hold more of it than up to seq: the stream refused an append that
// expected seq to be the job's last. A read that ends at or before seq was
// answered by a replica that has not caught up, and deciding on it again
// would only be refused again: it is asked again until it reads past seq.
// A history that ends before seq for good (purged, or a log that lost its
// tail in a crash) is returned as the stream's leader holds it.
func (l *Log) LoadPast(ctx context.Context, jobID string, seq uint64) ([]Record, error) {
	recs, err := l.readPast(ctx, jobID, 0, seq)
	var behind *behindError
	if errors.As(err, &behind) {
		if len(behind.recs) > 0 {
			return behind.recs, nil
		}
		return l.Load(ctx, jobID) // none left: purged, or not read yet (the leader says)
	}
	if err == nil && len(recs) == 0 {
		return nil, fmt.Errorf("load job %s: %w", jobID, ErrNotFound) // none left, the leader says
	}
	return recs, err
}

// Pauses between the reads asked again of a replica that has not caught
// up: most catch up within a millisecond or two of an append, one that was
// cut off (a node paused or restarted) within seconds.
const (
	staleReadPauseFirst = time.Millisecond
	staleReadPauseMax   = 50 * time.Millisecond
)

// behindError: the replicas answering reads did not catch up within the
// publish timeout; recs is the last read.
type behindError struct {
	jobID string
	recs  []Record
}

func (e *behindError) Error() string {
	return fmt.Sprintf("load job %s: the stream's leader holds more of its history than the replica answering reads, which did not catch up: %v", e.jobID, ErrUnavailable)
}

func (e *behindError) Unwrap() error { return ErrUnavailable }

// readPast reads the job's events after the sequence after until the read
// ends past seq (holds any event, for seq 0), pausing between reads, for
// up to the publish timeout; then it gives a *behindError. A read that
// falls short asks the stream's leader, once, for the job's last sequence:
// a history that ends at or before seq for good (purged, or a log that
// lost its tail in a crash, even on a single server) is read up to that
// end, and returned at once rather than after the publish timeout.
func (l *Log) readPast(ctx context.Context, jobID string, after, seq uint64) ([]Record, error) {
	deadline := time.Now().Add(l.cfg.PublishTimeout)
	pause := staleReadPauseFirst
	upTo := seq + 1 // the read is done once it holds a sequence this high
	// The leader is asked beside the reads, not between them: one that does
	// not answer (a cluster electing one) held the reads for the whole
	// publish timeout, after which they gave up without reading again,
	// though a replica that had caught up meanwhile would have answered.
	var leader chan leaderAnswer
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		recs, err := l.LoadAfter(ctx, jobID, after)
		if err != nil {
			return nil, err
		}
		if n := len(recs); n > 0 && recs[n-1].Seq >= upTo {
			return recs, nil
		}
		if leader == nil {
			leader = make(chan leaderAnswer, 1)
			go func() {
				last, err := l.leaderLastSeq(qctx, jobID)
				leader <- leaderAnswer{last: last, err: err}
			}()
		}
		if time.Now().After(deadline) {
			return nil, &behindError{jobID: jobID, recs: recs}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("load job %s: %w", jobID, ctx.Err())
		case a := <-leader:
			// Not answered (a cluster electing a leader), the reads go on.
			if a.err == nil && a.last < upTo {
				upTo = a.last
				if n := len(recs); upTo <= after || n > 0 && recs[n-1].Seq >= upTo {
					return recs, nil
				}
			}
			continue // read again at once: what the leader said may be there
		case <-time.After(pause):
		}
		pause = min(2*pause, staleReadPauseMax)
	}
}

// leaderAnswer is the stream leader's answer to readPast's question.
type leaderAnswer struct {
	last uint64
	err  error
}

// leaderLastSeq returns the sequence of the job's last message, 0 if it has
// none, as the stream's leader says: unlike a direct get, a message get is
// answered by the leader only, never by a replica that has not caught up.
func (l *Log) leaderLastSeq(ctx context.Context, jobID string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
	defer cancel()
	last, err := consume.LastSeqOnLeader(ctx, l.nc, l.msgGet, l.Subject(jobID))
	if err != nil {
		return 0, fmt.Errorf("last sequence of job %s: %w", jobID, err)
	}
	return last, nil
}

// Holds reports whether the log holds any message of the job, as its
// stream's leader says: a direct read, which Load makes, may be answered by
// a replica that has not caught up, and is no proof that a job is gone.
func (l *Log) Holds(ctx context.Context, jobID string) (bool, error) {
	if err := ValidateJobID(jobID); err != nil {
		return false, err
	}
	st, err := l.eventsStream(ctx)
	if err != nil {
		return false, fmt.Errorf("look up job %s: %w", jobID, err)
	}
	subject := l.Subject(jobID)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return false, fmt.Errorf("look up job %s: %w", jobID, err)
	}
	return info.State.Subjects[subject] > 0, nil
}

// LoadAfter reads a job's events with sequences above after, in order, in
// one direct-get round trip per 512 events. Messages that are not events
// come back as records with Err set.
func (l *Log) LoadAfter(ctx context.Context, jobID string, after uint64) ([]Record, error) {
	if err := ValidateJobID(jobID); err != nil {
		return nil, err
	}
	var out []Record
	in, err := l.openInbox()
	if err != nil {
		return nil, fmt.Errorf("load job %s: %w", jobID, err)
	}
	defer func() { in.close() }()
	subject := l.Subject(jobID)
	from := after + 1
	var unavailableSince time.Time
	for {
		req, _ := json.Marshal(struct {
			Seq     uint64 `json:"seq"`
			NextFor string `json:"next_by_subj"`
			Batch   int    `json:"batch"`
		}{from, subject, loadPageSize})
		if err := l.nc.PublishRequest(l.directGet, in.subject, req); err != nil {
			return nil, fmt.Errorf("load job %s: %w", jobID, err)
		}
		more := false
		for {
			m, err := l.answer(ctx, in)
			if errors.Is(err, errAskAgain) {
				// From the events already read.
				more = true
				break
			}
			if err != nil {
				return nil, fmt.Errorf("load job %s: %w", jobID, err)
			}
			status := m.Header.Get("Status")
			if status == "404" {
				return out, nil
			}
			if status == "503" {
				// The page is asked for again.
				if err := l.waitServed(ctx, &unavailableSince); err != nil {
					return nil, fmt.Errorf("load job %s: %w", jobID, err)
				}
				more = true
				break
			}
			if status == "204" { // end of batch
				more = m.Header.Get("Nats-Num-Pending") != "0"
				break
			}
			if status != "" {
				return nil, fmt.Errorf("load job %s: direct get status %s %s", jobID, status, m.Header.Get("Description"))
			}
			rec := RecordFromMsg(m.Header, m.Data, 0).OfJob(jobID)
			out = append(out, rec)
			from = rec.Seq + 1
		}
		if !more {
			return out, nil
		}
	}
}

// answer waits for the next answer to a direct get. A request that reached
// a server just before it stopped is never answered: after the publish
// timeout, answer gives errAskAgain with a fresh inbox in in, which drops
// the old request's answers should they come late, and ErrUnavailable once
// the log's PublishRetries requests went unanswered.
func (l *Log) answer(ctx context.Context, in *inbox) (*nats.Msg, error) {
	select {
	case m := <-in.msgs:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(l.cfg.PublishTimeout):
	}
	if in.unanswered++; in.unanswered >= l.cfg.PublishRetries {
		return nil, fmt.Errorf("%w (%d requests unanswered for %s each)", ErrUnavailable, in.unanswered, l.cfg.PublishTimeout)
	}
	in.close()
	fresh, err := l.openInbox()
	if err != nil {
		return nil, err
	}
	fresh.unanswered = in.unanswered
	*in = *fresh
	return nil, errAskAgain
}

// errAskAgain: the request went unanswered, and is to be sent again.
var errAskAgain = errors.New("no answer; ask again")

// waitServed pauses before a direct get is asked again after a 503: no
// responder, the stream not served yet, as for a moment after the server
// restarts. It gives up once the stream has been unavailable since *since
// for the publish timeout.
func (l *Log) waitServed(ctx context.Context, since *time.Time) error {
	if since.IsZero() {
		*since = time.Now()
	}
	if time.Since(*since) > l.cfg.PublishTimeout {
		return ErrUnavailable
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(unavailablePause):
		return nil
	}
}

// inbox is where the answers to a read's direct gets come.
type inbox struct {
	subject    string
	msgs       <-chan *nats.Msg
	close      func()
	unanswered int // requests that went unanswered
}

// openInbox gives a private inbox for one read, served by one wildcard
// subscription for the whole log: a subscription per read would cost a
// round trip and a large buffer each time.
func (l *Log) openInbox() (*inbox, error) {
	l.muxMu.Lock()
	defer l.muxMu.Unlock()
	if l.muxSub == nil {
		l.muxPrefix = l.nc.NewInbox() + "."
		l.muxChans = map[string]chan *nats.Msg{}
		sub, err := l.nc.Subscribe(l.muxPrefix+"*", func(m *nats.Msg) {
			token := m.Subject[len(l.muxPrefix):]
			l.muxMu.Lock()
			ch := l.muxChans[token]
			l.muxMu.Unlock()
			if ch != nil {
				ch <- m
			}
		})
		if err != nil {
			return nil, err
		}
		_ = sub.SetPendingLimits(-1, -1)
		l.muxSub = sub
	}
	l.muxNext++
	token := strconv.FormatUint(l.muxNext, 36)
	// A page is at most loadPageSize messages and an end-of-batch marker, so
	// the subscription's callback never blocks on this channel.
	ch := make(chan *nats.Msg, loadPageSize+2)
	l.muxChans[token] = ch
	return &inbox{subject: l.muxPrefix + token, msgs: ch, close: func() {
		l.muxMu.Lock()
		delete(l.muxChans, token)
		l.muxMu.Unlock()
	}}, nil
}

// TypeOf is the event type a stored message's header announces, so that a
// reader that acts on a few types can pass over the rest without decoding
// them. It is "" for events appended before the header was written, and
// only the decoded body is authoritative: a reader that acts on a type must
// decode the event.
func TypeOf(h nats.Header) string { return h.Get(TypeHeader) }

// RecordFromMsg decodes a stored message. seq is used when the headers do not
// carry the stream sequence (as for messages from a consumer).
func RecordFromMsg(h nats.Header, data []byte, seq uint64) Record {
	if s, err := strconv.ParseUint(h.Get(jetstream.SequenceHeader), 10, 64); err == nil {
		seq = s
	}
	prev, _ := strconv.ParseUint(h.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	ev, err := Decode(data)
	rec := Record{Event: ev, Seq: seq, PrevSeq: prev, Err: err}
	if err != nil {
		rec.Raw = data
	}
	return rec
}

// LastSeq returns the sequence of a job's last event, 0 if it has none, in
// one direct get: the stream's index of each subject's last message finds
// it at once, where reading the job's events after a sequence walks the
// stream's other messages in between. Like Load, it may be answered by a
// replica that has not caught up.
func (l *Log) LastSeq(ctx context.Context, jobID string) (uint64, error) {
	seq, _, err := l.last(ctx, jobID, "last sequence")
	return seq, err
}

// LastStoredAt returns when the server stored a job's last event, by the
// server's clock, and the zero time if the job has none. An event's own
// time is its writer's clock, which may lag or run ahead; the detector
// judges silences by this one.
func (l *Log) LastStoredAt(ctx context.Context, jobID string) (time.Time, error) {
	_, at, err := l.last(ctx, jobID, "last event time")
	return at, err
}

func (l *Log) last(ctx context.Context, jobID, what string) (uint64, time.Time, error) {
	if err := ValidateJobID(jobID); err != nil {
		return 0, time.Time{}, err
	}
	in, err := l.openInbox()
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%s of job %s: %w", what, jobID, err)
	}
	defer func() { in.close() }()
	var unavailableSince time.Time
	for {
		if err := l.nc.PublishRequest(l.directGet+"."+l.Subject(jobID), in.subject, nil); err != nil {
			return 0, time.Time{}, fmt.Errorf("%s of job %s: %w", what, jobID, err)
		}
		m, err := l.answer(ctx, in)
		if errors.Is(err, errAskAgain) {
			continue
		}
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("%s of job %s: %w", what, jobID, err)
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			if err != nil {
				return 0, time.Time{}, fmt.Errorf("%s of job %s: direct get answered without a sequence", what, jobID)
			}
			// Read only by the detector, which falls back on the event's
			// own time without it.
			at, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
			return seq, at, nil
		case "404":
			return 0, time.Time{}, nil
		case "503":
			if err := l.waitServed(ctx, &unavailableSince); err != nil {
				return 0, time.Time{}, fmt.Errorf("%s of job %s: %w", what, jobID, err)
			}
		default:
			return 0, time.Time{}, fmt.Errorf("%s of job %s: direct get status %s %s", what, jobID, status, m.Header.Get("Description"))
		}
	}
}

// JobsStoredBefore returns the jobs with an event stored in the log before
// t, each once, in the order of their oldest event still there: the only
// jobs that can have finished before t. It reads the log from its start,
// headers only, and stops at the first event stored at or after t, so that
// what it costs is what the log still holds from before t (for a purger
// that removes the jobs it finds, little), not the whole log.
func (l *Log) JobsStoredBefore(ctx context.Context, t time.Time) ([]string, error) {
	s, err := l.js.Stream(ctx, l.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("jobs stored before %s: %w", t.Format(time.RFC3339), err)
	}
	if state := s.CachedInfo().State; state.Msgs == 0 || !state.FirstTime.Before(t) {
		return nil, nil
	}
	seen := map[string]bool{}
	var ids []string
	err = consume.Pass(ctx, l.js, l.cfg.Stream, jetstream.OrderedConsumerConfig{HeadersOnly: true}, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		if !meta.Timestamp.Before(t) {
			return false
		}
		if id, ok := l.JobIDFromSubject(m.Subject()); ok && !seen[id] && ValidateJobID(id) == nil {
			seen[id] = true
			ids = append(ids, id)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("jobs stored before %s: %w", t.Format(time.RFC3339), err)
	}
	return ids, nil
}

// Purge deletes a job's history up to and including sequence through (its
// version when the caller read it). Only finished jobs past their retention
// are purged; the caller checks that. The bound keeps a history begun after
// it: a job submitted again under the same key has the same ID, and a purge
// decided on the old job must not take the new one.
func (l *Log) Purge(ctx context.Context, jobID string, through uint64) error {
	if err := ValidateJobID(jobID); err != nil {
		return err
	}
	s, err := l.eventsStream(ctx)
	if err != nil {
		return fmt.Errorf("purge job %s: %w", jobID, err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(l.Subject(jobID)), jetstream.WithPurgeSequence(through+1)); err != nil {
		return fmt.Errorf("purge job %s: %w", jobID, err)
	}
	return nil
}
