package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/statemachine"
)

// Handler runs one attempt of a job. Returning nil succeeds the job; an error
// fails the attempt (retried with backoff while attempts are left; wrap it
// with NoRetry to fail the job for good, or in a *CodedError to set its
// code). Its context is canceled, with the cause telling why, when the job is
// canceled (ErrCanceled: whatever it returns, the cancel is acknowledged),
// when the attempt lost the job (ErrLeaseLost: its result is dropped), when
// the worker lost contact with the server for half its hang-after
// (ErrLostContact: the attempt is about to be failed as hung), when it runs
// past PoolConfig.JobTimeout (ErrJobTimeout), or when the pool shuts down
// past its grace period (ErrShutdown: an error hands the job back). A
// handler that panics fails its attempt as the error "handler panicked:
// <value>" would, with the stack in the job's log (stderr) and the pool's;
// the pool runs on.
type Handler func(ctx context.Context, job *Job) error

// JSONHandler is a Handler for jobs whose payload is JSON of type T: h gets
// it decoded (an empty payload as T's zero value). A payload that does not
// decode into T fails the job without retry, since no retry would decode
// it; unknown fields are ignored, as encoding/json does.
func JSONHandler[T any](h func(ctx context.Context, job *Job, args T) error) Handler {
	return func(ctx context.Context, job *Job) error {
		var args T
		if len(job.Payload) > 0 {
			if err := json.Unmarshal(job.Payload, &args); err != nil {
				return NoRetry(fmt.Errorf("decode the payload as %T: %w", args, err))
			}
		}
		return h(ctx, job, args)
	}
}

// Job is the running attempt a handler gets. Its methods (Log, Logf,
// Progress, SetResult) are safe for concurrent use, from goroutines the
// handler starts.
type Job struct {
	ID       string
	Type     string
	Tags     map[string]string
	Meta     map[string]string
	Payload  []byte
	Priority int
	// Attempt counts from 1; the job fails for good when an attempt that
	// is its MaxAttempts-th fails.
	Attempt     int
	MaxAttempts int
	Lease       uint64
	WorkerID    string

	held statemachine.Job
	logs *Logs
	// resultMu guards result and over: a handler may set the result from
	// its goroutines, also ones still running after it returned.
	resultMu sync.Mutex
	result   json.RawMessage
	over     bool
	// lineMu numbers the attempt's lines and sends them in that order, from
	// however many goroutines (a command's stdout and stderr) they come.
	lineMu sync.Mutex
	lines  int64
	// inFlight holds the attempt's lines whose acks are still to come, in
	// the order sent; failed those whose acks failed, to be sent again
	// before the result (see linesStored), of its last LogLinesPerJob lines.
	inFlight []sentLine
	failed   []LogLine
}

// Log appends a line to the job's log. A line logged after the handler
// returned (by a goroutine it left running) is still appended, under its
// attempt, after the attempt's own lines.
func (j *Job) Log(line string) { j.logStream(StreamStdout, line) }

// Logf appends a formatted line to the job's log.
func (j *Job) Logf(format string, args ...any) { j.Log(fmt.Sprintf(format, args...)) }

func (j *Job) logStream(stream, line string) {
	j.appendLine(LogLine{Stream: stream, Line: line})
}

func (j *Job) appendLine(l LogLine) {
	j.lineMu.Lock()
	defer j.lineMu.Unlock()
	j.lines++
	l.Time, l.Attempt, l.Lease, l.Number = time.Now().UTC(), j.Attempt, j.Lease, j.lines
	j.settleLines()
	ack := j.logs.appendAsync(j.ID, l)
	if ack == nil {
		j.lineFailed(l)
		return
	}
	j.inFlight = append(j.inFlight, sentLine{line: l, ack: ack})
}

// sentLine is a line sent without waiting, and its ack to come.
type sentLine struct {
	line LogLine
	ack  jetstream.PubAckFuture
}

// settled reports whether the line's ack came, and whether it failed. An
// ack is read once: its channels hold it for one reader.
func (s sentLine) settled() (done, failed bool) {
	select {
	case <-s.ack.Ok():
		return true, false
	case <-s.ack.Err():
		return true, true
	default:
		return false, false
	}
}

// settleLines drops the lines stored from the front of inFlight and keeps
// those that failed, so that a chatty job holds only the lines whose acks
// are to come: one connection's lines to one stream are answered in order,
// a timed-out one no later than those after it. Called with lineMu held.
func (j *Job) settleLines() {
	n := 0
	for ; n < len(j.inFlight); n++ {
		done, failed := j.inFlight[n].settled()
		if !done {
			break
		}
		if failed {
			j.lineFailed(j.inFlight[n].line)
		}
	}
	j.inFlight = slices.Delete(j.inFlight, 0, n)
}

