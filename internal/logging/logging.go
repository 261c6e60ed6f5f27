// Package logging builds the zap loggers that jetjob's commands inject into
// its components.
package logging

import (
	"errors"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a console logger to stderr at info level, or debug when verbose.
func New(verbose bool) *zap.Logger {
	cfg := zap.NewDevelopmentConfig()
	cfg.DisableStacktrace = true
	cfg.DisableCaller = true
	cfg.EncoderConfig.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	cfg.Level = zap.NewAtomicLevelAt(level)
	logger, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return logger
}

// OrNop returns l, or a no-op logger when l is nil, named for a component.
func OrNop(l *zap.Logger, name string) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return l.Named(name)
}

// NATSErrors routes the NATS client's asynchronous errors to l: without it
// the client prints them on stderr in a format of its own.
func NATSErrors(l *zap.Logger) nats.Option { return nats.ErrorHandler(NATSErrorHandler(l)) }

// NATSErrorHandler logs the NATS client's asynchronous errors to l, for a
// handler that does more with them. A consumer the server forgot across a
// restart is made again by its owner, so that one is only debug; a refusal
// of the connection's user says so.
func NATSErrorHandler(l *zap.Logger) nats.ErrHandler {
	l = OrNop(l, "nats")
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		fields := []zap.Field{zap.Error(err)}
		if sub != nil {
			fields = append(fields, zap.String("subject", sub.Subject))
		}
		if errors.Is(err, nats.ErrConsumerNotActive) {
			l.Debug("asynchronous error", fields...)
			return
		}
		for _, r := range refusedUser {
			if errors.Is(err, r.err) {
				// Heard on a running connection or its reconnect: the
				// NATS's users changed under a running process (a
				// configuration reloaded, credentials rotated, revoked
				// or expired).
				l.Warn("NATS refused this connection's user"+r.says, fields...)
				return
			}
		}
		l.Warn("asynchronous error", fields...)
	}
}

// refusedUser words each refusal of a connection's user nats.go reports
// (internal/server.RefusalOf tells them too; it imports this package).
var refusedUser = []struct {
	err  error
	says string
}{
	{nats.ErrAuthorization, " on reconnecting: check its credentials against the NATS's configuration"},
	{nats.ErrAuthExpired, ": its credentials expired: renew them (a creds file renewed in place is read at the next reconnect)"},
	{nats.ErrAuthRevoked, ": its credentials were revoked"},
	// The account's JWT, which the operator issues: the user's own
	// credentials may be in date.
	{nats.ErrAccountAuthExpired, ": its account expired: ask the NATS's operator to renew the account's JWT"},
}
