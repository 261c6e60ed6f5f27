package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/logging"
)

// deniedError is a subject the NATS server refused the command's user.
type deniedError struct{ err error }

func (e *deniedError) Error() string {
	what := strings.TrimPrefix(e.err.Error(), nats.ErrPermissionViolation.Error()+": ")
	return fmt.Sprintf("NATS refused this user: %s (jetjob's users need to publish to $JS.>, $KV.> and jj.>, and to subscribe to _INBOX.>, $JS.EVENT.> and jj.>; a server's user to publish to _INBOX.> too: see the README's \"NATS permissions\")", what)
}

func (e *deniedError) Unwrap() error { return e.err }

// denyKey holds in a command's ctx the cancel that ends it on a refusal.
type denyKey struct{}

// withDenial returns ctx, to be ended by the first subject the NATS server
// refuses the command's user (see natsErrors).
func withDenial(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	ctx, deny := context.WithCancelCause(ctx)
	return context.WithValue(ctx, denyKey{}, deny), deny
}

// denial returns the refusal that ended ctx, if one did.
func denial(ctx context.Context) (*deniedError, bool) {
	var denied *deniedError
	ok := errors.As(context.Cause(ctx), &denied)
	return denied, ok
}

// natsErrors logs the NATS client's asynchronous errors, and ends ctx's
// command at the first subject the server refuses its user: nats.go hears
// a refused request as one unanswered, so the command waited out its
// timeouts (15 s, a worker 36 s) to say that the server did not answer.
func natsErrors(ctx context.Context, logger *zap.Logger) nats.Option {
	return nats.ErrorHandler(natsErrorHandler(ctx, logger))
}

func natsErrorHandler(ctx context.Context, logger *zap.Logger) nats.ErrHandler {
	logged := logging.NATSErrorHandler(logger)
	deny, _ := ctx.Value(denyKey{}).(context.CancelCauseFunc)
	return func(nc *nats.Conn, sub *nats.Subscription, err error) {
		if deny != nil && errors.Is(err, nats.ErrPermissionViolation) {
			deny(&deniedError{err: err}) // the command's error line says it
			return
		}
		logged(nc, sub, err)
	}
}
