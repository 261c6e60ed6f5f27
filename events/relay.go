package events

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// A relayed append is the message the client would publish to the stream,
// sent instead as a request to RelaySubject(stream) with the job named in
// relayJobHeader; the reply's relayOutcomeHeader says what became of it.
//
// Why: nats-server fsyncs each append on its own unless it comes in an
// atomic batch, and a process gathers batches only from its own appends.
// Ten worker processes running ten jobs each commit batches too small to
// pay for themselves (measured: 2,000 jobs/s where one process running all
// hundred moved 4,800). Relayed, their appends meet the server's in one
// flusher.
const (
	relaySubjectPrefix = "jj.relay."
	relayQueue         = "jetjob-relay"
	relayJobHeader     = "Jj-Relay-Job"
	relayOutcomeHeader = "Jj-Relay-Outcome"
	relaySeqHeader     = "Jj-Relay-Seq"
	relayStored        = "stored"
	relayConflict      = "conflict"
	relayUnknown       = "unknown"
	relayRefused       = "refused"
	relayInFlightLimit = 4 * MaxBatchLimit
	// relayUnder: a process with this many appends under way goes
	// straight to the stream. The server's stream commits one batch at a
	// time, about 2.4 ms of fixed cost each on a plain disk, so a batch of
	// a few dozen costs it more than relaying them into its larger ones
	// (measured: ten pools of ten jobs moved 2,300-2,600 jobs/s with a
	// bound of 16, 4,200 relaying everything); a bulk submit's batches of
	// hundreds do not.
	relayUnder = 256
	// relayAbsentPause: appends go straight to the stream this long after
	// one found no server relaying; relayUnansweredPause, after one got no
	// answer (a server gone mid-append, or a NATS whose permissions let
	// the request out but no reply in): that costs a PublishTimeout.
	relayAbsentPause     = 5 * time.Second
	relayUnansweredPause = time.Minute
	relayHandlerTimeout  = 3 // times PublishTimeout: about what Append's own retries take
)

// RelaySubject is where a server serving ServeRelay takes the appends to stream.
func RelaySubject(stream string) string { return relaySubjectPrefix + stream }

// ServeRelay commits the appends that logs with Config.Relay send to this
// one, with this log's own, in its atomic batches, until stop is called.
// Servers on one NATS serve the relay together: each append goes to one.
// stop answers the appends already taken, and those on their way, before
// it returns: a relayed append left unanswered costs its client a
// PublishTimeout before it appends on its own.
func (l *Log) ServeRelay() (stop func(), err error) {
	// A slot per relayed append in flight. Stop takes every slot: that
	// waits for the appends in flight, and any taken after it is refused.
	slots := make(chan struct{}, relayInFlightLimit)
	sub, err := l.nc.QueueSubscribe(RelaySubject(l.cfg.Stream), relayQueue, func(m *nats.Msg) {
		select {
		case slots <- struct{}{}:
		default:
			// Full, or stopped: the client appends on its own.
			respondRelay(m, relayRefused, 0)
			return
		}
		go func() {
			defer func() { <-slots }()
			l.serveRelayed(m)
		}()
	})
	if err != nil {
		return nil, err
	}
	// Serving once this returns, not once the server reads the
	// subscription: a relayed append the server had no subscriber for
	// yet would wait out its client's PublishTimeout. Not connected, the
	// subscription is made on connecting.
	_ = l.nc.FlushTimeout(l.cfg.PublishTimeout)
	closed := sub.StatusChanged(nats.SubscriptionClosed)
	var once sync.Once
	return func() {
		once.Do(func() {
			if sub.Drain() == nil {
				select {
				case <-closed:
				case <-time.After(l.cfg.PublishTimeout):
				}
			}
			for range cap(slots) {
				slots <- struct{}{}
			}
		})
	}, nil
}

