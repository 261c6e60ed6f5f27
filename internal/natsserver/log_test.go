package natsserver

import (
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The embedded server writes no log of its own: what it reports reaches
// jetjob's logger, its errors always, its start-up notices only at debug.
func TestTheServersOwnLogReachesTheLogger(t *testing.T) {
	for _, tc := range []struct {
		level   zapcore.Level
		notices bool
	}{
		{zapcore.InfoLevel, false},
		{zapcore.DebugLevel, true},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			core, logs := observer.New(tc.level)
			s, err := Start(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: zap.New(core)})
			require.NoError(t, err)
			defer s.Shutdown()

			// A client that speaks no NATS makes the server report a parser error.
			u, err := url.Parse(s.ClientURL())
			require.NoError(t, err)
			conn, err := net.Dial("tcp", u.Host)
			require.NoError(t, err)
			defer conn.Close()
			_, err = conn.Write([]byte("NOT NATS\r\n"))
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				return logs.FilterLoggerName("nats-server").FilterLevelExact(zapcore.ErrorLevel).Len() > 0
			}, 5*time.Second, 10*time.Millisecond, "the parser error")

			banner := logs.FilterLoggerName("nats-server").FilterMessage("Starting nats-server").Len() > 0
			require.Equal(t, tc.notices, banner, "the start-up notice")
		})
	}
}
