package projector

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// jobWork is one job's share of a batch: its new records (or its newest
// beat), the view they were applied to and the view to write.
type jobWork struct {
	id string
	// msgs are decoded into recs by the job's first step, so that batches
	// are decoded on every core.
	msgs []jetstream.Msg
	recs []events.Record
	beat *events.Beat

	cur   stored
	write bool
	view  View
	data  []byte
	bad   []badRecord
	// future is the answer to the write in flight; later, a write that
	// waits for the others to be answered.
	future jetstream.PubAckFuture
	later  bool
}

// badRecord is a message to copy to the quarantine stream.
type badRecord struct {
	job     string // job ID, or "unknown"
	subject string
	rec     events.Record
	reason  error
}

// step decides one job's new view from its stored one (read again from the
// bucket when fresh) and sets write when it changed.
type step func(ctx context.Context, jw *jobWork, fresh bool) error

func (jw *jobWork) reset() {
	jw.write, jw.view, jw.data, jw.bad = false, View{}, nil, nil
}

// setView makes v, fitted into a view of at most limit bytes, the one to write.
func (jw *jobWork) setView(v View, limit int) error {
	v, data, err := fit(v, limit)
	if err != nil {
		return fmt.Errorf("encode view of job %s: %w", jw.id, err)
	}
	jw.write, jw.view, jw.data = true, v, data
	return nil
}

// viewLimit is the most bytes a view may take: what the server takes in a
// message, less the room the log keeps for a subject and headers.
func (p *Projector) viewLimit() int { return p.log.MaxEventSize() }

// processEvents projects a batch from the events stream: each job's records
// are applied in order to its view, which is written once.
func (p *Projector) processEvents(ctx context.Context, msgs []jetstream.Msg) error {
	// A batch in hand is finished on Stop (each wait is bounded by
	// WriteTimeout): its writes are in flight anyway, and an unacknowledged
	// batch would wait AckWait to be delivered again.
	ctx = context.WithoutCancel(ctx)
	var (
		jobs []*jobWork
		byID = map[string]*jobWork{}
		bad  []badRecord
	)
	for _, m := range msgs {
		id, ok := p.log.JobIDFromSubject(m.Subject())
		if !ok || events.ValidateJobID(id) != nil {
			rec := recordOf(m)
			bad = append(bad, badRecord{job: "unknown", subject: m.Subject(), rec: rec,
				reason: fmt.Errorf("%w: subject %q names no job", events.ErrMalformed, m.Subject())})
			continue
		}
		jw := byID[id]
		if jw == nil {
			jw = &jobWork{id: id}
			byID[id] = jw
			jobs = append(jobs, jw)
		}
		jw.msgs = append(jw.msgs, m)
	}
	moreBad, err := p.project(ctx, jobs, p.stepEvents)
	if err != nil {
		return err
	}
	if err := p.quarantine(ctx, append(bad, moreBad...)); err != nil {
		return err
	}
	ackEach(msgs)
	return nil
}

// processBeats carries each job's newest beat of a batch into its view.
func (p *Projector) processBeats(ctx context.Context, msgs []jetstream.Msg) error {
	ctx = context.WithoutCancel(ctx) // as processEvents
	var (
		jobs []*jobWork
		byID = map[string]*jobWork{}
	)
	for _, m := range msgs {
		var b events.Beat
		id, ok := p.hb.JobIDFromSubject(m.Subject())
		if err := json.Unmarshal(m.Data(), &b); err != nil || !ok || id != b.JobID || events.ValidateJobID(id) != nil {
			// Beats are not the source of truth of anything: a bad one is
			// dropped, and the worker's next beat counts.
			p.logger.Debug("dropped a malformed heartbeat", zap.String("subject", m.Subject()))
			continue
		}
		jw := byID[id]
		if jw == nil {
			jw = &jobWork{id: id}
			byID[id] = jw
			jobs = append(jobs, jw)
		}
		jw.beat = &b // the stream's order: the last one is the newest
	}
	bad, err := p.project(ctx, jobs, p.stepBeat)
	if err != nil {
		return err
	}
	if err := p.quarantine(ctx, bad); err != nil {
		return err
	}
	ackEach(msgs)
	return nil
}