func (l *Log) serveRelayed(m *nats.Msg) {
	jobID := m.Header.Get(relayJobHeader)
	eventID := m.Header.Get(jetstream.MsgIDHeader)
	expected, err := strconv.ParseUint(m.Header.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	if err != nil || eventID == "" || ValidateJobID(jobID) != nil || len(m.Data) > l.MaxEventSize() || !relayedEvent(m, jobID, eventID) {
		// Not an append this client's own publish would have made: it
		// appends on its own and gets the stream's answer.
		respondRelay(m, relayRefused, 0)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), relayHandlerTimeout*l.cfg.PublishTimeout)
	defer cancel()
	ev := Event{JobID: jobID, ID: eventID, Type: m.Header.Get(TypeHeader)}
	seq, err := l.appendEncoded(ctx, ev, m.Data, expected, false)
	switch {
	case err == nil:
		respondRelay(m, relayStored, seq)
	case errors.Is(err, ErrConflict):
		respondRelay(m, relayConflict, 0)
	case errors.Is(err, ErrOutcomeUnknown):
		respondRelay(m, relayUnknown, 0)
	default:
		// Known not stored (the log closed, the stream refused it).
		l.logger.Debug("relayed append not stored", zap.String("job", jobID), zap.Error(err))
		respondRelay(m, relayRefused, 0)
	}
}

// relayedEvent: the body is an event of the job and ID the headers name.
// The relay widens who writes to the log to whoever may request of it, so
// it stores only what the events codec reads back; a type newer than this
// server's is stored, as a straight append would be.
func relayedEvent(m *nats.Msg, jobID, eventID string) bool {
	ev, err := Decode(m.Data)
	if err != nil && !errors.Is(err, ErrUnknownType) {
		return false
	}
	return ev.JobID == jobID && ev.ID == eventID && ev.Type == m.Header.Get(TypeHeader)
}

func respondRelay(m *nats.Msg, outcome string, seq uint64) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(relayOutcomeHeader, outcome)
	if outcome == relayStored {
		r.Header.Set(relaySeqHeader, strconv.FormatUint(seq, 10))
	}
	_ = m.RespondMsg(r)
}

// relay sends an append to a server's relay. done is false when the append
// is still to be made here: no server relays (nothing was sent), the server
// did not store it, or its outcome is unknown (r is then marked unanswered,
// for the careful path).
func (l *Log) relay(ctx context.Context, r *appendReq) (seq uint64, err error, done bool) {
	if l.nc.IsClosed() {
		return 0, nil, false // not sent; the straight path says so
	}
	m := l.msg(r)
	m.Subject = RelaySubject(l.cfg.Stream)
	m.Header.Set(relayJobHeader, r.ev.JobID)
	rctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
	resp, err := l.nc.RequestMsgWithContext(rctx, m)
	cancel()
	if err != nil {
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			l.pauseRelay(relayAbsentPause)
			return 0, nil, false
		case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining):
			return 0, nil, false // refused before it went out
		case ctx.Err() != nil:
			return 0, &OutcomeUnknownError{JobID: r.ev.JobID, Cause: ctx.Err()}, true
		}
		if l.pauseRelay(relayUnansweredPause) {
			// Once a pause: the appends in flight with this one time out together.
			l.logger.Warn("the server's append relay did not answer; appending straight to the stream for a while",
				zap.String("job", r.ev.JobID), zap.Duration("for", relayUnansweredPause), zap.Error(err))
		}
		r.sent, r.unanswered = true, true
		return 0, nil, false
	}
	switch resp.Header.Get(relayOutcomeHeader) {
	case relayStored:
		if seq, err := strconv.ParseUint(resp.Header.Get(relaySeqHeader), 10, 64); err == nil {
			return seq, nil, true
		}
		r.sent, r.unanswered = true, true
	case relayConflict:
		return 0, &ConflictError{JobID: r.ev.JobID, Expected: r.expected}, true
	case relayUnknown:
		r.sent, r.unanswered = true, true
	}
	return 0, nil, false
}

// pauseRelay sends appends straight to the stream for d from now, unless a
// longer pause runs; it reports whether no pause ran.
func (l *Log) pauseRelay(d time.Duration) (started bool) {
	now := time.Now().UnixNano()
	until := now + int64(d)
	for {
		was := l.relayOffUntil.Load()
		if was >= until {
			return false
		}
		if l.relayOffUntil.CompareAndSwap(was, until) {
			return was < now
		}
	}
}

// relaying: appends go to a server's relay first.
func (l *Log) relaying() bool {
	if !l.cfg.Relay || l.cfg.MaxBatch == 1 || l.streamed.Load() {
		return false
	}
	return time.Now().UnixNano() > l.relayOffUntil.Load()
}
