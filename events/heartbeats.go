package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/provision"
)

// Heartbeat stream and bucket names, stable across versions.
const (
	HeartbeatStreamDefault        = "JJ_HEARTBEATS"
	HeartbeatSubjectPrefixDefault = "jj.hb."
	// SettingsBucketDefault holds the hang-after that beats are judged by.
	SettingsBucketDefault = "jj_settings"
	hangAfterKey          = "hang_after"
)

// HangAfterDefault is how long a running attempt may go without a beat
// before the hang detector fails it, unless the server says otherwise.
const HangAfterDefault = 5 * time.Minute

// Beat is a running attempt's latest sign of life. Only the last beat of each
// job is kept, so heartbeats never grow a job's history.
type Beat struct {
	JobID    string    `json:"job"`
	Lease    uint64    `json:"lease"`
	WorkerID string    `json:"worker_id"`
	At       time.Time `json:"at"`
	// StoredAt is when the server stored the beat, by its clock; set by
	// the reads, never sent.
	StoredAt time.Time `json:"-"`
}

// Sent is the time a silence is counted from: the worker's clock, kept
// within what the server's allows. A beat is sent before it is stored, so
// a time past its storing is the worker's clock running ahead: taken as it
// was, a day ahead would have a dead attempt failed a day late, so it is
// taken at most BeatAheadLimit past. A time before its storing may be the
// worker's clock lagging, and judged by it a live attempt looks silent: the
// storing counts then.
func (b Beat) Sent() time.Time {
	if b.StoredAt.IsZero() {
		return b.At // not read from the server
	}
	if b.At.After(b.StoredAt.Add(BeatAheadLimit)) {
		return b.StoredAt.Add(BeatAheadLimit)
	}
	if b.StoredAt.After(b.At) {
		return b.StoredAt
	}
	return b.At
}

// BeatAheadLimit is how far past its storing a beat's own time counts: how
// late a worker whose clock runs ahead can have its hung attempts found.
const BeatAheadLimit = time.Minute

// Heartbeats records and reads the last beat of each running job.
type Heartbeats struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	prefix   string
	settings jetstream.KeyValue
}

// HeartbeatStreamConfig keeps one beat per job, flushed asynchronously: a
// beat lost in a crash only makes a job look idle for one interval longer.
func HeartbeatStreamConfig(stream, prefix string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              stream,
		Description:       "jetjob heartbeats: the last sign of life of each running job",
		Subjects:          []string{prefix + "*"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		AllowDirect:       true,
		AllowRollup:       true,
		PersistMode:       jetstream.AsyncPersistMode,
		Replicas:          1,
	}
}

// OpenHeartbeats provisions the heartbeat stream and the settings bucket.
func OpenHeartbeats(ctx context.Context, js jetstream.JetStream) (*Heartbeats, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	s, err := provision.Stream(ctx, js, HeartbeatStreamConfig(HeartbeatStreamDefault, HeartbeatSubjectPrefixDefault))
	if err != nil {
		return nil, err
	}
	settings, err := provision.KeyValue(ctx, js, provision.KeyValueConfig{Bucket: SettingsBucketDefault})
	if err != nil {
		return nil, err
	}
	return &Heartbeats{js: js, stream: s, prefix: HeartbeatSubjectPrefixDefault, settings: settings}, nil
}

