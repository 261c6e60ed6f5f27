package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/consume"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/statemachine"
)

// Log line streams.
const (
	StreamStdout   = "stdout"
	StreamStderr   = "stderr"
	StreamSystem   = "system"
	StreamProgress = "progress"
	maxLineBytes   = 16 << 10
)

// LogLine is one line of a job's output.
type LogLine struct {
	Time    time.Time `json:"time"`
	Attempt int       `json:"attempt"`
	// Number counts the attempt's lines from 1, over all its streams, as
	// its worker wrote them (LineGaps counts the missing ones). 0 for the
	// lines the server writes about an attempt (a hang, a cancel not
	// acknowledged), and for those of workers from before lines were
	// numbered.
	Number int64 `json:"n,omitempty"`
	// Lease is the lease of the attempt that wrote the line (0 for the
	// server's lines and those of workers from before it was written): a
	// job handed back runs again under the same attempt number, its lines
	// numbered from 1 again. A lease and a number name one line, stored
	// twice when its worker sent it again after its ack was lost; readers
	// pass over the second.
	Lease    uint64   `json:"lease,omitempty"`
	Stream   string   `json:"stream"`
	Line     string   `json:"line"`
	Progress *float64 `json:"progress,omitempty"`
}

// LineGaps says how many lines of an attempt are missing before each line
// read, from their numbers. A job keeps its last LogLinesPerJob lines, and
// a worker cut off from the server may lose lines it writes meanwhile.
// Lines without a number (the server's own, or a worker's from before
// lines were numbered) are passed over, and the lines of each attempt are
// counted apart, since a cut-off attempt may write on while its retry runs
// (and a job handed back runs again under the same attempt number, under
// another lease).
type LineGaps struct {
	last  map[attemptLease]int64   // the highest number read, by attempt
	known map[attemptLease][]int64 // every number there is to read, by attempt, sorted, once each
}

// attemptLease names one run of an attempt.
type attemptLease struct {
	attempt int
	lease   uint64
}

func runOf(l LogLine) attemptLease { return attemptLease{l.Attempt, l.Lease} }

// NewLineGaps counts gaps in lines as they come (all nil, as a follower
// reads them) or in all of a job's lines, read at once, of which a line
// stored after a later one (its publish tried again) is then no gap where
// it was expected.
func NewLineGaps(all []LogLine) *LineGaps {
	g := &LineGaps{last: map[attemptLease]int64{}}
	if all != nil {
		g.known = map[attemptLease][]int64{}
		for _, l := range all {
			g.known[runOf(l)] = append(g.known[runOf(l)], l.Number)
		}
		for a, ns := range g.known {
			slices.Sort(ns)
			g.known[a] = slices.Compact(ns)
		}
	}
	return g
}

// Before is how many lines of l's attempt are missing before l. Counted,
// not walked: the numbers a worker writes are not bounded (a line may
// name any), and an attempt that wrote a billion lines keeps only its last.
func (g *LineGaps) Before(l LogLine) int64 {
	run := runOf(l)
	last := g.last[run]
	if l.Number <= last {
		return 0 // unnumbered, or stored after a later line
	}
	g.last[run] = l.Number
	if g.known == nil {
		return l.Number - last - 1
	}
	// The known numbers strictly between last and l.Number are there.
	ns := g.known[run]
	from, _ := slices.BinarySearch(ns, last+1)
	to, _ := slices.BinarySearch(ns, l.Number)
	return l.Number - last - 1 - int64(to-from)
}

// readLines tells a line read before: one of the same lease and number,
// stored twice when its worker sent it again after its ack was lost. It
// holds, for each lease, the highest number read and the numbers below it
// not read yet, as spans: a line sent again fills one, and anything else
// below the highest is a second copy.
type readLines map[uint64]*leaseLines

type leaseLines struct {
	highest int64
	holes   []numberSpan // sorted, apart
}

type numberSpan struct{ from, to int64 } // both included