// recordOf decodes a message of the events stream.
func recordOf(m jetstream.Msg) events.Record {
	var seq uint64
	if meta, err := m.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	rec := events.RecordFromMsg(m.Headers(), m.Data(), seq)
	if rec.Raw == nil {
		rec.Raw = m.Data() // the quarantine keeps the original bytes
	}
	return rec
}

func ackEach(msgs []jetstream.Msg) {
	for _, m := range msgs {
		// A lost ack only means a redelivery, which projects nothing twice.
		_ = m.Ack()
	}
}

// project decides every job's view and sends each changed one as soon as it
// is decided, all writes in flight at once, each expecting the revision it
// was decided on; then it decides again, one job at a time, where another
// writer got there first. It returns the records to quarantine.
func (p *Projector) project(ctx context.Context, jobs []*jobWork, decide step) ([]badRecord, error) {
	var stalled atomic.Bool
	if err := p.parallel(ctx, jobs, func(ctx context.Context, jw *jobWork) error {
		if err := decide(ctx, jw, false); err != nil {
			return err
		}
		if jw.write {
			return p.send(jw, &stalled)
		}
		return nil
	}); err != nil {
		p.abandon(jobs)
		return nil, err
	}
	stale, err := p.collect(ctx, jobs)
	if err != nil {
		return nil, err
	}
	if err := p.parallel(ctx, stale, func(ctx context.Context, jw *jobWork) error {
		return p.retry(ctx, jw, decide)
	}); err != nil {
		return nil, err
	}
	var bad []badRecord
	for _, jw := range jobs {
		bad = append(bad, jw.bad...)
	}
	return bad, nil
}

// retry decides a job's view again on the view as now stored, until its
// write is not overtaken.
func (p *Projector) retry(ctx context.Context, jw *jobWork, decide step) error {
	for try := 0; ; try++ {
		if err := decide(ctx, jw, true); err != nil {
			return err
		}
		if !jw.write {
			return nil
		}
		err := p.writeOne(ctx, jw)
		if !errors.Is(err, errStale) {
			return err
		}
		if try+1 >= casRetries {
			return fmt.Errorf("project job %s: %d writes overtaken: %w", jw.id, casRetries, err)
		}
	}
}

