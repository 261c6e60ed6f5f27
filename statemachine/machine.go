package statemachine

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/logging"
)

// ConflictRetriesDefault is how many times in all a command decides and
// appends, losing a race each time, before it returns a *ConflictError
// (or, when the job as it then is refuses the command, that refusal: a
// *LeaseLostError, or a *ConflictError wrapping the cause).
const ConflictRetriesDefault = 5

// Config configures a Machine. A zero field takes its default; a negative
// one is refused with ErrInvalidConfig.
type Config struct {
	// MaxPayload is the largest payload Submit accepts, when its event also
	// fits in one message of the connected NATS server (Machine.Validate):
	// stored base64-encoded, about 780,000 bytes fit a NATS with the
	// default max_payload of 1 MiB. Default MaxPayloadDefault.
	MaxPayload int
	// ConflictRetries: see ConflictRetriesDefault.
	ConflictRetries int
	// Backoff is the retry delay of jobs that set none. Default
	// BackoffBaseDefault base, BackoffCapDefault cap.
	Backoff BackoffConfig
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *Config) validate() error {
	if err := cmp.Or(
		config.Default(ErrInvalidConfig, "max payload", &c.MaxPayload, MaxPayloadDefault),
		config.Default(ErrInvalidConfig, "conflict retries", &c.ConflictRetries, ConflictRetriesDefault),
		config.Default(ErrInvalidConfig, "backoff base", &c.Backoff.Base, BackoffBaseDefault),
		config.Default(ErrInvalidConfig, "backoff cap", &c.Backoff.Cap, BackoffCapDefault),
	); err != nil {
		return err
	}
	if c.Backoff.Base > c.Backoff.Cap {
		return fmt.Errorf("%w: backoff base %s is above its cap %s, expected base <= cap", ErrInvalidConfig, c.Backoff.Base, c.Backoff.Cap)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Machine runs commands against jobs in an event log. It is safe for
// concurrent use: one Machine serves a process, and its Log coalesces
// the appends of concurrent commands.
type Machine struct {
	log    *events.Log
	cfg    Config
	logger *zap.Logger
}

// New returns a Machine that reads and appends through log.
func New(log *events.Log, cfg Config) (*Machine, error) {
	if log == nil {
		return nil, fmt.Errorf("%w: no event log", ErrInvalidConfig)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Machine{log: log, cfg: cfg, logger: logging.OrNop(cfg.Logger, "statemachine")}, nil
}

// Log is the event log the machine appends to.
func (m *Machine) Log() *events.Log { return m.log }

// MaxPayload is Config.MaxPayload: the largest payload Submit accepts when
// its event also fits in one message of the connected NATS server, which
// on a NATS with the default max_payload takes less (see Validate).
func (m *Machine) MaxPayload() int { return m.cfg.MaxPayload }

// Load folds a job's history.
func (m *Machine) Load(ctx context.Context, jobID string) (Job, error) {
	if err := validJobID(jobID); err != nil {
		return Job{}, err
	}
	recs, err := m.log.Load(ctx, jobID)
	if err != nil {
		return Job{}, err
	}
	return m.fold(jobID, recs)
}

// loadPast folds a job's history after an append that expected seq to be
// its last was refused: a read answered by a replica that had not caught
// up would have the command decide on what it was refused for again, and
// give up after its tries with a conflict, though a single other writer
// got there first (a cancel racing an acquire was refused so).
func (m *Machine) loadPast(ctx context.Context, jobID string, seq uint64) (Job, error) {
	recs, err := m.log.LoadPast(ctx, jobID, seq)
	if err != nil {
		return Job{}, err
	}
	return m.fold(jobID, recs)
}

func (m *Machine) fold(jobID string, recs []events.Record) (Job, error) {
	job, bad := Fold(recs)
	// The projector warns of each such message once, when it quarantines
	// it; warning here too would repeat it at every load of the job.
	for _, q := range bad {
		m.logger.Debug("skipped a message in a job's history", zap.String("job", jobID),
			zap.Uint64("seq", q.Record.Seq), zap.Error(q.Reason))
	}
	if job.State == StateNew {
		return Job{}, &NoSubmitError{JobID: jobID, Messages: len(recs)}
	}
	return job, nil
}

// notSent marks a read a command made before its append that failed
// because the connection closed: its event was never sent, so the command
// may be sent again, as ErrNotSent says of a submit on a closed
// connection. A caller checking ErrNotSent for that got the raw nats error
// from every command that reads the job first.
func notSent(err error) error {
	if errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, ErrNotSent) {
		return fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	return err
}

type decider func(j Job, now time.Time) (events.Event, error)

// apply decides on the job (on known when given, else as loaded), appends
// the event with the job's version as the expected sequence and, when the
// history moved meanwhile, reloads and decides again.
func (m *Machine) apply(ctx context.Context, jobID string, known *Job, decide decider) (Job, error) {
	if err := validJobID(jobID); err != nil {
		return Job{}, err
	}
	if known != nil && known.Version == 0 {
		// No job's copy has version 0: a history starts with its submit,
		// at a sequence of 1 or more. Appended with expected sequence 0,
		// the event decided on such a copy (a value in the views bucket
		// that no projector wrote, a made-up held job) would start a
		// history of its own for an ID that names no job.
		known = nil
	}
	var job Job
	if known != nil {
		job = *known
	} else {
		var err error
		if job, err = m.Load(ctx, jobID); err != nil {
			return Job{}, notSent(err)
		}
	}
	conflicted := false
	refused := func(job Job, err error) (Job, error) {
		// A lost lease stays one after a lost race: the attempt is
		// fenced, which no retry can change, while ErrConflict tells a
		// caller the job moved under it. It carries the job as it now
		// is itself.
		var lost *LeaseLostError
		if conflicted && !errors.As(err, &lost) {
			return job, &ConflictError{JobID: jobID, Job: job, Cause: err}
		}
		return job, err
	}
	for try := 0; ; try++ {
		ev, err := decide(job, m.cfg.Now())
		if err != nil && known != nil && !conflicted && try == 0 {
			// The caller's copy may be stale: decide on the log's version,
			// read from a replica that holds at least as much of it as the
			// copy (one that has not caught up would have the command
			// refused on an older state than the caller's).
			fresh, lerr := m.loadPast(ctx, jobID, max(known.Version, 1)-1)
			if lerr != nil {
				return job, notSent(lerr)
			}
			job = fresh
			ev, err = decide(job, m.cfg.Now())
		}
		if err != nil {
			return refused(job, err)
		}
		seq, err := m.log.Append(ctx, ev, job.Version)
		if err == nil {
			prev := job.Version
			if aerr := job.Apply(events.Record{Event: ev, Seq: seq, PrevSeq: prev}); aerr != nil {
				// The decider and the fold disagree: a programming error.
				panic(fmt.Sprintf("job %s: appended event %s does not fold: %v", jobID, ev.Type, aerr))
			}
			return job, nil
		}
		if !errors.Is(err, events.ErrConflict) {
			return job, err
		}
		conflicted = true
		fresh, lerr := m.loadPast(ctx, jobID, job.Version)
		if lerr != nil {
			// The append was refused: nothing of this command is stored.
			return job, notSent(lerr)
		}
		job = fresh
		if try+1 >= m.cfg.ConflictRetries {
			// Out of tries, the job as it now is still says why the
			// command cannot go through when it cannot: a report whose
			// lease the change it lost to fenced got a bare conflict, not
			// the lost lease it gets with a try left.
			if _, err := decide(job, m.cfg.Now()); err != nil {
				return refused(job, err)
			}
			return job, &ConflictError{JobID: jobID, Job: job}
		}
	}
}

// Submit appends a new job. With an idempotency key it returns the key's
// first job, and existed is true when that job was already there. An error
// matching ErrOutcomeUnknown (ctx ended or no answer came while the append
// was in flight)
// means the job may exist all the same, under the ID the error carries; a
// Key makes submitting again safe.
func (m *Machine) Submit(ctx context.Context, p SubmitParams) (job Job, existed bool, err error) {
	if err := p.validate(m.cfg.MaxPayload, m.cfg.Backoff); err != nil {
		return Job{}, false, err
	}
	jobID, err := newJobID(p)
	if err != nil {
		return Job{}, false, err
	}
	return m.submit(ctx, jobID, p)
}

// submitAfterJunk appends a keyed submit after the messages its job's
// subject already holds, none of them a valid submit.
func (m *Machine) submitAfterJunk(ctx context.Context, ev events.Event) (uint64, error) {
	recs, err := m.log.Load(ctx, ev.JobID)
	if err != nil && !errors.Is(err, events.ErrNotFound) {
		return 0, err
	}
	if job, _ := Fold(recs); job.State != StateNew {
		return 0, fmt.Errorf("job %s: %w", ev.JobID, events.ErrConflict) // another submit got there first
	}
	var last uint64 // none left: purged meanwhile
	if len(recs) > 0 {
		last = recs[len(recs)-1].Seq
	}
	return m.log.Append(ctx, ev, last)
}

// newJobID is the key's job ID, else a new time-ordered one: IDs made one
// after another sort in that order.
func newJobID(p SubmitParams) (string, error) {
	if p.Key != "" {
		return JobIDForKey(p.Key), nil
	}
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("new job ID: %w", err)
	}
	return id.String(), nil
}

func (m *Machine) submit(ctx context.Context, jobID string, p SubmitParams) (job Job, existed bool, err error) {
	ev, err := decideSubmit(jobID, p, m.cfg.Now())
	if err != nil {
		return Job{}, false, err
	}
	seq, err := m.log.Append(ctx, ev, 0)
	if errors.Is(err, events.ErrConflict) && p.Key != "" {
		job, lerr := m.Load(ctx, jobID)
		if !errors.Is(lerr, events.ErrNotFound) {
			return job, true, lerr
		}
		// The key's subject holds only messages that are no valid submit
		// (put there by some other publisher), which every fold skips:
		// the submit goes after them, once.
		if seq, err = m.submitAfterJunk(ctx, ev); errors.Is(err, events.ErrConflict) {
			job, err := m.Load(ctx, jobID)
			return job, true, err
		}
	}
	var big *events.TooLargeError
	if errors.As(err, &big) {
		return Job{}, false, payloadTooLarge(big, len(p.Payload))
	}
	if err != nil {
		return Job{}, false, fmt.Errorf("submit job: %w", err)
	}
	job = Job{State: StateNew}
	if err := job.Apply(events.Record{Event: ev, Seq: seq}); err != nil {
		panic(fmt.Sprintf("submitted event does not fold: %v", err))
	}
	return job, false, nil
}

// SubmitResult is one job of SubmitMany.
type SubmitResult struct {
	Job     Job
	Existed bool
	Err     error
}

// SubmitMany submits jobs concurrently, so that the log commits them in
// atomic batches. Results are in the order of params, and so are the IDs of
// the new jobs without a key (a key's ID is derived from the key), but not
// the order the log stores them in, which is the order workers take them
// in; one job's error does not stop
// the others. Of several params with one key, the first makes the job and
// the others find it (Existed), as with Submit called for each in turn.
func (m *Machine) SubmitMany(ctx context.Context, params []SubmitParams) []SubmitResult {
	out := make([]SubmitResult, len(params))
	ids := make([]string, len(params))
	params = slices.Clone(params) // validate fills in defaults; the caller's stay as given
	for i := range params {
		if err := params[i].validate(m.cfg.MaxPayload, m.cfg.Backoff); err != nil {
			out[i].Err = err
			continue
		}
		if ids[i], out[i].Err = newJobID(params[i]); out[i].Err != nil {
			continue
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 1000)
	// Jobs that share a key are submitted one after another, in order, so
	// that the first one wins as it would in separate calls.
	lastOfKey := map[string]chan struct{}{}
	for i := range params {
		if out[i].Err != nil {
			continue
		}
		var prev, done chan struct{}
		if key := params[i].Key; key != "" {
			prev, done = lastOfKey[key], make(chan struct{})
			lastOfKey[key] = done
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			if done != nil {
				defer close(done)
			}
			if prev != nil {
				<-prev // it holds a slot taken before this one's, so it runs
			}
			job, existed, err := m.submit(ctx, ids[i], params[i])
			out[i] = SubmitResult{Job: job, Existed: existed, Err: err}
		}(i)
	}
	wg.Wait()
	return out
}

// Cancel cancels a job: a pending or scheduled job is canceled at once, a
// running one moves to canceling until its worker acknowledges. In any other
// state, canceling and canceled included, it gives an
// *IllegalTransitionError naming the state (a *ConflictError wrapping one
// when another writer moved the job first), so that of racing cancels
// exactly one succeeds.
func (m *Machine) Cancel(ctx context.Context, jobID, reason string) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decideCancel(j, reason, now)
	})
}

