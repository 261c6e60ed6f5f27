package workers

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// troubleEvery spaces the lines of a repeated failure.
const troubleEvery = 10 * time.Second

// troubleLog says a repeated failure when it first comes, and then at most
// once per troubleEvery, with how many more came since: a server that
// cannot write (a full disk) fails every acquire and every log line, and a
// line for each flooded the worker's own log, hundreds a second.
type troubleLog struct {
	logger *zap.Logger
	msg    string

	mu      sync.Mutex
	closed  bool
	quietTo time.Time
	more    int
	last    error
	flush   *time.Timer
}

func newTroubleLog(logger *zap.Logger, msg string) *troubleLog {
	return &troubleLog{logger: logger, msg: msg}
}

func (t *troubleLog) add(err error, fields ...zap.Field) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	now := time.Now()
	if now.Before(t.quietTo) {
		t.more++
		t.last = err
		if t.flush == nil {
			// The count is said when the quiet ends, should no failure
			// come after it.
			t.flush = time.AfterFunc(t.quietTo.Sub(now), t.sayMore)
		}
		t.mu.Unlock()
		return
	}
	t.quietTo = now.Add(troubleEvery)
	t.mu.Unlock()
	t.logger.Warn(t.msg, append(fields, zap.Error(err))...)
}

func (t *troubleLog) sayMore() {
	t.mu.Lock()
	more, last := t.more, t.last
	t.more, t.last, t.flush = 0, nil, nil
	t.quietTo = time.Now().Add(troubleEvery)
	t.mu.Unlock()
	if more > 0 {
		t.logger.Warn(t.msg, zap.Int("times_since_last_said", more), zap.NamedError("last_error", last))
	}
}

// close says the count not yet said, and nothing after: the logger's owner
// may be gone (a stopped pool's acks can time out seconds later).
func (t *troubleLog) close() {
	t.sayMore()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	if t.flush != nil {
		t.flush.Stop()
		t.flush = nil
	}
}