// again reports whether l was read before, and marks it read.
func (r readLines) again(l LogLine) bool {
	if l.Lease == 0 || l.Number <= 0 {
		return false // the server's lines, and those of older workers
	}
	ll := r[l.Lease]
	if ll == nil {
		ll = &leaseLines{}
		r[l.Lease] = ll
	}
	n := l.Number
	if n > ll.highest {
		if n > ll.highest+1 {
			ll.holes = append(ll.holes, numberSpan{ll.highest + 1, n - 1})
		}
		ll.highest = n
		return false
	}
	i, _ := slices.BinarySearchFunc(ll.holes, n, func(s numberSpan, n int64) int {
		if s.to < n {
			return -1
		}
		if s.from > n {
			return 1
		}
		return 0
	})
	if i == len(ll.holes) || ll.holes[i].from > n {
		return true
	}
	switch h := ll.holes[i]; {
	case h.from == h.to:
		ll.holes = slices.Delete(ll.holes, i, i+1)
	case n == h.from:
		ll.holes[i].from++
	case n == h.to:
		ll.holes[i].to--
	default:
		ll.holes[i].to = n - 1
		ll.holes = slices.Insert(ll.holes, i+1, numberSpan{n + 1, h.to})
	}
	return false
}

// Logs stores and reads job log lines, at most LogLinesPerJob per job.
// It is safe for concurrent use.
type Logs struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	// msgGet is the stream's message get subject under js's API prefix.
	msgGet string
	// lost hears a line appendAsync could not send; nil for none.
	lost func(jobID string, err error)
	// fetchWait is how long a fetch of a read or follow waits for lines;
	// logsFetchWait but in tests that show what a read does not wait for.
	fetchWait time.Duration
}

// AttachLogs binds to the logs stream that EnsureTopology created;
// ErrNoLogs without it.
func AttachLogs(ctx context.Context, js jetstream.JetStream) (*Logs, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	s, err := js.Stream(ctx, LogsStream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("%w: stream %s is missing; start the jetjob server first", ErrNoLogs, LogsStream)
	case provision.NoJetStream(err):
		// No jetjob server laid the stream out there either: the caller
		// matching ErrNoLogs must not take it for a NATS that did not answer.
		return nil, fmt.Errorf("%w: %s %v", ErrNoLogs, provision.NoJetStreamSays, err)
	case err != nil:
		return nil, fmt.Errorf("bind job logs: %w", err)
	}
	return &Logs{js: js, stream: s, msgGet: consume.MsgGetSubject(js, LogsStream), fetchWait: logsFetchWait}, nil
}

func logSubject(jobID string) string { return logPrefix + jobID }

// lineCutMark ends a line that was cut.
const lineCutMark = "…"

// cutLine cuts a line over maxLineBytes to at most that many bytes, at the
// start of a character, and marks it: cut in the middle of one, the line
// shows a replacement character where the last one was.
func cutLine(s string) string {
	if len(s) <= maxLineBytes {
		return s
	}
	n := maxLineBytes
	// Back at most to the start of the character at the cut: bytes that are
	// not UTF-8 cannot be split worse.
	for back := 0; back < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); back++ {
		n--
	}
	return s[:n] + lineCutMark
}

func encodeLine(l LogLine) []byte {
	// A line cut already (by ExecHandler's lineWriter) is its bytes and the
	// mark: cut again, the mark was split, shown as a replacement character.
	if len(l.Line) > maxLineBytes+len(lineCutMark) {
		l.Line = cutLine(l.Line)
	}
	b, _ := json.Marshal(l)
	return b
}

// Append stores a line and waits for it to be stored.
func (l *Logs) Append(ctx context.Context, jobID string, line LogLine) error {
	if err := statemachine.ValidateJobID(jobID); err != nil {
		return err
	}
	if _, err := l.js.Publish(ctx, logSubject(jobID), encodeLine(line)); err != nil {
		return fmt.Errorf("append log line of job %s: %w", jobID, err)
	}
	return nil
}

// appendAsync stores a line without waiting, so a chatty job is not slowed
// down by the round trip; lines of one job stay in order.
// It returns the line's ack to come, nil when it could not be sent.
func (l *Logs) appendAsync(jobID string, line LogLine) jetstream.PubAckFuture {
	ack, err := l.js.PublishAsync(logSubject(jobID), encodeLine(line))
	if err != nil && l.lost != nil {
		l.lost(jobID, err) // too many lines unacknowledged, or the connection closed
	}
	return ack
}

