package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// RebuildStats reports a rebuild.
type RebuildStats struct {
	Events       int     `json:"events"`
	Jobs         int     `json:"jobs"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_s"`
}

// Rebuild drops every view and rebuilds it from the event log while the
// system keeps running: it folds the whole log in one ordered pass, then
// writes each job's view unless a live projector already wrote a newer one.
func (p *Projector) Rebuild(ctx context.Context) (RebuildStats, error) {
	start := time.Now()
	if p.kv == nil {
		if err := p.setup(ctx); err != nil {
			return RebuildStats{}, err
		}
	}
	if err := p.kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	s, err := p.js.Stream(ctx, "KV_"+p.cfg.Bucket)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	if err := s.Purge(ctx); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: drop views: %w", err)
	}
	p.cacheMu.Lock()
	p.cache = map[string]cached{}
	p.cacheMu.Unlock()

	jobs, n, err := p.foldLog(ctx)
	if err != nil {
		return RebuildStats{}, err
	}
	beats, err := p.lastBeats(ctx)
	if err != nil {
		return RebuildStats{}, err
	}
	// Create every view with pipelined publishes that expect the key to be
	// empty; a key the live projector wrote meanwhile takes the
	// compare-and-set path, keeping whichever view is newer.
	var contested []*jobBatch
	ids := make([]string, 0, len(jobs))
	for id, job := range jobs {
		if job.State != statemachine.StateNew {
			ids = append(ids, id)
		}
	}
	for lo := 0; lo < len(ids); lo += 2000 {
		chunk := ids[lo:min(lo+2000, len(ids))]
		futures := make([]jetstream.PubAckFuture, len(chunk))
		for i, id := range chunk {
			var beat *events.Beat
			if b, ok := beats[id]; ok {
				beat = &b
			}
			data, err := json.Marshal(ViewOf(*jobs[id], beat))
			if err != nil {
				return RebuildStats{}, fmt.Errorf("rebuild: encode view of job %s: %w", id, err)
			}
			m := nats.NewMsg("$KV." + p.cfg.Bucket + "." + id)
			m.Data = data
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
			if futures[i], err = p.js.PublishMsgAsync(m); err != nil {
				futures[i] = nil
			}
		}
		for i, f := range futures {
			if f == nil {
				contested = append(contested, &jobBatch{id: chunk[i]})
				continue
			}
			select {
			case <-f.Ok():
			case <-f.Err():
				contested = append(contested, &jobBatch{id: chunk[i]})
			case <-ctx.Done():
				return RebuildStats{}, ctx.Err()
			}
		}
	}
	err = p.parallel(ctx, contested, func(ctx context.Context, jb *jobBatch) error {
		var beat *events.Beat
		if b, ok := beats[jb.id]; ok {
			beat = &b
		}
		v := ViewOf(*jobs[jb.id], beat)
		for try := 0; try < 20; try++ {
			cur, err := p.load(ctx, jb.id)
			if err != nil {
				return err
			}
			if cur.rev != 0 && cur.view.Version >= v.Version {
				return nil // the live projector is already past this fold
			}
			if err := p.store(ctx, jb.id, v, cur.rev); !errors.Is(err, errStale) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return RebuildStats{}, err
	}
	el := time.Since(start).Seconds()
	return RebuildStats{Events: n, Jobs: len(jobs), Seconds: el, EventsPerSec: float64(n) / el}, nil
}

// foldLog folds every job in the events stream up to its current end.
func (p *Projector) foldLog(ctx context.Context) (map[string]*statemachine.Job, int, error) {
	jobs := map[string]*statemachine.Job{}
	n := 0
	err := orderedPass(ctx, p.js, p.log.Stream(), jetstream.DeliverAllPolicy, func(m jetstream.Msg, seq uint64) {
		id, ok := p.log.JobIDFromSubject(m.Subject())
		if !ok {
			return
		}
		j := jobs[id]
		if j == nil {
			j = &statemachine.Job{State: statemachine.StateNew}
			jobs[id] = j
		}
		_ = j.Apply(events.RecordFromMsg(m.Headers(), m.Data(), seq))
		n++
	})
	return jobs, n, err
}

// lastBeats reads the last beat of every job.
func (p *Projector) lastBeats(ctx context.Context) (map[string]events.Beat, error) {
	out := map[string]events.Beat{}
	err := orderedPass(ctx, p.js, p.hb.Stream(), jetstream.DeliverLastPerSubjectPolicy, func(m jetstream.Msg, _ uint64) {
		var b events.Beat
		if json.Unmarshal(m.Data(), &b) == nil {
			out[b.JobID] = b
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
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 {
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
	for {
		m, err := it.Next()
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		fn(m, meta.Sequence.Stream)
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			return nil
		}
	}
}
