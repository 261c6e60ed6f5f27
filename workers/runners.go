package workers

import (
	"context"
	"sync/atomic"
	"time"
)

// runnerIdleDefault is how long a runner goroutine waits for another job
// before it ends.
const runnerIdleDefault = 10 * time.Second

// runners runs each job on a goroutine kept from an earlier job when one is
// idle. Decoding and acquiring a job grows a goroutine's stack by copying it,
// several times over; a fresh goroutine per job paid those copies on every
// job, about 4% of a busy pool's CPU.
type runners struct {
	ctx  context.Context
	work chan func()
	idle time.Duration
	// started counts the goroutines started, live those not ended yet:
	// tests read them.
	started, live atomic.Int64
}

func newRunners(ctx context.Context, idle time.Duration) *runners {
	return &runners{ctx: ctx, work: make(chan func()), idle: idle}
}

// run hands fn to an idle runner, or starts one. It never waits.
func (r *runners) run(fn func()) {
	select {
	case r.work <- fn:
	default:
		r.started.Add(1)
		r.live.Add(1)
		go r.loop(fn)
	}
}

// loop runs fn, then whatever it is handed next, until it has been idle for
// r.idle or the pool stops.
func (r *runners) loop(fn func()) {
	defer r.live.Add(-1)
	idle := time.NewTimer(r.idle)
	defer idle.Stop()
	for {
		fn()
		idle.Reset(r.idle)
		select {
		case fn = <-r.work:
		case <-idle.C:
			return
		case <-r.ctx.Done():
			return
		}
	}
}
