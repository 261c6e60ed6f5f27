package server

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/logging"
)

// RefusedWaitMax caps the wait between reconnects while the NATS refuses
// the connection's user: each refusal doubles the connection's reconnect
// wait, up to this. A worker refused for good tried every 250 ms and
// logged each refusal, four lines a second; fixed credentials are still
// taken within this of the NATS's reload.
const RefusedWaitMax = 5 * time.Second

// ReconnectOption adjusts KeepReconnecting.
type ReconnectOption func(*reconnects)

// GiveUpAfter has a connection that keeps reconnecting through refusals
// give up on a NATS that is gone: after tries reconnects in a row, none
// of them refused (a refusal says the NATS is there), giveUp is called,
// once, to close the connection. A command following something (watch,
// logs -f) rides out refusals but ends when its server is gone, as
// nats.go's MaxReconnects ended it, which counts refusals too.
func GiveUpAfter(tries int, giveUp func()) ReconnectOption {
	return func(r *reconnects) { r.giveUpAfter, r.giveUp = tries, giveUp }
}

// KeepReconnecting makes a long-running process's connection (a server's,
// a worker's, a watch's) try again after the NATS refused its user on a
// reconnect, as it tries again after the NATS went down, and says in the
// log when it is back. nats.go gives up after the same refusal twice and
// closes the connection for good: a NATS whose configuration was reloaded
// with a user changed, then changed back, left the process running and
// serving nothing. Each refusal reaches the connection's error handler,
// which logs it, and doubles the wait before the next try, up to
// RefusedWaitMax, so that a process refused for good does not flood its
// log (a NATS down is tried at the connection's ReconnectWait). Give it
// after the error handler (nats.ErrorHandler), which it wraps to hear the
// refusals. A refusal of the first connect still ends the start: trying
// again cannot change it, and the user is there to fix it.
func KeepReconnecting(logger *zap.Logger, url string, opts ...ReconnectOption) nats.Option {
	logger = logging.OrNop(logger, "nats")
	r := &reconnects{}
	for _, opt := range opts {
		opt(r)
	}
	return func(o *nats.Options) error {
		o.IgnoreAuthErrorAbort = true
		o.ReconnectedCB = func(*nats.Conn) { logger.Info("reconnected to NATS", zap.String("nats", RedactURL(url))) }
		heard := o.AsyncErrorCB
		o.AsyncErrorCB = func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if sub == nil && RefusalOf(err) != NotRefused {
				r.refused()
			}
			if heard != nil {
				heard(nc, sub, err)
			}
		}
		// Read at each wait, not now: the options given after this one
		// (ReconnectWait, the jitter, TLS) are the connection's too. The
		// jitter is nats.go's, which it leaves out of a custom wait.
		o.CustomReconnectDelayCB = func(passes int) time.Duration {
			jitter := o.ReconnectJitter
			if o.Secure || o.TLSConfig != nil {
				jitter = o.ReconnectJitterTLS
			}
			return r.wait(passes, o.ReconnectWait, jitter)
		}
		return nil
	}
}

// reconnects is what KeepReconnecting knows of a connection's reconnects.
type reconnects struct {
	giveUpAfter int
	giveUp      func()
	gaveUp      atomic.Bool
	// refusals heard in this run of reconnects; quiet counts its tries
	// since the last (or since the run began).
	refusals, quiet atomic.Int64
}

func (r *reconnects) refused() {
	r.refusals.Add(1)
	r.quiet.Store(0)
}

// wait is the wait before the passes-th pass over the NATS's servers of a
// run of reconnects (from 1: nats.go waits before its first try, and a
// connection's run ends when it is back).
func (r *reconnects) wait(passes int, base, jitter time.Duration) time.Duration {
	if passes == 1 {
		// A refusal is heard after the try it ended (the error handler
		// runs apart), so one from the last run cannot come now: it
		// ended with the NATS taking the connection.
		r.refusals.Store(0)
		r.quiet.Store(0)
	} else if q := r.quiet.Add(1); r.giveUpAfter > 0 && q >= int64(r.giveUpAfter) && r.gaveUp.CompareAndSwap(false, true) {
		// Not here: nats.go calls this in its reconnect loop, which a
		// close waits for.
		go r.giveUp()
	}
	d := base
	for n := r.refusals.Load(); n > 0 && d < RefusedWaitMax; n-- {
		d *= 2
	}
	if d > RefusedWaitMax && base < RefusedWaitMax {
		d = RefusedWaitMax
	}
	if jitter > 0 {
		d += rand.N(jitter)
	}
	return d
}