// lineFailed keeps l to be sent again. Only the attempt's last
// LogLinesPerJob lines are (see linesStored): the others are dropped once a
// quarter as many again have failed, not one by one, as a chatty job cut
// off from the server fails each line it writes, and moving the 10,000 kept
// at each made it write 1,000,000 lines 7 times slower. Called with lineMu
// held.
func (j *Job) lineFailed(l LogLine) {
	j.failed = append(j.failed, l)
	if len(j.failed) > LogLinesPerJob+LogLinesPerJob/4 {
		j.failed = slices.DeleteFunc(j.failed, func(f LogLine) bool { return f.Number <= j.lines-LogLinesPerJob })
	}
}

// linesStored waits until the server has answered for the lines the
// attempt sent so far, and sends again those whose ack failed (a NATS node
// lost or paused, the connection cut: a worker connected to a node that
// died lost every line it sent in the last seconds), in order, each until
// it is stored or resendFor has passed. It gives up when ctx ends or stop
// is closed: Stop closes stop when its ctx ends, and a result not recorded
// before the process exits is worse than lines read late, as the job would
// be failed as hung and run again. A result recorded before its lines would
// let a reader who saw the job end (`jetjob logs` after the job failed,
// `logs -f` stopping at the end) miss its last lines. A line sent again may
// have been stored all the same, its ack lost: readers pass over a line of
// a lease and number read before (see Logs.Read).
func (j *Job) linesStored(ctx context.Context, stop <-chan struct{}, resendFor time.Duration) {
	// Waited for and sent again without lineMu held: a goroutine the
	// handler left running logs on meanwhile, its lines not waited for.
	j.lineMu.Lock()
	sent := j.inFlight
	j.inFlight = nil
	j.lineMu.Unlock()
	var failed []LogLine
	for _, s := range sent {
		select {
		case <-s.ack.Ok():
		case <-s.ack.Err():
			failed = append(failed, s.line)
		case <-ctx.Done():
			return
		case <-stop:
			return
		}
	}
	j.lineMu.Lock()
	failed = append(j.failed, failed...)
	j.failed = nil
	last := j.lines
	j.lineMu.Unlock()
	// Only the attempt's last LogLinesPerJob lines are sent again: the
	// stream keeps a job's last LogLinesPerJob lines, and a line from
	// before them, stored now, pushed one of them out (a job that wrote
	// on for 10,000 lines after a cut lost its last ones to lines it
	// wrote before the cut).
	failed = slices.DeleteFunc(failed, func(l LogLine) bool { return l.Number <= last-LogLinesPerJob })
	// In the order written, not the order their acks failed: a line
	// refused at once (too many awaiting their acks) failed before the
	// earlier lines held with the server, and was stored before them.
	slices.SortFunc(failed, func(a, b LogLine) int { return cmp.Compare(a.Number, b.Number) })
	if len(failed) == 0 {
		return
	}
	rctx, cancel := timeoutOrClosed(ctx, resendFor, stop)
	defer cancel()
	_ = j.logs.resend(rctx, j.ID, failed) // said to the pool's log
}

// ResultLimit bounds a job's result, as JSON: a result is stored with the
// job's success in its history and view, for what a caller needs to read
// back (an artifact's URL, counts), not for the output itself.
const ResultLimit = 64 << 10

// SetResult sets what the attempt produced, recorded with its success (the
// job's view shows it as result) if the handler then returns nil; a later
// call replaces it. It is encoded as JSON here: a value that cannot be, or
// whose JSON is over ResultLimit, is refused with an error matching
// statemachine.ErrInvalid, and the result is left as it was. Once the
// handler has returned it is refused with ErrAttemptOver.
func (j *Job) SetResult(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: job %s: result: %w", statemachine.ErrInvalid, j.ID, err)
	}
	if len(data) > ResultLimit {
		return fmt.Errorf("%w: job %s: result of %d bytes as JSON, over the %d a result may be", statemachine.ErrInvalid, j.ID, len(data), ResultLimit)
	}
	j.resultMu.Lock()
	defer j.resultMu.Unlock()
	if j.over {
		return fmt.Errorf("set result of job %s attempt %d: %w", j.ID, j.Attempt, ErrAttemptOver)
	}
	j.result = data
	return nil
}

// Progress records how far the job is, from 0 to 1, with a short message. A
// fraction outside 0-1 is clamped to it; NaN records the message alone.
func (j *Job) Progress(fraction float64, msg string) {
	if math.IsNaN(fraction) {
		j.logStream(StreamProgress, msg)
		return
	}
	fraction = min(max(fraction, 0), 1)
	j.appendLine(LogLine{Stream: StreamProgress, Line: msg, Progress: &fraction})
}
