package natsserver

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// serverLog hands nats-server's own log to jetjob's: its warnings and
// errors (a full disk, a store it could not recover, resources exceeded)
// would otherwise go nowhere, since an embedded server writes no log of its
// own. Its notices are mostly the start-up banner, so they are debug
// lines, as are its debug lines; traces are dropped.
type serverLog struct {
	l     *zap.Logger
	alarm *storageAlarm
}

func (s serverLog) Noticef(format string, v ...any) { s.at(zapcore.DebugLevel, format, v) }
func (s serverLog) Warnf(format string, v ...any)   { s.at(zapcore.WarnLevel, format, v) }

// Fatalf is an error line: nats-server's own logger would end the process,
// which is not the embedded server's to decide; the caller sees the server
// fail to start or stop accepting clients.
func (s serverLog) Fatalf(format string, v ...any) { s.at(zapcore.ErrorLevel, format, v) }
func (s serverLog) Errorf(format string, v ...any) { s.at(zapcore.ErrorLevel, format, v) }
func (s serverLog) Debugf(format string, v ...any) { s.at(zapcore.DebugLevel, format, v) }
func (s serverLog) Tracef(string, ...any)          {}

// at formats a line only when its level is logged; the line is checked
// again with its message, which a sampling logger groups lines by.
func (s serverLog) at(level zapcore.Level, format string, v []any) {
	if level >= zapcore.WarnLevel && s.alarm != nil {
		s.alarm.heard(fmt.Sprintf(format, v...))
	}
	if !s.l.Core().Enabled(level) {
		return
	}
	if ce := s.l.Check(level, fmt.Sprintf(format, v...)); ce != nil {
		ce.Write()
	}
}
