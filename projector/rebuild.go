package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
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

// Rebuild drops every view and rebuilds it from the event log while the
// system keeps running: it folds the whole log in one ordered pass, then
// writes each job's view unless a live projector already wrote a newer one.
// Events appended during the rebuild are the live projector's: they land
// after the views were dropped, so it folds their jobs from the log.
func (p *Projector) Rebuild(ctx context.Context) (RebuildStats, error) {
	start := time.Now()
	if _, err := p.provisionStorage(ctx); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	p.setupMu.Lock()
	kv := p.kv
	p.setupMu.Unlock()
	if err := kv.Purge(ctx); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: drop views: %w", err)
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
	work, err := p.renderAll(jobs, beats)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	// Every view is created expecting its key to be empty; a key the live
	// projector wrote meanwhile is decided again, keeping the newer view.
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
	el := time.Since(start).Seconds()
	return RebuildStats{Events: n, Jobs: len(work), Seconds: el, EventsPerSec: float64(n) / el}, nil
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
func (p *Projector) foldLog(ctx context.Context) (map[string]*statemachine.Job, int, error) {
	jobs := map[string]*statemachine.Job{}
	n := 0
	err := orderedPass(ctx, p.js, p.log.Stream(), jetstream.DeliverAllPolicy, func(m jetstream.Msg, seq uint64) {
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
	return jobs, n, err
}

// lastBeats reads the last beat of every job.
func (p *Projector) lastBeats(ctx context.Context) (map[string]events.Beat, error) {
	out := map[string]events.Beat{}
	err := orderedPass(ctx, p.js, p.hb.Stream(), jetstream.DeliverLastPerSubjectPolicy, func(m jetstream.Msg, _ uint64) {
		var b events.Beat
		if id, ok := p.hb.JobIDFromSubject(m.Subject()); ok && json.Unmarshal(m.Data(), &b) == nil && b.JobID == id {
			out[id] = b
		}
	})
	return out, err
}

// orderedPass reads a stream once, up to the end it had when the pass began.
func orderedPass(ctx context.Context, js jetstream.JetStream, stream string, policy jetstream.DeliverPolicy, fn func(jetstream.Msg, uint64)) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: policy})
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
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
				return fmt.Errorf("read %s: %w", stream, ctx.Err())
			}
			return fmt.Errorf("read %s: %w", stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		fn(m, meta.Sequence.Stream)
		if meta.Sequence.Stream >= state.LastSeq || meta.NumPending == 0 {
			return nil
		}
	}
}
