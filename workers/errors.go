package workers

import (
	"errors"

	"github.com/jetjob/jetjob/statemachine"
)

var (
	// ErrInvalidConfig: a pool or service config that cannot run.
	ErrInvalidConfig = errors.New("invalid workers config")
	// ErrCanceled is the cause of a handler's context when its job was canceled.
	ErrCanceled = errors.New("job canceled")
	// ErrLeaseLost is the cause of a handler's context when its attempt lost the
	// job (declared hung, or terminated). It is statemachine.ErrLeaseLost,
	// which a refused report matches too.
	ErrLeaseLost = statemachine.ErrLeaseLost
	// ErrShutdown is the cause of a handler's context when the pool stopped
	// before the handler finished within the grace period.
	ErrShutdown = errors.New("worker shutting down")
	// ErrStopped: Start of a pool that was stopped; make a new one.
	ErrStopped = errors.New("the pool was stopped; a stopped pool does not start again, make a new one")
	// ErrLostContact is the cause of a handler's context when none of its
	// heartbeats reached the server for half the server's hang-after: the
	// attempt is about to be failed as hung and retried elsewhere. Unless
	// the handler then returns nil, the pool fails the attempt with
	// ErrorCodeLostContact if it still holds the job when contact returns.
	ErrLostContact = errors.New("lost contact with the server")
	// ErrNoQueues: a pool started where no jetjob server of this version
	// laid out the work queue: none has run on that NATS yet, or an older
	// one keeps its queue otherwise. Such a pool would serve nothing.
	ErrNoQueues = errors.New("no jetjob work queue on this NATS server")
	// ErrNoLogs: AttachLogs where no jetjob server laid out the job logs
	// stream: none has run on that NATS yet.
	ErrNoLogs = errors.New("no jetjob job logs stream on this NATS server")
	// ErrNotRecorded: Stop could not record the result of some handlers, or
	// hand back their jobs; those jobs stay running until the hang detector
	// fails their attempt.
	ErrNotRecorded = errors.New("results not recorded")
	// ErrJobTimeout is the cause of a handler's context when it ran longer
	// than the pool's JobTimeout; the attempt fails with ErrorCodeTimeout.
	ErrJobTimeout = errors.New("job ran past its timeout")
	// ErrHandlerExited fails an attempt whose handler called runtime.Goexit
	// (as testing's FailNow and SkipNow do) instead of returning. The job is
	// retried if it has attempts left, as after a panic.
	ErrHandlerExited = errors.New("handler exited without returning (runtime.Goexit)")
	// ErrAttemptOver refuses a result set after the attempt's handler
	// returned (from a goroutine it left running): the attempt's end was
	// recorded with the result it had then.
	ErrAttemptOver = errors.New("the attempt is over: its handler returned")
)

// NoRetryError fails a job without retrying it, attempts left or not.
type NoRetryError struct{ Err error }

func (e *NoRetryError) Error() string {
	if e.Err == nil {
		return "failed without retry"
	}
	return e.Err.Error()
}

// Unwrap gives the wrapped error.
func (e *NoRetryError) Unwrap() error { return e.Err }

// NoRetry wraps err so that the job fails for good. NoRetry(nil) fails it
// too, with the error "failed without retry": a handler that succeeds
// returns nil itself.
func NoRetry(err error) error { return &NoRetryError{Err: err} }

// CodedError gives a failed attempt an error code.
type CodedError struct {
	Code string
	Err  error
}

func (e *CodedError) Error() string {
	if e.Err == nil {
		return "failed with code " + e.Code
	}
	return e.Err.Error()
}

// Unwrap gives the wrapped error.
func (e *CodedError) Unwrap() error { return e.Err }
