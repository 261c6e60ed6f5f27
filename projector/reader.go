package projector

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Reader reads job views. It needs no projector in its process: CLI
// commands use it against a server's bucket. It is safe for concurrent use.
type Reader struct {
	bucket string
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	stream jetstream.Stream
	nc     *nats.Conn
}

// watchProbeEvery: a watch that heard nothing for this long asks whether
// the bucket moved on without it (see Watch).
const watchProbeEvery = time.Second

// watchRetryWait: a watch made again after a reconnect that the server
// refused is tried again after this.
const watchRetryWait = 250 * time.Millisecond

// ReaderOption configures a Reader.
type ReaderOption func(*Reader)

// WithBucket reads another bucket than BucketDefault (a projector's
// Config.Bucket): 1-128 letters, digits, '-' or '_', as Config takes
// (NewReader refuses another with ErrInvalidConfig); empty is
// BucketDefault.
func WithBucket(bucket string) ReaderOption {
	return func(r *Reader) { r.bucket = cmp.Or(bucket, BucketDefault) }
}

// NewReader binds to the views bucket; ErrNoViews when no server has
// created it.
func NewReader(ctx context.Context, js jetstream.JetStream, opts ...ReaderOption) (*Reader, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	r := &Reader{bucket: BucketDefault, js: js}
	for _, o := range opts {
		o(r)
	}
	// Checked here, as Config checks it: NATS would refuse a name with a
	// dot or a wildcard only as "invalid bucket name", naming neither the
	// name nor what it takes.
	if err := statemachine.ValidateToken("bucket", r.bucket); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	// Each bind is a request to the bucket's stream leader, which a NATS
	// cluster that lost a node may be electing: asked again, as a
	// listing's requests are, so that a command does not fail on a
	// cluster that still has its quorum.
	err := provision.UntilAnswered(ctx, provision.ElectionWaitDefault, listTry, func(ctx context.Context) (err error) {
		if r.kv, err = js.KeyValue(ctx, r.bucket); err != nil {
			return err
		}
		r.stream, err = js.Stream(ctx, "KV_"+r.bucket)
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, ErrNoViews
	case provision.NoJetStream(err):
		return nil, fmt.Errorf("%w: %s %v", ErrNoViews, provision.NoJetStreamSays, err)
	case err != nil && ctx.Err() == nil && provision.Transient(err):
		return nil, fmt.Errorf("bind job views: NATS did not answer within %s (is the server up?): %w", provision.ElectionWaitDefault, err)
	case err != nil:
		return nil, fmt.Errorf("bind job views: %w", err)
	}
	r.nc = js.Conn()
	return r, nil
}

// openWatch opens a watch of the views that lasts until ctx ends or it is
// stopped. Its consumer is made by the NATS cluster's meta leader, which a
// node's death takes away for seconds while the bucket's own leader still
// answers, so it is asked again as listAsk asks, each try bounded by
// listTry. A try cannot be given a deadline of its own: nats.go ends a
// watch when the ctx it was made with ends.
func (r *Reader) openWatch(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	var w jetstream.KeyWatcher
	err := provision.UntilAnswered(ctx, provision.ElectionWaitDefault, listTry, func(try context.Context) (err error) {
		w, err = r.watchTry(ctx, try, opts...)
		return err
	})
	if err != nil && ctx.Err() == nil && provision.Transient(err) {
		return nil, fmt.Errorf("NATS did not answer within %s (is the server up?): %w", provision.ElectionWaitDefault, err)
	}
	return w, err
}

// watchTry makes a watch that lasts until ctx ends, giving up when try ends
// first. The watch cannot be made with try: nats.go ends a watch when the
// ctx it was made with ends.
func (r *Reader) watchTry(ctx, try context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(try, cancel)
	w, err := r.kv.WatchAll(wctx, opts...)
	if !stop() {
		// The try ran out first: what it made ended with wctx.
		if err == nil {
			stopWatch(w)
		}
		return nil, try.Err()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	// Ends with ctx, as the watch does.
	context.AfterFunc(ctx, cancel)
	return w, nil
}

// rewatchTries bounds each try of a running watch to make itself again: it
// starts at rewatchTryFirst and doubles, to listTry, after each that ran
// out, so that a cluster too busy to answer within a second is still
// answered. Unbounded, a try waited out nats.go's 5 s for a request that
// a lost meta leader would never answer (about 5 s of a watch deaf in the
// failure soak of 2026-12-03), while the next try, sent once another was
// elected, would have been answered at once.
type rewatchTries struct{ d time.Duration }

const rewatchTryFirst = watchProbeEvery

// watch makes the watch again, within the current bound.
func (t *rewatchTries) watch(ctx context.Context, r *Reader, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	if t.d == 0 {
		t.d = rewatchTryFirst
	}
	try, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	w, err := r.watchTry(ctx, try, opts...)
	switch {
	case err == nil:
		t.d = rewatchTryFirst
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		t.d = min(2*t.d, listTry)
	}
	return w, err
}

// Get returns a job's view: events.ErrInvalidJobID (which matches
// statemachine.ErrInvalid too) for an ID that cannot name a job,
// events.ErrNotFound when the job has no view, ErrNotAView when what is
// stored under its key is not one.
func (r *Reader) Get(ctx context.Context, id string) (View, error) {
	if err := statemachine.ValidateJobID(id); err != nil {
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
		// Not JSON is not a view either: List counts it as Unreadable,
		// and a caller checks ErrNotAView, not the decoder's error.
		return View{}, fmt.Errorf("get job %s: %w (%v)", id, ErrNotAView, err)
	}
	if !isView(id, v) {
		return View{}, fmt.Errorf("get job %s: %w", id, ErrNotAView)
	}
	return v, nil
}

// Page is one page of List.
type Page struct {
	Views []View
	// Next continues the listing (Filter.After); empty on the last page.
	Next string
	// Unreadable counts stored values that are not a job's view (written
	// into the bucket by something else), skipped; the projector writes
	// each again on its job's next event, and Rebuild at once.
	Unreadable int
}

// List returns the matching views in job ID order, at most f.Limit of them;
// that is submit order for jobs without a key (their IDs are time-ordered
// UUIDs), while a key's ID is derived from the key. It reads the bucket's
// current values in one pass over its stream, never the event log, and
// then the views written meanwhile, in up to 8 more rounds: a job whose
// view changes while it reads is listed once, as one of the views it had
// during the listing. A key is not an index, so each page costs a pass:
// for everything at once, use no limit.
func (r *Reader) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.Validate(); err != nil {
		return Page{}, err
	}
	end, err := r.lastRevision(ctx)
	if err != nil {
		return Page{}, err
	}
	// Delete and purge markers are delivered too, so that the listing knows
	// how far it got (see nothingLeft); they list nothing. The watch's
	// subscription waits for its ctx to end: one ended with the listing
	// lets it go when a long-lived caller (a server's passes) lists again
	// and again.
	ctx, endList := context.WithCancel(ctx)
	defer endList()
	w, err := r.openWatch(ctx)
	if err != nil {
		return Page{}, fmt.Errorf("list jobs: %w", err)
	}
	// A listing that ends before its watch delivered everything (its ctx
	// ended, an error, the rounds ran out) leaves the watch blocked on its
	// full buffer: stopped and drained, it lets go of its goroutine.
	defer stopWatch(w)
	// Decoding the views is most of the cost of a listing: it is spread
	// over every core while the stream delivers.
	quick := f.prefilter()
	values := make(chan listedValue, 1024)
	shards := runtime.GOMAXPROCS(0)
	found := make([][]listedView, shards)
	unreadable := make([]int, shards)
	var wg sync.WaitGroup
	for i := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range values {
				if !quick(l.data) {
					continue
				}
				var v View
				if err := json.Unmarshal(l.data, &v); err != nil || !isView(l.key, v) {
					unreadable[i]++ // not a view: the projector folds its job again on its next event
					continue
				}
				if f.Matches(v) {
					found[i] = append(found[i], listedView{key: l.key, rev: l.rev, view: v})
				}
			}
		}()
	}
	// A view rewritten while the listing reads loses the revision the
	// watcher was to deliver, and is delivered at its new one, past end: so
	// the listing reads on, in rounds, each to the revision the bucket had
	// reached when the round before ended, until a round ends with nothing
	// written during it (or listRoundsMax rounds: a view would have to be
	// rewritten in each before it was read). A job delivered twice counts
	// at its last revision.
	later := map[string]uint64{}
	err = func() error {
		defer close(values)
		var seen uint64 // the last revision delivered
		until, rounds := end, 0
		// roundEnded reports whether the listing is done, or moves until.
		roundEnded := func() (bool, error) {
			rounds++
			if rounds > listRoundsMax {
				return true, nil
			}
			last, err := r.lastRevision(ctx)
			if err != nil {
				return false, err
			}
			if last <= seen {
				return true, nil
			}
			// What was written since may be gone already (views forgotten
			// leave no marker): then there is nothing to wait for.
			if gone, err := r.nothingLeft(ctx, seen, last); err != nil || gone {
				return gone, err
			}
			until = last
			return false, nil
		}
		// stalled checks a watcher that has delivered nothing for a while,
		// or says it delivered what it counted: once the views it counted
		// on are gone, it delivers nothing more, and the round is over.
		stalled := func() (bool, error) {
			if gone, err := r.nothingLeft(ctx, seen, until); err != nil || !gone {
				return false, err
			}
			return roundEnded()
		}
		idle := time.NewTicker(listIdleCheck)
		defer idle.Stop()
		for {
			var e jetstream.KeyValueEntry
			select {
			case <-ctx.Done():
				return fmt.Errorf("list jobs: %w", ctx.Err())
			case e = <-w.Updates():
			case <-idle.C:
				if done, err := stalled(); err != nil || done {
					return err
				}
				continue
			}
			if e == nil {
				// The watcher's count of what to deliver is no end: a
				// rewritten view comes after it.
				if end == 0 {
					return nil
				}
				if done, err := stalled(); err != nil || done {
					return err
				}
				continue
			}
			seen = e.Revision()
			if seen > end {
				later[e.Key()] = seen
			}
			if e.Operation() == jetstream.KeyValuePut && (f.After == "" || e.Key() > f.After) {
				values <- listedValue{key: e.Key(), rev: seen, data: e.Value()}
			}
			if seen >= until {
				if done, err := roundEnded(); err != nil || done {
					return err
				}
			}
		}
	}()
	wg.Wait()
	if err != nil {
		return Page{}, err
	}
	total := 0
	for _, part := range found {
		total += len(part)
	}
	views := make([]View, 0, total)
	bad := 0
	for i, part := range found {
		for _, l := range part {
			if last, ok := later[l.key]; ok && last > l.rev {
				continue // listed at its later revision, or removed since
			}
			views = append(views, l.view)
		}
		bad += unreadable[i]
	}
	sort.Slice(views, func(i, j int) bool { return views[i].ID < views[j].ID })
	var next string
	if f.Limit > 0 && len(views) > f.Limit {
		views = views[:f.Limit]
		next = views[len(views)-1].ID
	}
	return Page{Views: views, Next: next, Unreadable: bad}, nil
}

