package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/statemachine"
)

// RebuildStats reports a rebuild.
type RebuildStats struct {
	// Events counts the messages of the log read, valid or not.
	Events int `json:"events"`
	// Jobs counts the jobs whose views were rebuilt: written, found the
	// same, or found newer.
	Jobs int `json:"jobs"`
	// Written counts the views that differed from the stored ones, and
	// were written.
	Written int `json:"written"`
	// Removed counts the views of jobs the log no longer has (purged, or
	// lost), removed.
	Removed      int     `json:"removed"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_s"`
}

// rebuildWindow is how many view writes a rebuild keeps in flight: within
// the connection's default window of unanswered publishes (4,000).
const rebuildWindow = 2048

// Rebuild rebuilds every view from the event log while the system keeps
// running, replacing the views in place so that readers see a view of every
// job throughout, the old one until the new one is written. It folds the
// whole log in one ordered pass, then writes each job's view where it
// differs from the stored one, unless a live projector wrote a newer one
// meanwhile, and removes the views of jobs the log no longer has. Events
// appended during the rebuild are the live projector's. Once done, it
// records in the bucket that its views are of this ViewFormat.
func (p *Projector) Rebuild(ctx context.Context) (RebuildStats, error) {
	start := time.Now()
	if _, err := p.provisionStorage(ctx); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	// Read before the log: a view written after this read has a later
	// revision, so the write that replaces it, expecting this one, is
	// refused and decided again.
	current, err := p.currentViews(ctx)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	p.clearCache()

	jobs, n, err := p.foldLog(ctx)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	beats, err := p.lastBeats(ctx)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	all, err := p.renderAll(jobs, beats)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	if p.folded != nil {
		p.folded()
	}
	// A view that differs from the one rendered now is written again, even
	// at the same version: the rebuild may be there to render views anew.
	// One written since it was read is decided again, keeping the newer.
	work := all[:0]
	for _, jw := range all {
		cur, ok := current[jw.id]
		if ok && cur.sum == maphash.Bytes(viewHashSeed, jw.data) {
			continue
		}
		jw.cur = stored{rev: cur.rev}
		work = append(work, jw)
	}
	keepNewer := func(ctx context.Context, jw *jobWork, _ bool) error {
		cur, err := p.read(ctx, jw.id)
		if err != nil {
			return err
		}
		_, hadView := current[jw.id]
		jw.cur = cur
		switch {
		case cur.ok:
			jw.write = cur.view.Version < jw.view.Version
		case cur.rev == 0 && hadView:
			// Gone since it was read: forgotten with its job (the purger),
			// which the fold, read before, must not bring back.
			jw.write = false
		default:
			jw.write = true // no view yet, or a value that is not one
		}
		return nil
	}
	written := len(work)
	for lo := 0; lo < len(work); lo += rebuildWindow {
		window := work[lo:min(lo+rebuildWindow, len(work))]
		stale, err := p.writeAll(ctx, window)
		if err != nil {
			return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
		}
		if err := p.parallel(ctx, stale, func(ctx context.Context, jw *jobWork) error {
			return p.retry(ctx, jw, keepNewer)
		}); err != nil {
			return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
		}
		for _, jw := range stale {
			if !jw.write {
				written--
			}
		}
	}
	removed, err := p.dropOrphans(ctx, current, jobs)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	if err := p.recordFormat(ctx); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	p.setupMu.Lock()
	p.outdated = false
	p.setupMu.Unlock()
	el := time.Since(start).Seconds()
	return RebuildStats{Events: n, Jobs: len(all), Written: written, Removed: removed, Seconds: el, EventsPerSec: float64(n) / el}, nil
}

// currentView is what the rebuild needs of a view the bucket holds: its
// revision, to replace it, and a hash of its bytes, to leave it be when the
// rebuilt view is the same.
type currentView struct {
	rev uint64
	sum uint64
}