// stepEvents applies a job's new records to its view. A record that does not
// follow the view's version (its writer expected another last sequence than
// the view has) means the view missed something: the history is folded again.
func (p *Projector) stepEvents(ctx context.Context, jw *jobWork, fresh bool) error {
	jw.reset()
	if jw.recs == nil {
		jw.recs = make([]events.Record, len(jw.msgs))
		for i, m := range jw.msgs {
			jw.recs[i] = recordOf(m)
		}
		// A redelivery can arrive after newer messages: in stream order
		// they still follow one another.
		slices.SortFunc(jw.recs, func(a, b events.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	}
	// A record that expected an empty history is the job's first: without a
	// cached view, assume none is stored rather than read; a wrong guess is
	// refused by the write and decided again on the stored view.
	first := jw.recs[0]
	cur, err := p.current(ctx, jw.id, fresh, first.Err == nil && first.Type == events.TypeSubmitted && first.PrevSeq == 0)
	if err != nil {
		return err
	}
	jw.cur = cur
	if (cur.rev != 0 && !cur.ok) || cur.view.partial() {
		// A deleted or unreadable view, or one that does not hold all of
		// the fold it shows.
		return p.refold(ctx, jw)
	}
	if cur.rev == 0 && !slices.ContainsFunc(jw.recs, func(r events.Record) bool { return r.Err == nil }) {
		// Only messages that are no event, on a subject with no view: they
		// show nothing, and their batch need not read the subject's
		// history to learn so. A flood of them over many subjects had each
		// batch fold every subject's history again: 20,000 over 50
		// subjects kept the views 24 s behind.
		for _, rec := range jw.recs {
			jw.bad = append(jw.bad, badRecord{job: jw.id, subject: p.log.Subject(jw.id), rec: rec.OfJob(jw.id), reason: rec.Err})
		}
		return nil
	}
	job, beat := statemachine.Job{State: statemachine.StateNew}, (*events.Beat)(nil)
	if cur.ok {
		job, beat = cur.view.Job(), cur.view.beat()
	}
	changed := false
	for _, rec := range jw.recs {
		if rec.Seq <= job.Version {
			continue // delivered again: already in the view
		}
		if rec.PrevSeq != job.Version {
			return p.refold(ctx, jw)
		}
		rec = rec.OfJob(jw.id)
		if err := job.Apply(rec); err != nil {
			jw.bad = append(jw.bad, badRecord{job: jw.id, subject: p.log.Subject(jw.id), rec: rec, reason: err})
		}
		changed = true
	}
	if !changed || job.State == statemachine.StateNew {
		return nil // nothing new, or no valid submit yet: no job to show
	}
	return jw.setView(ViewOf(job, beat), p.viewLimit())
}

// stepBeat applies a job's newest beat to its view. A beat from an attempt
// the view does not know yet (its lease, the sequence of its acquired event,
// is past the view's version) means the events are behind: the history is
// folded here, so that the beat is not lost.
func (p *Projector) stepBeat(ctx context.Context, jw *jobWork, fresh bool) error {
	jw.reset()
	cur, err := p.current(ctx, jw.id, fresh, false)
	if err != nil {
		return err
	}
	jw.cur = cur
	if !cur.ok || jw.beat.Lease > cur.view.Version || cur.view.partial() {
		return p.refold(ctx, jw)
	}
	v, b := cur.view, jw.beat
	if v.HeartbeatAt != nil && b.Lease == v.Lease && !b.At.After(*v.HeartbeatAt) {
		return nil // an older beat of the same attempt, delivered late
	}
	nv := ViewOf(v.Job(), b)
	if sameBeat(nv, v) {
		return nil
	}
	return jw.setView(nv, p.viewLimit())
}

func sameBeat(a, b View) bool {
	if (a.HeartbeatAt == nil) != (b.HeartbeatAt == nil) {
		return false
	}
	return a.UpdatedAt.Equal(b.UpdatedAt) && (a.HeartbeatAt == nil || a.HeartbeatAt.Equal(*b.HeartbeatAt))
}

// refold folds the job's whole history and reads its last beat.
func (p *Projector) refold(ctx context.Context, jw *jobWork) error {
	p.refolds.Add(1)
	jw.reset()
	recs, err := p.log.Load(ctx, jw.id)
	if err != nil && !errors.Is(err, events.ErrNotFound) {
		return fmt.Errorf("project job %s: %w", jw.id, err)
	}
	if err := p.checkCurrent(ctx, jw, recs); err != nil {
		return err
	}
	// Records up to seen were quarantined before: those up to the stored
	// view's version when it was written, and those before the ones in hand
	// by the batches that brought them, which quarantine before they
	// acknowledge. A job with no view (no valid submit) has only the
	// second to go by.
	var seen uint64
	if jw.cur.ok {
		seen = jw.cur.view.Version
	}
	if len(jw.recs) > 0 {
		seen = max(seen, jw.recs[0].Seq-1)
	}
	job := statemachine.Job{State: statemachine.StateNew}
	for _, rec := range recs {
		rec = rec.OfJob(jw.id)
		if err := job.Apply(rec); err != nil && rec.Seq > seen {
			jw.bad = append(jw.bad, badRecord{job: jw.id, subject: p.log.Subject(jw.id), rec: rec, reason: err})
		}
	}
	if job.State == statemachine.StateNew {
		// No view is written to record how far the history was read, so
		// the batches that bring the later messages fold it again: each is
		// quarantined by its own batch, not by every batch before it too.
		var inHand uint64
		if n := len(jw.recs); n > 0 {
			inHand = jw.recs[n-1].Seq
		}
		jw.bad = slices.DeleteFunc(jw.bad, func(b badRecord) bool { return b.rec.Seq > inHand })
	}
	if job.State == statemachine.StateNew || (jw.cur.ok && job.Version < jw.cur.view.Version) {
		// No valid submit, or a history shorter than the view (being
		// purged): nothing to write, and never a view older than the stored one.
		return nil
	}
	var beat *events.Beat
	if job.State == statemachine.StateRunning || job.State == statemachine.StateCanceling {
		b, ok, err := p.hb.Last(ctx, jw.id)
		if err != nil {
			return fmt.Errorf("project job %s: %w", jw.id, err)
		}
		if ok {
			beat = &b
		}
	}
	v := ViewOf(job, beat)
	if jw.cur.ok && v.Version == jw.cur.view.Version && sameBeat(v, jw.cur.view) {
		return nil
	}
	return jw.setView(v, p.viewLimit())
}

// checkCurrent refuses a history read that ends before the events in hand.
// Loads are direct gets, which any replica of a clustered log may answer,
// and one that lags would have the projector acknowledge events it never
// showed; the batch is tried again instead. A history that is gone
// altogether is asked of the stream's leader, since a purge also empties
// it. (A beat proves nothing: a worker's beat may name an attempt the log
// never had, and it only hides the attempt's earlier beats.)
func (p *Projector) checkCurrent(ctx context.Context, jw *jobWork, recs []events.Record) error {
	var need uint64
	if n := len(jw.recs); n > 0 {
		need = jw.recs[n-1].Seq
	}
	if len(recs) > 0 {
		if last := recs[len(recs)-1].Seq; last < need {
			return fmt.Errorf("project job %s: %w: read up to %d, holding %d", jw.id, errHistoryBehind, last, need)
		}
		return nil
	}
	if need == 0 {
		return nil
	}
	held, err := p.log.Holds(ctx, jw.id)
	if err != nil {
		return fmt.Errorf("project job %s: %w", jw.id, err)
	}
	if held {
		return fmt.Errorf("project job %s: %w: read none, holding %d", jw.id, errHistoryBehind, need)
	}
	return nil
}

// current returns the stored view of a job: from the cache unless fresh,
// else assumed absent when assumeNone, else read from the bucket.
func (p *Projector) current(ctx context.Context, id string, fresh, assumeNone bool) (stored, error) {
	if !fresh {
		if s, ok := p.cached(id); ok {
			return s, nil
		}
		if assumeNone {
			return stored{}, nil
		}
	}
	return p.read(ctx, id)
}

// read reads a job's stored view, or its delete marker, from the bucket.
func (p *Projector) read(ctx context.Context, id string) (stored, error) {
	p.setupMu.Lock()
	kv := p.kv
	p.setupMu.Unlock()
	m, err := kv.GetLastMsgForSubject(ctx, p.kvSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stored{}, nil
	}
	if err != nil {
		return stored{}, fmt.Errorf("read view of job %s: %w", id, err)
	}
	if op := m.Header.Get("KV-Operation"); op != "" {
		return stored{rev: m.Sequence}, nil // deleted or purged
	}
	var v View
	if err := json.Unmarshal(m.Data, &v); err != nil || !isView(id, v) {
		p.logger.Warn("unreadable view: folding the job again", zap.String("job", id), zap.Error(err))
		return stored{rev: m.Sequence}, nil
	}
	s := stored{view: v, rev: m.Sequence, ok: true}
	p.remember(id, s)
	return s, nil
}

// kvMsg is a write of a view that the bucket accepts only if the key is
// still at rev (0: the key has no entry), as the bucket's own Update does.
func (p *Projector) kvMsg(id string, data []byte, rev uint64) *nats.Msg {
	m := nats.NewMsg(p.kvPut + id)
	m.Data = data
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	return m
}

// send publishes a job's view without waiting for the answer. When the
// connection's window of unanswered publishes stays full (it is shared with
// other writers), the write, and every later one of the batch (stalled), is
// made once the others are answered, rather than each waiting for a stall.
func (p *Projector) send(jw *jobWork, stalled *atomic.Bool) error {
	if stalled.Load() {
		jw.later = true
		return nil
	}
	f, err := p.js.PublishMsgAsync(p.kvMsg(jw.id, jw.data, jw.cur.rev))
	if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
		stalled.Store(true)
		jw.later = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("write view of job %s: %w", jw.id, err)
	}
	jw.future = f
	return nil
}

// abandon forgets the writes of a batch that failed: the retry of the batch
// reads what landed.
func (p *Projector) abandon(jobs []*jobWork) {
	p.clearCache()
	for _, jw := range jobs {
		jw.future, jw.later = nil, false
	}
}

// writeStall: a batch whose writes have had no answer for this long has
// lost some, and is tried again, without waiting out WriteTimeout. A write
// is lost with no word when the bucket's leader freezes (SIGSTOP, a
// partition), or takes it as it thaws, still believing itself leader:
// each such loss left the views 10 s behind the log, on top of the
// election. A server that answers, however loaded, answers some write of a
// batch within it.
const writeStall = 3 * time.Second

// collect waits for the answers to the writes sent, and returns the jobs
// whose key had moved since their view was read.
func (p *Projector) collect(ctx context.Context, jobs []*jobWork) ([]*jobWork, error) {
	timeout := time.NewTimer(p.cfg.WriteTimeout)
	defer timeout.Stop()
	stall := time.NewTimer(writeStall)
	defer stall.Stop()
	var stale []*jobWork
	for _, jw := range jobs {
		f := jw.future
		if f == nil {
			continue
		}
		jw.future = nil
		select {
		case ack := <-f.Ok():
			p.remember(jw.id, stored{view: jw.view, rev: ack.Sequence, ok: true})
			stall.Reset(writeStall)
		case err := <-f.Err():
			p.forget(jw.id)
			if !isWrongLastSeq(err) {
				p.abandon(jobs)
				return nil, fmt.Errorf("write view of job %s: %w", jw.id, err)
			}
			stale = append(stale, jw)
			stall.Reset(writeStall)
		case <-stall.C:
			p.abandon(jobs)
			return nil, fmt.Errorf("write view of job %s: no answer to any write for %s", jw.id, writeStall)
		case <-timeout.C:
			p.abandon(jobs)
			return nil, fmt.Errorf("write view of job %s: no answer within %s", jw.id, p.cfg.WriteTimeout)
		case <-ctx.Done():
			p.abandon(jobs)
			return nil, fmt.Errorf("write view of job %s: %w", jw.id, ctx.Err())
		}
	}
	for _, jw := range jobs {
		if !jw.later {
			continue
		}
		jw.later = false
		err := p.writeOne(ctx, jw)
		if errors.Is(err, errStale) {
			stale = append(stale, jw)
		} else if err != nil {
			p.abandon(jobs)
			return nil, err
		}
	}
	return stale, nil
}

// writeAll writes the views all in flight at once, and returns the jobs
// whose key had moved since their view was read.
func (p *Projector) writeAll(ctx context.Context, jobs []*jobWork) ([]*jobWork, error) {
	var stalled atomic.Bool
	for _, jw := range jobs {
		if err := p.send(jw, &stalled); err != nil {
			p.abandon(jobs)
			return nil, err
		}
	}
	return p.collect(ctx, jobs)
}

// writeOne writes one view and waits; errStale when the key moved.
func (p *Projector) writeOne(ctx context.Context, jw *jobWork) error {
	wctx, cancel := context.WithTimeout(ctx, min(p.cfg.WriteTimeout, writeStall))
	defer cancel()
	ack, err := p.js.PublishMsg(wctx, p.kvMsg(jw.id, jw.data, jw.cur.rev))
	if err != nil {
		p.forget(jw.id)
		if isWrongLastSeq(err) {
			return errStale
		}
		return fmt.Errorf("write view of job %s: %w", jw.id, err)
	}
	p.remember(jw.id, stored{view: jw.view, rev: ack.Sequence, ok: true})
	return nil
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// parallel runs fn for every job on up to Writers goroutines and returns
// the first error.
func (p *Projector) parallel(ctx context.Context, jobs []*jobWork, fn func(context.Context, *jobWork) error) error {
	if len(jobs) == 0 {
		return nil
	}
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	work := make(chan *jobWork)
	for range min(p.cfg.Writers, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for jw := range work {
				if err := fn(ctx, jw); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
				}
			}
		}()
	}
	for _, jw := range jobs {
		work <- jw
	}
	close(work)
	wg.Wait()
	return first
}