// CancelPending cancels the job only if it is pending or scheduled and no
// worker has taken it yet: a job that waits for a retry, or was handed back,
// gives ErrTakenBefore.
func (m *Machine) CancelPending(ctx context.Context, jobID, reason string) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decidePendingCancel(j, reason, now)
	})
}

// CancelPendingFrom is CancelPending starting from a snapshot of the job (a
// projected view), saving the read of its history; a stale snapshot costs
// one refused append and a reload.
func (m *Machine) CancelPendingFrom(ctx context.Context, snapshot Job, reason string) (Job, error) {
	return m.apply(ctx, snapshot.ID, &snapshot, func(j Job, now time.Time) (events.Event, error) {
		return decidePendingCancel(j, reason, now)
	})
}

// Promote makes a scheduled job pending once its run-at has come (within
// PromoteEarlyTolerance); before that it returns a *NotDueError.
func (m *Machine) Promote(ctx context.Context, jobID string) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decidePromote(j, nil, now)
	})
}

// PromoteDue makes a scheduled job pending on behalf of a timer armed for
// run-at due: only if due is still the job's run-at, so that a stale timer
// (an earlier schedule's, delivered again) never starts a retry early. A
// stale one gives a *NotDueError. It does not read the clock: the caller
// promotes only once due has come.
func (m *Machine) PromoteDue(ctx context.Context, jobID string, due time.Time) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decidePromote(j, &due, now)
	})
}