// PublishHangAfter records the hang-after that the detector acting now
// judges beats by, and returns the one it replaced (0 if none). Workers read
// it to beat often enough, and to stop a handler whose beats no longer reach
// the server before the detector fails its attempt and a retry runs beside
// it. A hangAfter not above 0 is refused with ErrInvalidConfig.
func (h *Heartbeats) PublishHangAfter(ctx context.Context, hangAfter time.Duration) (previous time.Duration, err error) {
	if hangAfter <= 0 {
		return 0, fmt.Errorf("%w: publish hang-after %s: expected a duration above 0", ErrInvalidConfig, hangAfter)
	}
	e, err := h.settings.Get(ctx, hangAfterKey)
	switch {
	case err == nil:
		previous, _ = time.ParseDuration(string(e.Value()))
		if previous == hangAfter {
			return previous, nil
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, fmt.Errorf("read hang-after: %w", err)
	}
	if _, err := h.settings.PutString(ctx, hangAfterKey, hangAfter.String()); err != nil {
		return previous, fmt.Errorf("publish hang-after: %w", err)
	}
	return max(previous, 0), nil
}

// PublishHangAfterIfNone publishes hangAfter unless a hang-after is
// published already: a server starting publishes its own at once, so that
// workers starting with it pace their beats by it, while one that another
// server's detector leads leaves that one's in place.
func (h *Heartbeats) PublishHangAfterIfNone(ctx context.Context, hangAfter time.Duration) error {
	if hangAfter <= 0 {
		return fmt.Errorf("%w: publish hang-after %s: expected a duration above 0", ErrInvalidConfig, hangAfter)
	}
	_, err := h.settings.Create(ctx, hangAfterKey, []byte(hangAfter.String()))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("publish hang-after: %w", err)
	}
	return nil
}

// FollowHangAfter calls set with the published hang-after, if one is, before
// it returns, then with every change until stop is called; ctx bounds only
// the first read. A value that is not a positive duration is skipped.
func (h *Heartbeats) FollowHangAfter(ctx context.Context, set func(time.Duration)) (stop func(), err error) {
	// The watch ends with ctx, and callers pass the ctx of their start,
	// often one with a timeout: it is given one that stop ends instead.
	watchCtx, endWatch := context.WithCancel(context.WithoutCancel(ctx))
	// Until the watch is under way, ctx ends it too: its consumer's
	// making, which a NATS refusing the user never answers, waited out
	// nats.go's 5 s whatever ctx said.
	detach := context.AfterFunc(ctx, endWatch)
	w, err := h.settings.Watch(watchCtx, hangAfterKey, jetstream.IgnoreDeletes())
	if err != nil {
		detach()
		endWatch()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("follow hang-after: %w", err)
	}
	// Ending watchCtx ends the watch: nats.go then unsubscribes at once and
	// deletes its consumer in the background. w.Stop would wait for that
	// delete's answer, up to nats.go's 5 s on a stalled connection, and
	// stop has no ctx to bound it (a pool's Stop overran its ctx by that).
	var stopped atomic.Bool
	stop = func() {
		stopped.Store(true)
		endWatch()
	}
	apply := func(e jetstream.KeyValueEntry) {
		if stopped.Load() {
			return
		}
		if d, err := time.ParseDuration(string(e.Value())); err == nil && d > 0 {
			set(d)
		}
	}
	for initial := true; initial; {
		select {
		case <-ctx.Done():
			stop()
			return nil, fmt.Errorf("follow hang-after: %w", ctx.Err())
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				stop()
				return nil, fmt.Errorf("follow hang-after: the watch ended")
			case e == nil:
				initial = false
			default:
				apply(e)
			}
		}
	}
	if !detach() {
		// ctx ended meanwhile, and the watch with it.
		stop()
		return nil, fmt.Errorf("follow hang-after: %w", ctx.Err())
	}
	go func() {
		for e := range w.Updates() {
			if e != nil {
				apply(e)
			}
		}
	}()
	return stop, nil
}

// Stream is the heartbeat stream's name.
func (h *Heartbeats) Stream() string { return HeartbeatStreamDefault }

// Subject is the subject of a job's beats.
func (h *Heartbeats) Subject(jobID string) string { return h.prefix + jobID }

// JobIDFromSubject returns the job a beat subject belongs to.
func (h *Heartbeats) JobIDFromSubject(subject string) (string, bool) {
	if len(subject) <= len(h.prefix) || subject[:len(h.prefix)] != h.prefix {
		return "", false
	}
	return subject[len(h.prefix):], true
}