// quarantine copies messages that are not valid events to the quarantine
// stream, with where they came from and why, and logs each. Each copy has a
// subject of its own, named by the original's sequence, and is published
// only if that subject holds nothing yet, so a message quarantined again (a
// redelivery, two servers, the views projected again from scratch) is
// stored once, however long after.
func (p *Projector) quarantine(ctx context.Context, bad []badRecord) error {
	if len(bad) == 0 {
		return nil
	}
	seen := map[uint64]bool{}
	var futures []jetstream.PubAckFuture
	for _, b := range bad {
		if seen[b.rec.Seq] {
			continue
		}
		seen[b.rec.Seq] = true
		if len(seen) <= quarantineLinesPerBatch {
			p.logger.Warn("quarantined a message on an event subject: it is not a valid event of its job",
				zap.String("job", b.job), zap.String("subject", b.subject), zap.Uint64("seq", b.rec.Seq), zap.Error(b.reason))
		}
		seq := strconv.FormatUint(b.rec.Seq, 10)
		m := nats.NewMsg(QuarantinePrefix + b.job + "." + seq)
		m.Data = b.rec.Raw
		if m.Data == nil {
			m.Data, _ = events.Encode(b.rec.Event)
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		m.Header.Set(HeaderOriginalStream, p.log.Stream())
		m.Header.Set(HeaderOriginalSeq, seq)
		m.Header.Set(HeaderOriginalSubject, b.subject)
		m.Header.Set(HeaderReason, b.reason.Error())
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("quarantine message %d: %w", b.rec.Seq, err)
		}
		futures = append(futures, f)
	}
	if more := len(seen) - quarantineLinesPerBatch; more > 0 {
		p.logger.Warn("quarantined more messages on event subjects, not logged one by one ('jetjob history' shows each)",
			zap.Int("messages", more))
	}
	timeout := time.NewTimer(p.cfg.WriteTimeout)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if quarantinedBefore(err) {
				continue
			}
			return fmt.Errorf("quarantine message %s: %w", f.Msg().Header.Get(HeaderOriginalSeq), err)
		case <-timeout.C:
			return fmt.Errorf("quarantine: no answer within %s", p.cfg.WriteTimeout)
		case <-ctx.Done():
			return fmt.Errorf("quarantine: %w", ctx.Err())
		}
	}
	return nil
}

// quarantineLinesPerBatch bounds the messages of a batch logged one by one
// when quarantined: a flood of garbage would otherwise bury the log.
const quarantineLinesPerBatch = 10

// quarantinedBefore tells a copy refused because its subject holds one
// already.
func quarantinedBefore(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Headers of a quarantined copy.
const (
	HeaderOriginalStream  = "Jetjob-Original-Stream"
	HeaderOriginalSeq     = "Jetjob-Original-Seq"
	HeaderOriginalSubject = "Jetjob-Original-Subject"
	HeaderReason          = "Jetjob-Reason"
)