// Acquire gives a pending job to a worker; the returned job's Lease fences
// every later report of this attempt.
func (m *Machine) Acquire(ctx context.Context, jobID, workerID string) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decideAcquire(j, workerID, now)
	})
}

// AcquireFrom acquires a job starting from a snapshot of it (the one its
// queue message carries), saving the read of its history; a snapshot that is
// no longer current costs one refused append and a reload.
func (m *Machine) AcquireFrom(ctx context.Context, snapshot Job, workerID string) (Job, error) {
	return m.apply(ctx, snapshot.ID, &snapshot, func(j Job, now time.Time) (events.Event, error) {
		return decideAcquire(j, workerID, now)
	})
}

// Succeed records the success of the attempt that holds the job, with
// result (JSON, or nil for none) as its result; one that is not JSON is
// refused with an error matching ErrInvalid.
func (m *Machine) Succeed(ctx context.Context, held Job, result json.RawMessage) (Job, error) {
	if len(result) > 0 && !json.Valid(result) {
		var probe any // for the syntax error, which Valid does not give
		return Job{}, fmt.Errorf("%w: result of job %s is not JSON: %v", ErrInvalid, held.ID, json.Unmarshal(result, &probe))
	}
	return m.apply(ctx, held.ID, &held, func(j Job, now time.Time) (events.Event, error) {
		return decideSucceed(j, held.Lease, result, now)
	})
}

