package maintenance

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// ledService runs a pass periodically while its server holds a leadership:
// the Start/Stop half that Detector and Purger share.
type ledService struct {
	// mu serializes start and stop; the passes never take it.
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// failureSaidEvery spaces the lines of a failure repeated at every tick.
const failureSaidEvery = 30 * time.Second

// ledPass is one pass of a led service; fresh is true on the first pass
// since this server took the leadership (another may have left its work
// half done). It returns how long it spent reading what the server keeps
// (every view, say) to find its work, which sets the pause (pauseAfter).
type ledPass func(ctx context.Context, fresh bool) (scan time.Duration, err error)

// start runs pass every `every` while leader is held, renewing the
// leadership at a third of its TTL. Safe to call twice.
func (s *ledService) start(ctx context.Context, leader *Leadership, every time.Duration, logger *zap.Logger, pass ledPass) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	// Runs until stop, as the projector, enqueuer and pools do: a Start
	// context that ends (a timeout on the setup) must not silently turn
	// hang detection or purging off.
	ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		tick := time.NewTicker(min(every, leader.ttl/3))
		defer tick.Stop()
		var last, leadershipSaid time.Time
		pause := every
		fresh := true
		for {
			lead, err := leader.TryLead(ctx)
			// Said at a pace: a server that cannot write fails every try.
			if err != nil && ctx.Err() == nil && time.Since(leadershipSaid) >= failureSaidEvery {
				logger.Warn("leadership", zap.Error(err))
				leadershipSaid = time.Now()
			}
			if !lead {
				fresh = true
			}
			if lead && time.Since(last) >= pause {
				last = time.Now()
				var scan time.Duration
				err := passWhileLeading(ctx, leader, logger, func(ctx context.Context) (err error) {
					scan, err = pass(ctx, fresh)
					return err
				})
				if err != nil && ctx.Err() == nil {
					logger.Warn("pass failed", zap.Error(err))
				}
				fresh = false
				pause = pauseAfter(every, scan)
				if pause > every {
					logger.Debug("a long scan: the next pass waits longer", zap.Duration("scan", scan), zap.Duration("pause", pause))
				}
			}
			select {
			case <-ctx.Done():
				leader.Resign(context.Background())
				return
			case <-tick.C:
			}
		}
	}()
}

// pauseAfter is the time from the start of a pass whose scan took `scan`
// to the start of the next, for a service that passes every `every`: at
// least ten times the scan, so that scans, whose cost grows with what the
// server keeps (each reads every view), take at most a tenth of its time
// however many jobs it keeps. The work a pass then does (failing hung
// jobs, purging) does not stretch the pause: a pass that had more to do
// than its budget is followed as soon as `every` allows.
func pauseAfter(every, scan time.Duration) time.Duration {
	return max(every, 10*scan)
}

// stop ends the passes and resigns. Safe to call twice.
// Held for the whole stop, the lock makes a second stop return only once
// the passes ended, and a start made meanwhile start them anew after it
// (it returned at once, and nothing ran).
func (s *ledService) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel, s.done = nil, nil // start runs the passes again
}

// passWhileLeading runs pass and renews the leadership while it runs: a pass
// longer than the TTL (thousands of jobs to purge) would otherwise let the
// key expire, and another server would take the role and do the same work
// beside it. A renewal that fails ends the pass, which is nil then: the
// work left is the new leader's.
func passWhileLeading(ctx context.Context, leader *Leadership, logger *zap.Logger, pass func(context.Context) error) error {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lost atomic.Bool
	renewing := make(chan struct{})
	go func() {
		defer close(renewing)
		tick := time.NewTicker(leader.ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
			if lead, err := leader.TryLead(pctx); !lead && pctx.Err() == nil {
				logger.Warn("lost the leadership during a pass: stopping the pass", zap.String("role", leader.role), zap.Error(err))
				lost.Store(true)
				cancel()
				return
			}
		}
	}()
	err := pass(pctx)
	cancel()
	<-renewing
	if lost.Load() {
		return nil
	}
	return err
}
