package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
)

// BucketDefault is the KV bucket holding one view per job.
const BucketDefault = "jj_jobs"

// Reader reads job views.
type Reader struct {
	kv jetstream.KeyValue
}

// NewReader binds to the views bucket.
func NewReader(ctx context.Context, js jetstream.JetStream) (*Reader, error) {
	kv, err := js.KeyValue(ctx, BucketDefault)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoViews
	}
	if err != nil {
		return nil, fmt.Errorf("bind job views: %w", err)
	}
	return &Reader{kv: kv}, nil
}

// Get returns a job's view.
func (r *Reader) Get(ctx context.Context, id string) (View, error) {
	if err := events.ValidateJobID(id); err != nil {
		return View{}, err
	}
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return View{}, fmt.Errorf("get job %s: %w", id, events.ErrNotFound)
	}
	if err != nil {
		return View{}, fmt.Errorf("get job %s: %w", id, err)
	}
	var v View
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return View{}, fmt.Errorf("get job %s: decode view: %w", id, err)
	}
	return v, nil
}

// Page is one page of List.
type Page struct {
	Views []View
	// Next continues the listing (Filter.After); empty on the last page.
	Next string
}

// List returns the matching views in job ID order (submit order: IDs are
// time-ordered UUIDs). It reads the bucket's current values in one stream
// pass, never the event log.
func (r *Reader) List(ctx context.Context, f Filter) (Page, error) {
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return Page{}, fmt.Errorf("list jobs: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var views []View
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return Page{}, fmt.Errorf("list jobs: %w", ctx.Err())
		case e = <-w.Updates():
		}
		if e == nil { // all current values delivered
			break
		}
		if f.After != "" && e.Key() <= f.After {
			continue
		}
		var v View
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			continue
		}
		if f.Matches(v) {
			views = append(views, v)
		}
	}
	sort.Slice(views, func(i, j int) bool { return views[i].ID < views[j].ID })
	var next string
	if f.Limit > 0 && len(views) > f.Limit {
		views = views[:f.Limit]
		next = views[len(views)-1].ID
	}
	return Page{Views: views, Next: next}, nil
}

// Watch sends the current view of every matching job, then every change, in
// order, until ctx ends; then it closes the channel.
func (r *Reader) Watch(ctx context.Context, f Filter) (<-chan View, error) {
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch jobs: %w", err)
	}
	out := make(chan View, 256)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				var v View
				if err := json.Unmarshal(e.Value(), &v); err != nil || !f.Matches(v) {
					continue
				}
				select {
				case out <- v:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// Forget deletes a job's view (when the job is purged).
func (r *Reader) Forget(ctx context.Context, id string) error {
	if err := r.kv.Purge(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget view of job %s: %w", id, err)
	}
	return nil
}