// Fail records the failure of the attempt that holds the job: the job is
// retried after a backoff while it has attempts left, else it fails.
func (m *Machine) Fail(ctx context.Context, held Job, p FailParams) (Job, error) {
	return m.apply(ctx, held.ID, &held, func(j Job, now time.Time) (events.Event, error) {
		return decideFail(j, held.Lease, p, m.cfg.Backoff, now)
	})
}

// AcknowledgeCancel records that the worker holding a canceling job stopped it.
func (m *Machine) AcknowledgeCancel(ctx context.Context, held Job) (Job, error) {
	return m.apply(ctx, held.ID, &held, func(j Job, now time.Time) (events.Event, error) {
		return decideAcknowledgeCancel(j, held.Lease, now)
	})
}

// Release hands a running job back unfinished; it does not use up an attempt.
// A reason past CancelReasonLimit bytes is cut, as a failure's error is: it
// is kept in the job's history for as long as the job.
func (m *Machine) Release(ctx context.Context, held Job, reason string) (Job, error) {
	return m.apply(ctx, held.ID, &held, func(j Job, now time.Time) (events.Event, error) {
		return decideRelease(j, held.Lease, reason, now)
	})
}

// TerminateCanceling finishes a canceling job whose worker never acknowledged.
func (m *Machine) TerminateCanceling(ctx context.Context, jobID, reason string) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decideTerminateCanceling(j, reason, now)
	})
}

