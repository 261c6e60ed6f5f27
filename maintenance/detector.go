package maintenance

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Detector defaults.
const (
	HangAfterDefault   = events.HangAfterDefault
	CancelGraceDefault = time.Minute
	MaxPerPassDefault  = 100
	// HangAfterMin is the shortest hang-after, the CLI's too: workers beat
	// six times per hang-after but not more often than every 10 ms, and stop
	// a job out of contact for half of it, so that below a second one beat
	// late on a loaded network fails a running job as hung, and at a
	// millisecond every running job is.
	HangAfterMin = time.Second
	// ErrorCodeHung is the error code of an attempt failed as hung.
	ErrorCodeHung = "hung"
	// ErrorCodeCancelTimeout is the reason of a cancel no worker acknowledged.
	ErrorCodeCancelTimeout = "cancel_timeout"
)

// DetectorConfig configures a Detector. A zero field takes its default; a
// negative one is refused with ErrInvalidConfig.
type DetectorConfig struct {
	// HangAfter: a running job with no sign of life for this long is hung.
	// Default HangAfterDefault; at least HangAfterMin.
	HangAfter time.Duration
	// CancelGrace: a canceling job that no worker acknowledged for this long
	// is canceled by the detector. Default CancelGraceDefault.
	CancelGrace time.Duration
	// Every is the pause between passes. Default HangAfter/10, within 1-30 s.
	// After a pass whose listing of the views took longer than a tenth of
	// it, and so did the listing before (the first listing has none), the
	// next listing waits ten times the shorter of the two, and the passes
	// until then look only at the jobs the last listing found running.
	Every time.Duration
	// MaxPerPass bounds the hung attempts one pass fails, the longest
	// silent first, and apart from them the unacknowledged cancels it
	// finishes. Default MaxPerPassDefault.
	MaxPerPass int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *DetectorConfig) validate() error {
	if c.HangAfter == 0 {
		c.HangAfter = HangAfterDefault
	}
	if c.HangAfter < HangAfterMin {
		return fmt.Errorf("%w: hang-after %s, expected 0 (the default, %s) or at least %s", ErrInvalidConfig, c.HangAfter, HangAfterDefault, HangAfterMin)
	}
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "cancel grace", &c.CancelGrace, CancelGraceDefault),
		config.DefaultSaid(ErrInvalidConfig, "pause between passes", &c.Every,
			min(max(c.HangAfter/10, time.Second), 30*time.Second), "a tenth of the hang-after within 1-30 s"),
		config.Default(ErrInvalidConfig, "max per pass", &c.MaxPerPass, MaxPerPassDefault),
	); err != nil {
		return err
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Detector finds running jobs whose worker went silent (seed 003: the hung
// job detector) and fails their attempts with the code "hung", so that they
// are retried while attempts are left and their worker is fenced off; and it
// finishes cancels that no worker acknowledged. One detector acts at a time
// among the servers sharing a NATS.
type Detector struct {
	// movedOn holds, by job, the version of a view shown running whose
	// job had moved on when the detector tried to fail it: such a view is
	// behind its history, and is not tried again until it changes. Passes
	// run one at a time, and only they touch it.
	movedOn map[string]uint64
	// watched holds the jobs the last full pass found running, with their
	// last sign of life then, and the hang-after it judged by: the passes
	// between two listings of every view look only at these (recheck).
	watched   map[string]watchedJob
	watchedBy time.Duration
	// cancels holds the canceling jobs found since the last full pass (by
	// it, or by a recheck of a job it found running), with the time each
	// cancel was asked: the passes between two listings end those that
	// are overdue. Without it a cancel whose worker died was ended only by
	// a full pass, which with many views came minutes after its grace.
	cancels map[string]time.Time
	// listedAt and relistAfter pace the full passes: ten times the shorter
	// of the last two listings. lastListing is the last listing that
	// succeeded, however long; 0 before the first.
	listedAt    time.Time
	relistAfter time.Duration
	lastListing time.Duration
	cfg         DetectorConfig
	reader      *projector.Reader
	m           *statemachine.Machine
	hb          *events.Heartbeats
	logs        *workers.Logs
	leader      *Leadership
	logger      *zap.Logger

	svc ledService
}

// NewDetector returns a detector; Start runs it.
func NewDetector(reader *projector.Reader, m *statemachine.Machine, hb *events.Heartbeats, logs *workers.Logs, leader *Leadership, cfg DetectorConfig) (*Detector, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if reader == nil || m == nil || hb == nil || logs == nil || leader == nil {
		return nil, fmt.Errorf("%w: reader, machine, heartbeats, logs and leadership are required", ErrInvalidConfig)
	}
	return &Detector{cfg: cfg, reader: reader, m: m, hb: hb, logs: logs, leader: leader,
		logger: logging.OrNop(cfg.Logger, "detector")}, nil
}

// Start publishes the hang-after for workers if none is, and runs passes in
// the background while this server leads, until Stop; ctx is not used past
// the call. Safe to call twice, and again after Stop.
func (d *Detector) Start(ctx context.Context) error {
	// Not fatal: every pass publishes it too.
	if err := d.hb.PublishHangAfterIfNone(ctx, d.cfg.HangAfter); err != nil && ctx.Err() == nil {
		d.logger.Warn("publish hang-after to workers", zap.Error(err))
	}
	d.svc.start(ctx, d.leader, d.cfg.Every, d.logger, func(ctx context.Context, fresh bool) (time.Duration, error) {
		// A listing that took a tenth of Every or less is made every pass.
		if !fresh && d.relistAfter > d.cfg.Every && time.Since(d.listedAt) < d.relistAfter {
			_, err := d.recheck(ctx)
			d.recheckCancels(ctx)
			return 0, err
		}
		began := time.Now()
		res, err := d.runOnce(ctx)
		// A listing that waited on NATS (a stall, a leader election, this
		// process paused) is long without costing the server anything:
		// paced by it alone, one such listing put off the next ten times
		// its length, and a job started meanwhile, which only a listing
		// finds, was failed that much after its hang-after. The shorter of
		// the last two listings still follows views that grew, one
		// listing later; the first listing, with none before it to tell,
		// is followed by the next at once.
		pace := min(res.scan, d.lastListing)
		d.listedAt, d.relistAfter = began, pauseAfter(d.cfg.Every, pace)
		if err != nil {
			d.relistAfter = 0 // the next pass lists again
		} else {
			d.lastListing = res.listing
		}
		if res.listing > d.cfg.Every/10 {
			d.logger.Debug("a long listing: the passes until the next one recheck the jobs it found running",
				zap.Duration("listing", res.listing), zap.Duration("next_listing_in", d.relistAfter))
		}
		// Paced here, not by the service: the passes between listings
		// follow at Every.
		return 0, err
	})
	return nil
}

// Stop ends the passes and gives up the leadership. Safe to call twice.
func (d *Detector) Stop() { d.svc.stop() }

// passResult says what one pass did.
type passResult struct {
	Hung              []string
	CancelsTerminated []string
	// listing is how long the listing of the views took; scan paces the
	// next listing by it, 0 when the pass left work for the next.
	listing, scan time.Duration
}

type hungCandidate struct {
	view     projector.View
	lastSign time.Time
}

// runOnce publishes the hang-after for workers, fails the attempts of up to
// MaxPerPass hung jobs, the longest silent first, and terminates
// unacknowledged cancels.
func (d *Detector) runOnce(ctx context.Context) (passResult, error) {
	var res passResult
	// Every pass, since the detector acting may have changed hands with a
	// server judging by another hang-after.
	hangAfter := d.cfg.HangAfter
	// What an earlier pass watched is not to be judged by once this one
	// began: it may fail (and a leadership or hang-after may have changed).
	d.watched, d.watchedBy, d.cancels = nil, 0, nil
	previous, err := d.hb.PublishHangAfter(ctx, hangAfter)
	if err != nil && ctx.Err() != nil {
		return res, ctx.Err() // stopping: nothing to say
	}
	var running []projector.View
	switch {
	case err != nil && previous > hangAfter:
		// Workers still beat at the pace of the longer one they read.
		d.logger.Warn("publish hang-after to workers; judging by the one they follow", zap.Duration("hang_after", previous), zap.Error(err))
		hangAfter = previous
	case err != nil:
		d.logger.Warn("publish hang-after to workers", zap.Error(err))
	case previous > hangAfter:
		// Workers beat at the pace of the longer one until they read this:
		// their silence is judged from the next pass.
		d.logger.Info("hang-after shortened; hung jobs are judged from the next pass",
			zap.Duration("from", previous), zap.Duration("to", hangAfter))
		hangAfter = 0
	}
	now := d.cfg.Now()
	// One listing for both states: it reads every view, finished ones
	// included.
	states := []statemachine.State{statemachine.StateCanceling}
	if hangAfter > 0 {
		states = append(states, statemachine.StateRunning)
	}
	began := time.Now()
	listed, err := d.listAll(ctx, states)
	res.listing = time.Since(began)
	res.scan = res.listing
	if err != nil {
		return res, err
	}
	var canceling []projector.View
	for _, v := range listed {
		if v.State == statemachine.StateRunning {
			running = append(running, v)
		} else {
			canceling = append(canceling, v)
		}
	}
	var hung []hungCandidate
	stillBehind := map[string]uint64{}
	watched := map[string]watchedJob{}
	for _, v := range running {
		if d.movedOn[v.ID] == v.Version {
			stillBehind[v.ID] = v.Version
			continue
		}
		last := v.UpdatedAt
		if v.StartedAt != nil && v.StartedAt.After(last) {
			last = *v.StartedAt
		}
		last, err := d.lastSign(ctx, v, last, now, hangAfter)
		if err != nil {
			continue
		}
		if now.Sub(last) >= hangAfter {
			hung = append(hung, hungCandidate{view: v, lastSign: last})
		} else {
			watched[v.ID] = watchedJob{view: v, lastSign: last}
		}
	}
	d.movedOn = stillBehind
	d.watched, d.watchedBy = watched, hangAfter
	sort.Slice(hung, func(i, j int) bool { return hung[i].lastSign.Before(hung[j].lastSign) })
	if len(hung) > d.cfg.MaxPerPass {
		hung = hung[:d.cfg.MaxPerPass]
		// More hung jobs wait than a pass fails: the listing found work,
		// and the next pass follows at the usual pace (pauseAfter).
		res.scan = 0
	}
	for _, c := range hung {
		if d.failHung(ctx, c, now, hangAfter) {
			res.Hung = append(res.Hung, c.view.ID)
		}
	}
	budget := d.cfg.MaxPerPass
	cancels := map[string]time.Time{}
	for _, v := range canceling {
		if budget == 0 {
			res.scan = 0 // as for hung jobs above
			break
		}
		c := d.endCancelIfOverdue(ctx, v.ID, now)
		if c.tried {
			budget--
		}
		if c.ended {
			res.CancelsTerminated = append(res.CancelsTerminated, v.ID)
		}
		if c.waiting {
			cancels[v.ID] = c.asked
		}
	}
	d.cancels = cancels
	return res, nil
}

// cancelCheck is what endCancelIfOverdue did with a job.
type cancelCheck struct {
	// tried: the cancel was overdue, and ending it was tried.
	tried, ended bool
	// waiting: the job is still canceling within its grace, asked then
	// (or it could not be read, and is asked again).
	waiting bool
	asked   time.Time
}

// endCancelIfOverdue ends the cancel of a canceling job that no worker
// acknowledged within CancelGrace.
func (d *Detector) endCancelIfOverdue(ctx context.Context, id string, now time.Time) cancelCheck {
	job, err := d.m.Load(ctx, id)
	if errors.Is(err, events.ErrNotFound) {
		d.forgetGhost(ctx, id)
		return cancelCheck{}
	}
	if err != nil {
		return cancelCheck{waiting: true, asked: now.Add(-d.cfg.CancelGrace)}
	}
	if job.State != statemachine.StateCanceling || job.CancelRequestedAt == nil {
		return cancelCheck{}
	}
	asked := *job.CancelRequestedAt
	if now.Sub(asked) >= d.cfg.CancelGrace || asked.After(now.Add(events.BeatAheadLimit)) {
		// The request's time is its writer's clock, which may lag or
		// run ahead.
		if asked, err = d.heldToServer(ctx, job.ID, asked, true); err != nil {
			return cancelCheck{waiting: true, asked: now.Add(-d.cfg.CancelGrace)}
		}
	}
	if now.Sub(asked) < d.cfg.CancelGrace {
		return cancelCheck{waiting: true, asked: asked}
	}
	d.systemLog(ctx, job.ID, job.Attempt, fmt.Sprintf("cancel requested at %s was not acknowledged by worker %s within %s; the job is canceled without it",
		asked.Format(time.RFC3339), job.WorkerID, d.cfg.CancelGrace))
	if _, err := d.m.TerminateCanceling(ctx, job.ID, ErrorCodeCancelTimeout); err != nil {
		d.logger.Info("left a canceling job alone", zap.String("job", job.ID), zap.Error(err))
		return cancelCheck{tried: true}
	}
	return cancelCheck{tried: true, ended: true}
}

// recheckCancels is the part of a pass between two listings that ends the
// overdue cancels of the jobs in d.cancels, at most MaxPerPass of them.
func (d *Detector) recheckCancels(ctx context.Context) []string {
	now := d.cfg.Now()
	budget := d.cfg.MaxPerPass
	var ended []string
	for id, asked := range d.cancels {
		if budget == 0 {
			break
		}
		if now.Sub(asked) < d.cfg.CancelGrace && !asked.After(now.Add(events.BeatAheadLimit)) {
			continue
		}
		c := d.endCancelIfOverdue(ctx, id, now)
		if c.tried {
			budget--
		}
		if c.ended {
			ended = append(ended, id)
		}
		if c.waiting {
			d.cancels[id] = c.asked
		} else {
			delete(d.cancels, id)
		}
	}
	return ended
}

// watchedJob is a job found running by the last full pass.
type watchedJob struct {
	view     projector.View
	lastSign time.Time
}

// lastSign returns the later of since and the attempt's last heartbeat;
// and once that is hangAfter before now, the later still of it and the time
// the server stored the job's last event. Since is the view's time, by its
// writers' clocks (and its updated_at follows the worker's beats): a worker
// whose clock lags would otherwise have an attempt it just began look
// silent, before its first beat; one whose clock runs ahead, a time in the
// future, is held to BeatAheadLimit past the server's storing of the job's
// last event, or a dead attempt would be failed that much late.
func (d *Detector) lastSign(ctx context.Context, v projector.View, since, now time.Time, hangAfter time.Duration) (time.Time, error) {
	if since.After(now.Add(events.BeatAheadLimit)) {
		var err error
		if since, err = d.heldToServer(ctx, v.ID, since, true); err != nil {
			return since, err
		}
	}
	beat, ok, err := d.hb.Last(ctx, v.ID)
	if err != nil {
		d.logger.Warn("read heartbeat", zap.String("job", v.ID), zap.Error(err))
		return since, err
	}
	if ok && beat.Lease == v.Lease && beat.Sent().After(since) {
		since = beat.Sent()
	}
	if now.Sub(since) < hangAfter {
		return since, nil
	}
	// Since may be a beat's now, later than the job's last event: only
	// raised to the event's storing.
	return d.heldToServer(ctx, v.ID, since, false)
}

// heldToServer returns t, a time a writer's clock stamped on the job's last
// event, held to the server's clock: not before the server stored the
// event, nor, if capAhead, more than BeatAheadLimit after.
func (d *Detector) heldToServer(ctx context.Context, jobID string, t time.Time, capAhead bool) (time.Time, error) {
	stored, err := d.m.Log().LastStoredAt(ctx, jobID)
	if err != nil {
		d.logger.Warn("read when the last event was stored", zap.String("job", jobID), zap.Error(err))
		return t, err
	}
	switch {
	case stored.IsZero():
		return t, nil
	case stored.After(t):
		return stored, nil
	case capAhead && t.After(stored.Add(events.BeatAheadLimit)):
		return stored.Add(events.BeatAheadLimit), nil
	}
	return t, nil
}

// recheck is a pass between two listings of every view: it fails the
// attempts of the jobs the last listing found running that have been
// silent for the hang-after since, reading a job's heartbeat only once its
// last sign known is that old, and its view again before failing it. A
// listing reads every view, finished ones included, so with many views its
// passes were spaced far apart (ten times the listing), and a job that
// went silent was failed that much after its hang-after. A job started
// since the last listing waits for the next one.
func (d *Detector) recheck(ctx context.Context) ([]string, error) {
	hangAfter := d.watchedBy
	if hangAfter <= 0 || len(d.watched) == 0 {
		return nil, nil
	}
	now := d.cfg.Now()
	var hung []hungCandidate
	for id, w := range d.watched {
		if now.Sub(w.lastSign) < hangAfter {
			continue
		}
		last, err := d.lastSign(ctx, w.view, w.lastSign, now, hangAfter)
		if err != nil {
			continue
		}
		if now.Sub(last) < hangAfter {
			d.watched[id] = watchedJob{view: w.view, lastSign: last}
			continue
		}
		// The view read a while ago: the job may have finished, or moved
		// to another attempt, since.
		v, err := d.reader.Get(ctx, id)
		if err != nil && !errors.Is(err, events.ErrNotFound) {
			continue // asked again next pass
		}
		if err != nil || v.State != statemachine.StateRunning || v.Lease != w.view.Lease {
			delete(d.watched, id)
			if err == nil && v.State == statemachine.StateCanceling && v.Lease == w.view.Lease && v.CancelRequestedAt != nil {
				// Canceled since the listing, its worker silent: its cancel
				// is ended once overdue, not at the next listing.
				if d.cancels == nil {
					d.cancels = map[string]time.Time{}
				}
				d.cancels[id] = *v.CancelRequestedAt
			}
			continue
		}
		hung = append(hung, hungCandidate{view: v, lastSign: last})
	}
	sort.Slice(hung, func(i, j int) bool { return hung[i].lastSign.Before(hung[j].lastSign) })
	if len(hung) > d.cfg.MaxPerPass {
		hung = hung[:d.cfg.MaxPerPass]
	}
	var failed []string
	for _, c := range hung {
		delete(d.watched, c.view.ID)
		if d.failHung(ctx, c, now, hangAfter) {
			failed = append(failed, c.view.ID)
		}
	}
	return failed, nil
}

func (d *Detector) failHung(ctx context.Context, c hungCandidate, now time.Time, hangAfter time.Duration) bool {
	v := c.view
	// A beat is not an event, so the expected sequence cannot see one that
	// arrived since the candidate was chosen: look again right before writing.
	if beat, ok, err := d.hb.Last(ctx, v.ID); err == nil && ok && beat.Lease == v.Lease && now.Sub(beat.Sent()) < hangAfter {
		return false
	}
	silent := now.Sub(c.lastSign).Round(time.Second)
	d.systemLog(ctx, v.ID, v.Attempt, fmt.Sprintf("attempt %d on worker %s detected as hung: no heartbeat since %s (%s ago, threshold %s)",
		v.Attempt, v.WorkerID, c.lastSign.Format(time.RFC3339), silent, hangAfter))
	_, err := d.m.FailStale(ctx, v.ID, v.Lease, statemachine.FailParams{
		Error: fmt.Sprintf("hung: no heartbeat for %s", silent),
		Code:  ErrorCodeHung,
	})
	if err != nil {
		// The job moved on (finished, canceled, heartbeated into a new
		// attempt): the expected sequence or the lease left it alone.
		var lost *statemachine.LeaseLostError
		switch {
		case errors.As(err, &lost) || errors.Is(err, statemachine.ErrConflict) || errors.Is(err, statemachine.ErrIllegalTransition):
			d.systemLog(ctx, v.ID, v.Attempt, "the job moved on before it could be failed as hung; left alone")
			d.movedOn[v.ID] = v.Version
			// Mostly a job that ended while the pass judged it, which is
			// no news; a view that stays behind shows in `jetjob get`.
			d.logger.Debug("the job moved on before it could be failed as hung; its view is left alone until it changes ('jetjob admin rebuild' repairs views)",
				zap.String("job", v.ID), zap.Uint64("version", v.Version), zap.Error(err))
		case errors.Is(err, events.ErrNotFound):
			d.forgetGhost(ctx, v.ID)
		default:
			d.logger.Warn("fail hung job", zap.String("job", v.ID), zap.Error(err))
		}
		return false
	}
	d.systemLog(ctx, v.ID, v.Attempt, fmt.Sprintf("attempt %d failed as hung", v.Attempt))
	d.logger.Info("failed a hung attempt", zap.String("job", v.ID), zap.Int("attempt", v.Attempt), zap.Duration("silent", silent))
	return true
}

// forgetGhost removes what is left of a job whose history the log no longer
// has (purged): its view, log lines and beats, as a purge does. Such a view
// is one nats-server brought back after a death, at an older state; left
// alone, one that shows the job running would be judged hung on every pass,
// taking a place in the pass from a job that is.
func (d *Detector) forgetGhost(ctx context.Context, id string) {
	removed, err := d.removeGhost(ctx, id)
	switch {
	case err != nil:
		d.logger.Warn("remove the view of a job the log no longer has", zap.String("job", id), zap.Error(err))
	case removed:
		d.logger.Info("removed the view of a job the log no longer has", zap.String("job", id))
	}
}

func (d *Detector) removeGhost(ctx context.Context, id string) (bool, error) {
	marks, err := takeMarks(ctx, d.reader, d.logs, d.hb)
	if err != nil {
		return false, err
	}
	// Looked up after the marks: a job submitted again under the same key
	// since (the same ID) is found, and keeps its view. Asked of the
	// stream's leader: a replica behind it may not have the job yet.
	held, err := d.m.Log().Holds(ctx, id)
	if err != nil || held {
		return false, err
	}
	return true, forgetTraces(ctx, d.reader, d.logs, d.hb, id, marks)
}

func (d *Detector) systemLog(ctx context.Context, jobID string, attempt int, line string) {
	if err := d.logs.Append(ctx, jobID, workers.LogLine{Time: d.cfg.Now().UTC(), Attempt: attempt, Stream: workers.StreamSystem, Line: line}); err != nil {
		d.logger.Warn("append log line", zap.String("job", jobID), zap.Error(err))
	}
}

func (d *Detector) listAll(ctx context.Context, states []statemachine.State) ([]projector.View, error) {
	page, err := d.reader.List(ctx, projector.Filter{States: states})
	if err != nil {
		return nil, fmt.Errorf("list %v jobs: %w", states, err)
	}
	return page.Views, nil
}