// resend stores again lines appendAsync sent whose acks failed, in the
// order given, resendWindow awaiting their acks at a time: one round trip
// a line made a worker resend at most a few thousand lines in its window
// (10,000 at 1 ms between nodes do not fit in 10 s). A line whose ack
// fails again is sent again after a pause, before the lines not yet sent,
// until all are stored or ctx ends; it is then stored after lines that
// followed it.
func (l *Logs) resend(ctx context.Context, jobID string, lines []LogLine) error {
	subject := logSubject(jobID)
	pause := resendPauseMin
	var lastErr error
	for len(lines) > 0 {
		window := lines[:min(len(lines), resendWindow)]
		acks := make([]jetstream.PubAckFuture, 0, len(window))
		for _, line := range window {
			ack, err := l.js.PublishAsync(subject, encodeLine(line))
			if err != nil { // too many awaiting acks, or the connection closed
				lastErr = err
				break
			}
			acks = append(acks, ack)
		}
		var again []LogLine
		for i, ack := range acks {
			select {
			case <-ack.Ok():
			case err := <-ack.Err():
				lastErr = err
				again = append(again, window[i])
			case <-ctx.Done():
				return l.resendGaveUp(ctx, jobID, lastErr)
			}
		}
		again = append(again, window[len(acks):]...)
		lines = append(again, lines[len(window):]...)
		if len(again) == 0 {
			pause = resendPauseMin
			continue
		}
		select {
		case <-ctx.Done():
			return l.resendGaveUp(ctx, jobID, lastErr)
		case <-time.After(pause):
		}
		pause = min(2*pause, resendPauseMax)
	}
	return nil
}

func (l *Logs) resendGaveUp(ctx context.Context, jobID string, lastErr error) error {
	err := ctx.Err()
	if lastErr != nil {
		err = lastErr
	}
	if l.lost != nil {
		l.lost(jobID, fmt.Errorf("sent again: %w", err))
	}
	return fmt.Errorf("append log lines of job %s again: %w", jobID, err)
}

// resendPauseMin and resendPauseMax pace the tries of lines sent again,
// doubling: a NATS cluster elects a new leader within seconds.
// resendWindow bounds the lines sent again awaiting their acks, a tenth of
// the 4,000 that nats.go lets a connection's lines await: the lines of the
// jobs still running are sent meanwhile.
const (
	resendPauseMin = 50 * time.Millisecond
	resendPauseMax = time.Second
	resendWindow   = 400
)

// Read returns a job's stored lines, each once (a line sent again after
// its ack was lost may be stored twice), in the order stored, but for the
// numbered lines of each run of an attempt, which come in their numbers'
// order: a line whose ack failed is sent again once the attempt ended,
// after the lines that followed it were stored (those the connection held
// while it was cut are flushed when it is made again), and jetjob logs
// showed an attempt's first lines after its last. Follow passes lines as
// they are stored.
func (l *Logs) Read(ctx context.Context, jobID string) ([]LogLine, error) {
	var out []LogLine
	err := l.follow(ctx, jobID, nil, func(line LogLine) { out = append(out, line) })
	inNumberOrder(out)
	return out, err
}

// inNumberOrder sorts the numbered lines of each lease among the places
// they hold, and leaves the other lines where they are: the lines of runs
// that ran at the same time (a cut-off attempt writing on while its retry
// runs) stay interleaved as stored, and the server's lines (a hang, a
// cancel not acknowledged) stay between the lines they were written among.
func inNumberOrder(lines []LogLine) {
	places := map[uint64][]int{}
	unsorted := map[uint64]bool{}
	for i, l := range lines {
		if l.Lease == 0 || l.Number <= 0 {
			continue
		}
		at := places[l.Lease]
		if len(at) > 0 && lines[at[len(at)-1]].Number > l.Number {
			unsorted[l.Lease] = true
		}
		places[l.Lease] = append(at, i)
	}
	for lease := range unsorted {
		at := places[lease]
		run := make([]LogLine, len(at))
		for k, i := range at {
			run[k] = lines[i]
		}
		slices.SortStableFunc(run, func(a, b LogLine) int { return cmp.Compare(a.Number, b.Number) })
		for k, i := range at {
			lines[i] = run[k]
		}
	}
}

// Follow passes a job's lines to fn, then new ones as they come, until finished
// reports true (it is asked a few times a second) and every line stored by
// then has been passed to fn (it returns nil), or until ctx ends (it returns
// an error matching ctx.Err(), since lines may be left unpassed). A line
// stored twice is passed once. It rides
// out a server restart, each line passed once, for as long as its
// connection tries to reconnect: a connection closed ends it with an error,
// and so does a server that does not answer, the connection up, for more
// than 10 s. With finished nil it passes the lines stored
// when it was called (riding out failed fetches the same way), and returns.
func (l *Logs) Follow(ctx context.Context, jobID string, finished func(context.Context) bool, fn func(LogLine)) error {
	return l.follow(ctx, jobID, finished, fn)
}