// currentViews reads the revision and a hash of every view in the bucket.
// Every view it reads was written for events stored before the log's pass
// that follows it begins, so the fold includes them: a rebuilt view is never
// older than the one it replaces, and a job the fold lacks has lost its
// events.
func (p *Projector) currentViews(ctx context.Context) (map[string]currentView, error) {
	out := map[string]currentView{}
	prefix := p.kvSubject("")
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy}
	err := orderedPass(ctx, p.js, p.kvStreamName(), cfg, func(m jetstream.Msg, seq uint64) {
		if id, ok := strings.CutPrefix(m.Subject(), prefix); ok && m.Headers().Get("KV-Operation") == "" {
			out[id] = currentView{rev: seq, sum: maphash.Bytes(viewHashSeed, m.Data())}
		}
	})
	return out, err
}

var viewHashSeed = maphash.MakeSeed()

// dropOrphans removes the views of jobs that the log, folded after the
// views were read, does not have (their events were lost or removed by
// hand). A key written since it was read keeps its new value: the purge
// stops at the revision read.
func (p *Projector) dropOrphans(ctx context.Context, current map[string]currentView, jobs map[string]*statemachine.Job) (int, error) {
	st, err := p.js.Stream(ctx, p.kvStreamName())
	if err != nil {
		return 0, fmt.Errorf("drop views of jobs not in the log: %w", err)
	}
	dropped := 0
	for id, cur := range current {
		// A job the fold found no valid submit for has no view either.
		if j, inLog := jobs[id]; inLog && j.State != statemachine.StateNew {
			continue
		}
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(p.kvSubject(id)), jetstream.WithPurgeSequence(cur.rev+1)); err != nil {
			return dropped, fmt.Errorf("drop view of job %s, not in the log: %w", id, err)
		}
		p.forget(id)
		dropped++
	}
	return dropped, nil
}

// renderAll encodes the view of every job that has one, on every core.
func (p *Projector) renderAll(jobs map[string]*statemachine.Job, beats map[string]events.Beat) ([]*jobWork, error) {
	work := make([]*jobWork, 0, len(jobs))
	for id, j := range jobs {
		if j.State != statemachine.StateNew {
			work = append(work, &jobWork{id: id})
		}
	}
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	shards := runtime.GOMAXPROCS(0)
	for s := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < len(work); i += shards {
				jw := work[i]
				var beat *events.Beat
				if b, ok := beats[jw.id]; ok {
					beat = &b
				}
				if err := jw.setView(ViewOf(*jobs[jw.id], beat), p.viewLimit()); err != nil {
					errMu.Lock()
					first = err
					errMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return work, first
}

// foldLog folds every job of the log, up to its last sequence when the pass
// began; n counts the messages read.
func (p *Projector) foldLog(ctx context.Context) (jobs map[string]*statemachine.Job, n int, err error) {
	jobs = map[string]*statemachine.Job{}
	err = orderedPass(ctx, p.js, p.log.Stream(), jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}, func(m jetstream.Msg, seq uint64) {
		n++
		id, ok := p.log.JobIDFromSubject(m.Subject())
		if !ok || events.ValidateJobID(id) != nil {
			return
		}
		j := jobs[id]
		if j == nil {
			j = &statemachine.Job{State: statemachine.StateNew}
			jobs[id] = j
		}
		_ = j.Apply(events.RecordFromMsg(m.Headers(), m.Data(), seq).OfJob(id))
		// The view keeps only the payload's size: do not hold every
		// payload of the log in memory.
		j.Payload = nil
	})
	return jobs, n, err
}

// lastBeats reads the last beat of every job.
func (p *Projector) lastBeats(ctx context.Context) (map[string]events.Beat, error) {
	out := map[string]events.Beat{}
	err := orderedPass(ctx, p.js, p.hb.Stream(), jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy}, func(m jetstream.Msg, _ uint64) {
		var b events.Beat
		if id, ok := p.hb.JobIDFromSubject(m.Subject()); ok && json.Unmarshal(m.Data(), &b) == nil && b.JobID == id {
			out[id] = b
		}
	})
	return out, err
}

// orderedPass reads a stream once, up to the end it had when the pass began.
func orderedPass(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg, uint64)) error {
	return consume.Pass(ctx, js, stream, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		fn(m, meta.Sequence.Stream)
		return true
	})
}
