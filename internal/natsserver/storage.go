package natsserver

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// storageAlarm hears what nats-server says of its storage failing, and says
// it in words an operator acts on. A stream that failed a write (a full
// disk: "no space left on device") takes no more writes until the server
// restarts, and what it acknowledged but had not yet written (the views and
// queue messages, persisted asynchronously) may be lost, as in a death: the
// next start must check the views against the event log. JetStream's own
// storage limit, set as it starts to 75% of the disk space then free,
// refuses writes until its data shrinks, and loses nothing.
type storageAlarm struct {
	logger *zap.Logger
	// writeFailed is set once a write failed in this run.
	writeFailed atomic.Bool

	mu   sync.Mutex
	said map[storageTrouble]time.Time
}

type storageTrouble int

const (
	storageWriteFailed storageTrouble = iota + 1
	storageLimitReached
)

// storageAlarmEvery spaces the alarm's lines: nats-server repeats its own
// every few seconds while the trouble lasts.
const storageAlarmEvery = time.Minute

// classifyStorageLine tells a nats-server warning or error about its
// storage, by the words nats-server 2.15 uses.
func classifyStorageLine(msg string) storageTrouble {
	switch {
	case strings.Contains(msg, "resource limits exceeded"):
		return storageLimitReached
	case strings.Contains(msg, "Critical write error"),
		strings.Contains(msg, "failed to store a msg"),
		strings.Contains(msg, "will be DISABLED"),
		strings.Contains(msg, "disabling JetStream"):
		return storageWriteFailed
	}
	return 0
}

func (a *storageAlarm) heard(msg string) {
	trouble := classifyStorageLine(msg)
	if trouble == 0 {
		return
	}
	if trouble == storageWriteFailed {
		a.writeFailed.Store(true)
	}
	a.mu.Lock()
	if time.Since(a.said[trouble]) < storageAlarmEvery {
		a.mu.Unlock()
		return
	}
	a.said[trouble] = time.Now()
	a.mu.Unlock()
	switch trouble {
	case storageWriteFailed:
		a.logger.Error("the embedded NATS server failed to write to its data directory: a stream that failed a write takes no more "+
			"until the server restarts, and writes it acknowledged but had not yet made may be lost; free space (or repair the disk), "+
			"then restart jetjob server, whose next start checks every view against the event log", zap.String("nats_server_said", msg))
	case storageLimitReached:
		a.logger.Error("the embedded NATS server reached its storage limit, 75% of the disk space free when it started: writes are "+
			"refused until its data shrinks (jetjob purge) or it restarts with more space free", zap.String("nats_server_said", msg))
	}
}