func (l *Logs) follow(ctx context.Context, jobID string, finished func(context.Context) bool, fn func(LogLine)) error {
	if err := statemachine.ValidateJobID(jobID); err != nil {
		return err
	}
	var delivered uint64
	read := readLines{}
	// lastStored is 0 for a job without lines, asked of the stream's
	// leader: a direct get may be answered by a replica that has not caught
	// up (a node restarted serves them once 90% caught up), which holds
	// none of a job's last lines, or not its last. A lookup that failed
	// (the stream electing a leader, the connection cut) is an error, not
	// "no lines". Either way jetjob logs printed nothing, or stopped short,
	// and exited 0 for a finished job whose lines were all stored.
	lastStored := func() (uint64, error) { return l.leaderLastSeq(ctx, jobID) }
	// A follow rides out a server restart (the consumer is made again,
	// from the line after the last one passed), as watch does; an outage
	// longer than followOutage ends it.
	var failingSince time.Time
	failed := func(err error) error {
		if failingSince.IsZero() {
			failingSince = time.Now()
		}
		// A read of the lines stored rides out a failed fetch too: on a
		// cluster, the pull of a consumer just made is answered "no
		// responders" until its node's interest reaches the one the client
		// is on, and jetjob logs failed so now and then with the
		// cluster at rest.
		if errors.Is(err, nats.ErrConnectionClosed) {
			return fmt.Errorf("read logs of job %s: %w", jobID, err)
		}
		if nc := l.js.Conn(); !nc.IsConnected() && !nc.IsClosed() {
			// The connection is away (the NATS down, or refusing its
			// user): how long to wait for it is its own to say, and it
			// closes once it gives up, which ends the follow. A follow
			// ended after 10 s of a refusal its connection outlasted.
			failingSince = time.Now()
		}
		if time.Since(failingSince) > followOutage {
			// Said as the commands say a log that does not answer: alone,
			// NATS's "context deadline exceeded" told nothing of why, nor
			// that trying again is what to do.
			return fmt.Errorf("read logs of job %s: the logs stream did not answer for %s (a NATS cluster electing a leader takes seconds; try again): %w",
				jobID, followOutage, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(followRetryPause):
		}
		return nil
	}
	// The consumer is made once, and made again, from the line after the
	// last one passed, only when a fetch failed or lines went missing (a
	// gap in its sequence, or lines stored past the last one passed that
	// it has none of: a reconnect lost what was sent meanwhile): what
	// nats.go's ordered consumer does at every fetch. It made one when it
	// was made and another at its first fetch, and one more at each fetch
	// after: two for every read, and four a second for as long as a
	// follow waited for lines.
	var cons jetstream.Consumer
	var consumed uint64 // the consumer's sequence of the last line it delivered
	defer func() {
		if cons != nil {
			_ = consume.DeleteOrdered(l.js, LogsStream, cons)
		}
	}()
	// remake drops the consumer, for the next fetch to make it anew. Its
	// delete is not waited for: the NATS may be away.
	remake := func() {
		old := cons
		cons = nil
		go func() { _ = consume.DeleteOrdered(l.js, LogsStream, old) }()
	}
	// makeConsumer is made at the first fetch (a read of a job without
	// lines makes none), and asked again as a fetch is: made while the
	// stream elects a leader, it failed at once, and jetjob logs with it.
	makeConsumer := func() (retry bool, err error) {
		c, err := l.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       delivered + 1,
			FilterSubject:     logSubject(jobID),
			AckPolicy:         jetstream.AckNonePolicy,
			InactiveThreshold: 5 * time.Minute,
			Replicas:          1,
			MemoryStorage:     true,
		})
		switch {
		case err == nil:
			cons, consumed = c, 0
			return false, nil
		case ctx.Err() != nil:
			return false, fmt.Errorf("read logs of job %s: %w", jobID, ctx.Err())
		}
		return true, failed(err)
	}
	// askLast is lastStored, ok false after a lookup that failed and is
	// to be tried again (failed paced it), an error once that is over.
	askLast := func() (last uint64, ok bool, err error) {
		last, err = lastStored()
		switch {
		case err == nil:
			return last, true, nil
		case ctx.Err() != nil:
			return 0, false, fmt.Errorf("read logs of job %s: %w", jobID, ctx.Err())
		}
		return 0, false, failed(err)
	}
	target := uint64(0)
	// reachedLast sets target to the last line stored and reports whether
	// the lines delivered reach it (or there are none), or that the lookup
	// failed and is to be asked again.
	reachedLast := func() (end, again bool, err error) {
		last, ok, err := askLast()
		if err != nil || !ok {
			return false, err == nil, err
		}
		target = last
		return target == 0 || delivered >= target, false, nil
	}
	if finished == nil {
		for {
			last, ok, err := askLast()
			if err != nil {
				return err
			}
			if ok {
				target = last
				break
			}
		}
		failingSince = time.Time{}
		if target == 0 {
			return nil
		}
	}
	for {
		if finished != nil && target == 0 && finished(ctx) {
			end, again, err := reachedLast()
			if err != nil || end {
				return err
			}
			if again {
				continue
			}
		}
		if cons == nil {
			if retry, err := makeConsumer(); err != nil || retry {
				if err != nil {
					return err
				}
				continue
			}
		}
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(l.fetchWait))
		if ctx.Err() != nil {
			// Not nil: a caller told nil would take the lines it got for
			// all of them.
			return fmt.Errorf("read logs of job %s: %w", jobID, ctx.Err())
		}
		if err != nil {
			remake()
			if err := failed(err); err != nil {
				return err
			}
			continue
		}
		got, skipped := 0, false
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil || meta.Sequence.Consumer != consumed+1 {
				// Lines sent and lost (or a consumer made again by the
				// server, counting anew): they are read again from the
				// line after the last one passed.
				skipped = true
				break
			}
			consumed = meta.Sequence.Consumer
			if meta.Sequence.Stream <= delivered {
				continue // passed already
			}
			var line LogLine
			if json.Unmarshal(m.Data(), &line) == nil && !read.again(line) {
				fn(line)
			}
			delivered = meta.Sequence.Stream
			if target != 0 && delivered >= target {
				// Every line asked for is passed: the fetch would wait out
				// the rest of its quarter second for lines not asked for,
				// and every jetjob logs took that long at least. The
				// consumer's delete ends the fetch.
				return nil
			}
		}
		if got == 0 && target != 0 && delivered < target {
			// The lines up to target may have been removed since (the job
			// purged): a read waiting for them waited forever.
			end, again, err := reachedLast()
			if err != nil || end {
				return err
			}
			if again {
				continue
			}
			// Lines stored past those passed, and the consumer has none
			// to give: it sent them and they were lost on the way (a
			// connection dropped), and it needs no acks, so it never sends
			// them again. No later line shows the gap when they were the
			// last: they are read again from the line after the last one
			// passed. A fetch that failed is paced as such below.
			if err := batch.Error(); err == nil || errors.Is(err, jetstream.ErrNoMessages) {
				skipped = true
			}
		}
		if skipped {
			remake()
			continue
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			remake()
			if err := failed(err); err != nil {
				return err
			}
			continue
		}
		failingSince = time.Time{}
		if target != 0 && delivered >= target {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("read logs of job %s: %w", jobID, ctx.Err())
		}
	}
}

