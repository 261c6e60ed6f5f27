package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// RebuildStats reports a rebuild.
type RebuildStats struct {
	// Events counts the messages of the log read, valid or not.
	Events int `json:"events"`
	// Jobs counts the views written or found newer.
	Jobs         int     `json:"jobs"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_s"`
}

// rebuildWindow is how many view writes a rebuild keeps in flight: within
// the connection's default window of unanswered publishes (4,000).
const rebuildWindow = 2048

// Rebuild rebuilds every view from the event log while the system keeps
// running, replacing the views in place so that readers see a view of every
// job throughout, the old one until the new one is written. It folds the
// whole log in one ordered pass, then writes each job's view unless a live
// projector already wrote a newer one, and removes the views of jobs the
// log no longer has. Events appended during the rebuild are the live
// projector's.
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

	jobs, n, end, err := p.foldLog(ctx)
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
	// A view of the same version is written again: the rebuild may be
	// there to render views anew.
	work := all[:0]
	for _, jw := range all {
		jw.cur = current[jw.id]
		if !jw.cur.ok || jw.cur.view.Version <= jw.view.Version {
			work = append(work, jw)
		}
	}
	// A key the live projector wrote meanwhile is decided again, keeping
	// the newer view.
	keepNewer := func(ctx context.Context, jw *jobWork, _ bool) error {
		cur, err := p.read(ctx, jw.id)
		if err != nil {
			return err
		}
		jw.cur = cur
		jw.write = !cur.ok || cur.view.Version < jw.view.Version
		return nil
	}
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
	}
	if err := p.dropOrphans(ctx, current, jobs, end); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	el := time.Since(start).Seconds()
	return RebuildStats{Events: n, Jobs: len(all), Seconds: el, EventsPerSec: float64(n) / el}, nil
}

// currentViews reads the version and revision of every view in the bucket.
func (p *Projector) currentViews(ctx context.Context) (map[string]stored, error) {
	out := map[string]stored{}
	prefix := p.kvSubject("")
	_, err := orderedPass(ctx, p.js, p.kvStreamName(), jetstream.DeliverLastPerSubjectPolicy, func(m jetstream.Msg, seq uint64) {
		id, ok := strings.CutPrefix(m.Subject(), prefix)
		if !ok {
			return
		}
		if m.Headers().Get("KV-Operation") != "" {
			return // deleted: nothing to replace or remove
		}
		var v struct {
			ID      string `json:"id"`
			Version uint64 `json:"version"`
		}
		if json.Unmarshal(m.Data(), &v) != nil || v.ID != id {
			out[id] = stored{rev: seq} // not a view: replaced, or removed
			return
		}
		out[id] = stored{view: View{ID: v.ID, Version: v.Version}, rev: seq, ok: true}
	})
	return out, err
}

// dropOrphans removes the views of jobs that the log, read up to end, does
// not have (its events were lost or removed by hand). A view newer than end
// is a job submitted during the rebuild, and a key written since it was
// read keeps its new value: the purge stops at the revision read.
func (p *Projector) dropOrphans(ctx context.Context, current map[string]stored, jobs map[string]*statemachine.Job, end uint64) error {
	st, err := p.js.Stream(ctx, p.kvStreamName())
	if err != nil {
		return fmt.Errorf("drop views of jobs not in the log: %w", err)
	}
	for id, cur := range current {
		if _, inLog := jobs[id]; inLog || (cur.ok && cur.view.Version > end) {
			continue
		}
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(p.kvSubject(id)), jetstream.WithPurgeSequence(cur.rev+1)); err != nil {
			return fmt.Errorf("drop view of job %s, not in the log: %w", id, err)
		}
		p.forget(id)
	}
	return nil
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
				if err := jw.setView(ViewOf(*jobs[jw.id], beat)); err != nil {
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

// foldLog folds every job in the events stream up to the end it had when
// the pass began, and counts the messages read.
// foldLog folds every job of the log, up to end, its last sequence when
// the pass began; n counts the messages read.
func (p *Projector) foldLog(ctx context.Context) (jobs map[string]*statemachine.Job, n int, end uint64, err error) {
	jobs = map[string]*statemachine.Job{}
	end, err = orderedPass(ctx, p.js, p.log.Stream(), jetstream.DeliverAllPolicy, func(m jetstream.Msg, seq uint64) {
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
		_ = j.Apply(checkJob(id, events.RecordFromMsg(m.Headers(), m.Data(), seq)))
		// The view keeps only the payload's size: do not hold every
		// payload of the log in memory.
		j.Payload = nil
	})
	return jobs, n, end, err
}

// lastBeats reads the last beat of every job.
func (p *Projector) lastBeats(ctx context.Context) (map[string]events.Beat, error) {
	out := map[string]events.Beat{}
	_, err := orderedPass(ctx, p.js, p.hb.Stream(), jetstream.DeliverLastPerSubjectPolicy, func(m jetstream.Msg, _ uint64) {
		var b events.Beat
		if id, ok := p.hb.JobIDFromSubject(m.Subject()); ok && json.Unmarshal(m.Data(), &b) == nil && b.JobID == id {
			out[id] = b
		}
	})
	return out, err
}

// orderedPass reads a stream once, up to end, the last sequence it had when
// the pass began.
func orderedPass(ctx context.Context, js jetstream.JetStream, stream string, policy jetstream.DeliverPolicy, fn func(jetstream.Msg, uint64)) (end uint64, err error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", stream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return state.LastSeq, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: policy})
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", stream, err)
	}
	defer it.Stop()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			it.Stop() // unblocks Next
		case <-stopped:
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("read %s: %w", stream, ctx.Err())
			}
			return 0, fmt.Errorf("read %s: %w", stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		fn(m, meta.Sequence.Stream)
		if meta.Sequence.Stream >= state.LastSeq || meta.NumPending == 0 {
			return state.LastSeq, nil
		}
	}
}