// listIdleCheck: a listing that has received nothing for this long checks
// whether anything it should list is left.
const listIdleCheck = 250 * time.Millisecond

// listRoundsMax bounds the rounds a listing reads views written after it
// began (8 in List's doc).
const listRoundsMax = 8

// listedValue is a value a listing read, at the revision it was read at;
// listedView, its view.
type (
	listedValue struct {
		key  string
		rev  uint64
		data []byte
	}
	listedView struct {
		key  string
		rev  uint64
		view View
	}
)

// nothingLeft reports whether the bucket holds no message (a view or a
// marker) after revision seen up to end, the last of a listing's round.
func (r *Reader) nothingLeft(ctx context.Context, seen, end uint64) (bool, error) {
	var m *jetstream.RawStreamMsg
	err := listAsk(ctx, func(ctx context.Context) (err error) {
		m, err = r.stream.GetMsg(ctx, seen+1, jetstream.WithGetMsgSubject("$KV."+r.bucket+".>"))
		return err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return m.Sequence > end, nil
}

// lastRevision is the bucket's last revision, views and markers alike.
func (r *Reader) lastRevision(ctx context.Context) (uint64, error) {
	var info *jetstream.StreamInfo
	err := listAsk(ctx, func(ctx context.Context) (err error) {
		info, err = r.stream.Info(ctx)
		return err
	})
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// listTry bounds each request a listing makes: the answer to one sent just
// before its NATS server restarted never comes, and a caller's deadline of
// a minute was all spent waiting for it, with the server back in two
// seconds. The listing asks again while the caller's ctx lasts, for at
// most provision.ElectionWaitDefault.
const listTry = 5 * time.Second

func listAsk(ctx context.Context, fn func(context.Context) error) error {
	err := provision.UntilAnswered(ctx, provision.ElectionWaitDefault, listTry, fn)
	switch {
	case err == nil, errors.Is(err, jetstream.ErrMsgNotFound):
		return err
	case ctx.Err() == nil && provision.Transient(err):
		return fmt.Errorf("list jobs: NATS did not answer within %s (is the server up?): %w", provision.ElectionWaitDefault, err)
	}
	return fmt.Errorf("list jobs: %w", err)
}

// watchSeenLimit bounds how many jobs a watch remembers the last sent view
// of; past it, it forgets them all: a view rewritten unchanged may be sent
// once more, and a job forgotten that stops matching is not sent.
const watchSeenLimit = 100_000

// Watch sends the current view of every matching job, then every change of
// a matching job, in the order the views were written, until ctx ends or the
// watch cannot go on (the connection closed; ctx is then still live); then
// it closes the channel. A job that stops matching (for example a filter on
// pending and the job starts) is sent once more, as it now is, which the
// filter does not match, and not again unless it matches again. Events projected
// together make one change, and a consumer that falls behind may miss
// intermediate versions of a view, never the last. A view written again
// unchanged (a rebuild) is not sent again; a heartbeat of a running job is
// a change (its HeartbeatAt and UpdatedAt move) at the same Version. After
// a reconnect the watch is made again, and what changed meanwhile is sent;
// so it is, within about 3 s, after the loss of the cluster node holding
// the watch's consumer while the watch's own connection lives.
// A watch whose own connection is to a node that froze (SIGSTOP, a
// partition that drops packets) hears nothing until that connection gives
// the node up: its probe, and any watch made again, go through the same
// connection, and only a reconnect to another node helps, after which the
// watch catches up. nats.go gives a connection up once MaxPingsOutstanding
// (2) pings, sent every PingInterval (2 min by default), go unanswered: with
// the defaults, which jetjob's own connections keep, minutes, or the node's
// thaw. A caller that needs sooner gives its connection a shorter
// nats.PingInterval: with a second, the watch heard about 2 s after a
// write made during the freeze (TestAWatchOnAFrozenNodeHearsAgainOnceItsConnectionGivesItUp).
// A job purged is not sent: Forget leaves no delete marker, and the job's
// last view sent is its finished one. The filter's Limit and After are not
// used: they page a List, and a watch, which has no pages, sends every
// matching job (a limit on the views first sent would leave a dashboard
// with jobs it never hears of, their changes sent all the same).
func (r *Reader) Watch(ctx context.Context, f Filter) (<-chan View, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	// Each of the watch's subscriptions waits for its ctx to end: one
	// ended with the watch lets them go also when the watch ends first.
	ctx, endWatch := context.WithCancel(ctx)
	w, err := r.openWatch(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		endWatch()
		return nil, fmt.Errorf("watch jobs: %w", err)
	}
	// A server restart loses the watch's consumer, which the watch would
	// notice only once it missed its heartbeats, many seconds later: watch
	// again as soon as the connection is back instead.
	var reconnected chan nats.Status
	// A bucket deleted and made again (by a server that found it gone)
	// starts its revisions over: the watch's consumer, made again on it
	// after its heartbeats fail, would skip every view up to the old
	// revision. Watch the new bucket from its start instead.
	remade := make(chan struct{}, 1)
	var remadeSub *nats.Subscription
	if r.nc != nil {
		reconnected = r.nc.StatusChanged(nats.CONNECTED)
		remadeSub, _ = r.nc.Subscribe(streamCreatedAdvisory+"KV_"+r.bucket, func(*nats.Msg) {
			select {
			case remade <- struct{}{}:
			default:
			}
		})
	}
	// A watch whose consumer's node dies while its own connection lives
	// is told by nothing: no reconnect, no stream made, and nats.go's
	// ordered consumer notices only once its heartbeats are missed, about
	// 20 s later. So while it hears nothing, the watch asks the bucket's
	// last revision every watchProbeEvery; a bucket ahead of what it heard
	// for a whole interval is watched again from the revision after the
	// last one heard. A busy watch hears, and never asks. Nor does a
	// watch on a NATS that is no cluster (the embedded server): there its
	// consumer and its connection end together, which the watch hears as
	// a reconnect, and its idle dashboards put no request a second on it.
	probe := time.NewTicker(watchProbeEvery)
	var probed <-chan time.Time
	if info := r.stream.CachedInfo(); info != nil && info.Cluster != nil && info.Cluster.Name != "" {
		probed = probe.C
	}
	var (
		heard      uint64 // the last revision heard, view or not
		heardSince bool   // something was heard since the last probe
		ahead      uint64 // the bucket's last revision, past heard at the last probe
	)
	out := make(chan View, 256)
	type sent struct {
		version uint64
		beat    time.Time
	}
	seen := map[string]sent{}
	go func() {
		defer close(out)
		defer endWatch()
		defer probe.Stop()
		defer func() { stopWatch(w) }()
		if reconnected != nil {
			defer r.nc.RemoveStatusListener(reconnected)
		}
		if remadeSub != nil {
			defer func() { _ = remadeSub.Unsubscribe() }()
		}
		var again <-chan time.Time
		var tries rewatchTries
		for {
			select {
			case <-ctx.Done():
				return
			case <-reconnected:
				again = time.After(0)
			case <-remade:
				again = time.After(0)
			case <-again:
				// From the current values: what was sent already is not
				// sent again, what changed meanwhile is.
				nw, err := tries.watch(ctx, r, jetstream.IgnoreDeletes())
				if err != nil {
					again = time.After(watchRetryWait) // its JetStream may not be up yet
					continue
				}
				again = nil
				stopWatch(w)
				w = nw
				// The revisions start over in a bucket made again.
				heard, ahead = 0, 0
			case <-probed:
				switch {
				case heardSince:
					heardSince, ahead = false, 0
				case ahead > heard:
					// What was written before the last probe would
					// have been heard by now: the consumer is gone.
					nw, err := tries.watch(ctx, r, jetstream.IgnoreDeletes(), jetstream.ResumeFromRevision(heard+1))
					if err != nil {
						continue // asked again at the next probe
					}
					stopWatch(w)
					w = nw
					// A delete marker, which the watch does not
					// deliver, is not waited for again.
					heard, ahead = ahead, 0
				default:
					pctx, cancel := context.WithTimeout(ctx, watchProbeEvery)
					info, err := r.stream.Info(pctx)
					cancel()
					if err == nil && info.State.LastSeq > heard {
						ahead = info.State.LastSeq
					}
				}
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue // end of the current values
				}
				heard, heardSince = max(heard, e.Revision()), true
				var v View
				if err := json.Unmarshal(e.Value(), &v); err != nil || !isView(e.Key(), v) {
					continue
				}
				if !f.Matches(v) {
					// Sent once more as it now is, so that a dashboard
					// of the matching jobs knows to drop it.
					if _, sentBefore := seen[v.ID]; !sentBefore {
						continue
					}
					delete(seen, v.ID)
				} else {
					now := sent{version: v.Version}
					if v.HeartbeatAt != nil {
						now.beat = *v.HeartbeatAt
					}
					if last, ok := seen[v.ID]; ok && last.version >= now.version && !now.beat.After(last.beat) {
						continue
					}
					if len(seen) >= watchSeenLimit {
						clear(seen)
					}
					seen[v.ID] = now
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

// CaughtUp is the package's CaughtUp on the reader's connection.
func (r *Reader) CaughtUp(ctx context.Context, logStream string) (bool, error) {
	return CaughtUp(ctx, r.js, logStream)
}

// streamCreatedAdvisory is where JetStream says it made a stream (name
// appended).
const streamCreatedAdvisory = "$JS.EVENT.ADVISORY.STREAM.CREATED."

// stopWatch stops a KV watch that nobody reads any more. Its delivery
// blocks once its buffer is full, and would hold its subscription open for
// good: what is left is drained until the watch closes.
func stopWatch(w jetstream.KeyWatcher) {
	go func() {
		_ = w.Stop()
		for range w.Updates() {
		}
	}()
}

// Mark is the sequence of the last view written so far, for Forget.
func (r *Reader) Mark(ctx context.Context) (uint64, error) {
	info, err := r.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("mark views: %w", err)
	}
	return info.State.LastSeq, nil
}

// Forget deletes a job's view written up to mark (when the job is purged):
// a job submitted again under the same key has the same ID, and its view,
// written after the mark, stays. The key is purged from the bucket's stream
// without leaving a delete marker, so purged jobs do not slow List down.
func (r *Reader) Forget(ctx context.Context, id string, mark uint64) error {
	if err := statemachine.ValidateJobID(id); err != nil {
		return err
	}
	if err := r.stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+r.bucket+"."+id), jetstream.WithPurgeSequence(mark+1)); err != nil {
		return fmt.Errorf("forget view of job %s: %w", id, err)
	}
	return nil
}

// prefilter returns a test that rejects, without decoding, most stored
// views the filter does not match. Views are compact JSON written by
// MarshalJSON (or encoding/json, which writes the same bytes), so a view in
// state s contains "state":"s", and likewise for its type, tags and meta;
// the converse need not hold (a meta key named "state"), so a view that
// passes is decoded and matched for real.
func (f Filter) prefilter() func([]byte) bool {
	var oneOf [][]byte // at least one of these
	var allOf [][]byte // each of these
	for _, st := range f.States {
		oneOf = append(oneOf, field("state", string(st)))
	}
	if f.Type != "" {
		allOf = append(allOf, field("type", f.Type))
	}
	for k, v := range f.Tags {
		allOf = append(allOf, field(k, v))
	}
	for k, v := range f.Meta {
		allOf = append(allOf, field(k, v))
	}
	return func(data []byte) bool {
		for _, want := range allOf {
			if !bytes.Contains(data, want) {
				return false
			}
		}
		if len(oneOf) == 0 {
			return true
		}
		for _, want := range oneOf {
			if bytes.Contains(data, want) {
				return true
			}
		}
		return false
	}
}

// field is "k":"v" as a view encodes it.
func field(k, v string) []byte {
	b := appendString(nil, k)
	b = append(b, ':')
	return appendString(b, v)
}

// CaughtUp waits until the projector has projected every event the log
// (stream logStream) held when it was called: its consumer (DurableDefault)
// has acknowledged them all. A decision taken on the views after it (a bulk
// cancel, a purge) sees every job submitted or finished before. It reports
// false when ctx ends first, and an error when the projector's consumer
// cannot be read: events.ErrNoLog where there is no event log (jetjob was
// never set up on this NATS, or it has no JetStream), ErrNoProjector where
// no projector ever read it.
func CaughtUp(ctx context.Context, js jetstream.JetStream, logStream string) (bool, error) {
	if js == nil {
		return false, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	st, err := js.Stream(ctx, logStream)
	switch {
	case provision.NoJetStream(err):
		return false, fmt.Errorf("wait for the views: %w: %s %w", events.ErrNoLog, provision.NoJetStreamSays, err)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// JetStream's error stays in the chain, for a caller that looked
		// for it before.
		return false, fmt.Errorf("wait for the views: %w: stream %s is missing (%w)", events.ErrNoLog, logStream, err)
	case err != nil:
		return false, fmt.Errorf("wait for the views: %w", err)
	}
	through := st.CachedInfo().State.LastSeq
	cons, err := js.Consumer(ctx, logStream, DurableDefault)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return false, fmt.Errorf("wait for the views: %w: stream %s has no consumer %s (%w)", ErrNoProjector, logStream, DurableDefault, err)
	case err != nil:
		return false, fmt.Errorf("wait for the views: %w", err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := cons.Info(ctx)
		if ctx.Err() != nil {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("wait for the views: %w", err)
		}
		if info.AckFloor.Stream >= through {
			return true, nil
		}
		// The floor stops short of a purged tail. Nothing pending and
		// nothing in hand then says the same, unless the consumer has not
		// been told of the last appends yet (the server acknowledges an
		// append before it tells the consumers): the log says which.
		if info.NumPending == 0 && info.NumAckPending == 0 {
			m, err := st.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(">"))
			if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && m.Sequence > through {
				return true, nil
			}
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
		}
	}
}