// leaderLastSeq is the sequence of the job's last line as the stream's
// leader holds it, 0 for none.
func (l *Logs) leaderLastSeq(ctx context.Context, jobID string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, leaderAskTimeout)
	defer cancel()
	last, err := consume.LastSeqOnLeader(ctx, l.js.Conn(), l.msgGet, logSubject(jobID))
	if err != nil {
		return 0, fmt.Errorf("last line of job %s: %w", jobID, err)
	}
	return last, nil
}

// leaderAskTimeout bounds one question to the stream's leader; a follow
// asks again, for up to followOutage, while none answers.
const leaderAskTimeout = 5 * time.Second

// logsFetchWait bounds a fetch of a follow, which asks whether the job
// has finished between fetches, a few times a second.
const logsFetchWait = 250 * time.Millisecond

// followOutage is how long a follow waits for the server to answer again;
// followRetryPause paces its tries meanwhile.
const (
	followOutage     = 10 * time.Second
	followRetryPause = 250 * time.Millisecond
)

// Mark is the sequence of the last line stored so far, for Forget.
func (l *Logs) Mark(ctx context.Context) (uint64, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("mark logs: %w", err)
	}
	return info.State.LastSeq, nil
}

// Forget deletes a job's lines stored up to mark (when the job is purged):
// a job submitted again under the same key has the same ID, and its lines,
// stored after the mark, stay.
func (l *Logs) Forget(ctx context.Context, jobID string, mark uint64) error {
	// The ID goes into a purge's subject filter, where a wildcard would
	// name every job's lines.
	if err := statemachine.ValidateJobID(jobID); err != nil {
		return err
	}
	if err := l.stream.Purge(ctx, jetstream.WithPurgeSubject(logSubject(jobID)), jetstream.WithPurgeSequence(mark+1)); err != nil {
		return fmt.Errorf("forget logs of job %s: %w", jobID, err)
	}
	return nil
}
