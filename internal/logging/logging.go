// Package logging builds the zap loggers that jetjob's commands inject into
// its components.
package logging

import (
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