// FailStale fails the attempt identified by lease on behalf of a worker that
// is gone (hung, lease expired); the expected sequence leaves a job that
// moved on in the meantime alone.
func (m *Machine) FailStale(ctx context.Context, jobID string, lease uint64, p FailParams) (Job, error) {
	return m.apply(ctx, jobID, nil, func(j Job, now time.Time) (events.Event, error) {
		return decideFail(j, lease, p, m.cfg.Backoff, now)
	})
}

// CheckLease reports whether the attempt still holds the job, with the job
// as it now is; a lost lease gives a *LeaseLostError.
func (m *Machine) CheckLease(ctx context.Context, held Job) (Job, error) {
	j, err := m.Load(ctx, held.ID)
	if err != nil {
		return Job{}, err
	}
	return j, checkLease(j, held.Lease)
}

// Validate checks submit parameters as Submit would, filling in defaults,
// so that a caller can refuse a whole batch before submitting any of it:
// the fit of the job's event in one message of the connected NATS server
// included.
func (m *Machine) Validate(p *SubmitParams) error {
	if p == nil {
		return fmt.Errorf("%w: no submit parameters", ErrInvalid)
	}
	if err := p.validate(m.cfg.MaxPayload, m.cfg.Backoff); err != nil {
		return err
	}
	jobID, err := newJobID(*p)
	if err != nil {
		return err
	}
	ev, err := decideSubmit(jobID, *p, m.cfg.Now())
	if err != nil {
		return err
	}
	data, err := events.Encode(ev)
	if err != nil {
		return fmt.Errorf("encode submit: %w", err)
	}
	if most := m.log.MaxEventSize(); len(data) > most {
		return payloadTooLarge(&events.TooLargeError{JobID: jobID, Size: len(data), Max: most}, len(p.Payload))
	}
	return nil
}

// payloadTooLarge explains a submit whose event the NATS server cannot take
// in one message, with the payload size that would fit.
func payloadTooLarge(big *events.TooLargeError, payload int) error {
	// The payload is stored base64-encoded; the rest of the event stays,
	// but for its time, whose fraction of a second is written without its
	// trailing zeros: up to 9 bytes longer in another submit. Hence the
	// slack, so that the size said to fit does.
	const timeSlack = 10
	rest := big.Size - base64.StdEncoding.EncodedLen(payload) + timeSlack
	fits := max(base64.StdEncoding.DecodedLen(big.Max-rest), 0)
	return fmt.Errorf("%w: %d bytes make an event of %d bytes encoded, over the %d the NATS server's max_payload leaves for one; at most about %d bytes of payload fit (raise max_payload, or send a reference to the data)",
		ErrPayloadTooLarge, payload, big.Size, big.Max, fits)
}

// validJobID refuses an ID that cannot name a job, matching both ErrInvalid
// and events.ErrInvalidJobID.
func validJobID(id string) error { return ValidateJobID(id) }

// ValidateJobID checks that id can name a job, with an error that matches
// both ErrInvalid and events.ErrInvalidJobID (which says why), as every
// package above events refuses such an ID: the projector's reads and the
// workers' job logs as the Machine's commands.
func ValidateJobID(id string) error {
	if err := events.ValidateJobID(id); err != nil {
		return invalidJobIDError{err}
	}
	return nil
}