// Record stores a beat, whatever beat came before it.
func (h *Heartbeats) Record(ctx context.Context, b Beat) error {
	_, err := h.record(ctx, b, nil)
	return err
}

// RecordAfter stores a beat of an attempt whose previous beat was stored at
// sequence after (0 for its first), and returns the beat's sequence. Only
// the last beat of a job is kept, so a beat that a worker cut off from the
// server sent late (held in its client's reconnect buffer, or by a stalled
// network) must not replace the beat of the attempt that now runs the job:
// each beat expects the attempt's previous one to be the last (the first
// expects none), and one that finds a later attempt's beat there is refused
// with ErrBeatSuperseded. One that finds its own attempt's later beat (an
// ack lost), an earlier attempt's, or none (purged) is stored after it.
func (h *Heartbeats) RecordAfter(ctx context.Context, b Beat, after uint64) (uint64, error) {
	return h.record(ctx, b, &after)
}

func (h *Heartbeats) record(ctx context.Context, b Beat, after *uint64) (uint64, error) {
	if err := ValidateJobID(b.JobID); err != nil {
		return 0, err
	}
	data, err := json.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("encode beat: %w", err)
	}
	for tries := 0; ; tries++ {
		var opts []jetstream.PublishOpt
		if after != nil {
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(*after))
		}
		ack, err := h.js.Publish(ctx, h.Subject(b.JobID), data, opts...)
		if err == nil {
			return ack.Sequence, nil
		}
		if !isWrongLastSeq(err) || tries == 2 {
			return 0, fmt.Errorf("record beat of job %s: %w", b.JobID, err)
		}
		last, seq, ok, lerr := h.last(ctx, b.JobID)
		switch {
		case lerr != nil:
			return 0, fmt.Errorf("record beat of job %s: %w", b.JobID, lerr)
		case ok && last.Lease > b.Lease:
			return 0, fmt.Errorf("record beat of job %s, lease %d: %w (lease %d)", b.JobID, b.Lease, ErrBeatSuperseded, last.Lease)
		}
		after = &seq
	}
}

// Last returns a job's last beat, and false when it has none (a message on
// its subject that is not a beat counts as none).
func (h *Heartbeats) Last(ctx context.Context, jobID string) (Beat, bool, error) {
	if err := ValidateJobID(jobID); err != nil {
		return Beat{}, false, err
	}
	b, _, ok, err := h.last(ctx, jobID)
	return b, ok, err
}

func (h *Heartbeats) last(ctx context.Context, jobID string) (b Beat, seq uint64, ok bool, err error) {
	m, err := h.stream.GetLastMsgForSubject(ctx, h.Subject(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Beat{}, 0, false, nil
	}
	if err != nil {
		return Beat{}, 0, false, fmt.Errorf("last beat of job %s: %w", jobID, err)
	}
	if err := json.Unmarshal(m.Data, &b); err != nil || b.JobID != jobID {
		// Not written by a worker of this job: no sign of life, and no
		// reason to refuse the next beat.
		return Beat{}, m.Sequence, false, nil
	}
	b.StoredAt = m.Time
	return b, m.Sequence, true, nil
}

// Mark is the sequence of the last beat stored so far, for Forget.
func (h *Heartbeats) Mark(ctx context.Context) (uint64, error) {
	info, err := h.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("mark beats: %w", err)
	}
	return info.State.LastSeq, nil
}

// Forget drops a job's beats stored up to mark (when the job is purged):
// a job submitted again under the same key has the same ID, and its beats,
// stored after the mark, stay.
func (h *Heartbeats) Forget(ctx context.Context, jobID string, mark uint64) error {
	// The ID goes into a purge's subject filter, where a wildcard would
	// name every job's beats.
	if err := ValidateJobID(jobID); err != nil {
		return err
	}
	if err := h.stream.Purge(ctx, jetstream.WithPurgeSubject(h.Subject(jobID)), jetstream.WithPurgeSequence(mark+1)); err != nil {
		return fmt.Errorf("forget beats of job %s: %w", jobID, err)
	}
	return nil
}
