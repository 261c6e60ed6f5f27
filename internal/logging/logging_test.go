package logging

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestNATSErrorsGoToTheLogger(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	opts := nats.GetDefaultOptions()
	require.NoError(t, NATSErrors(zap.New(core))(&opts))
	require.NotNil(t, opts.AsyncErrorCB)

	opts.AsyncErrorCB(nil, &nats.Subscription{Subject: "$KV.jj_settings.hang_after"}, nats.ErrConsumerNotActive)
	opts.AsyncErrorCB(nil, nil, errors.New("slow consumer"))
	opts.AsyncErrorCB(nil, nil, nats.ErrAuthorization)
	opts.AsyncErrorCB(nil, nil, nats.ErrAccountAuthExpired)

	entries := logs.AllUntimed()
	require.Len(t, entries, 4)
	require.Equal(t, zapcore.DebugLevel, entries[0].Level, "a consumer its owner makes again")
	require.Equal(t, "nats", entries[0].LoggerName)
	require.Equal(t, "$KV.jj_settings.hang_after", entries[0].ContextMap()["subject"])
	require.Equal(t, zapcore.WarnLevel, entries[1].Level)
	require.Equal(t, "slow consumer", entries[1].ContextMap()["error"])
	require.Equal(t, zapcore.WarnLevel, entries[2].Level)
	require.Contains(t, entries[2].Message, "NATS refused this connection's user", "a refusal says so")
	require.Contains(t, entries[3].Message, "NATS refused this connection's user: its account expired", "an account's expiry says so")

	// Without a logger, they go nowhere rather than to stderr.
	quiet := nats.GetDefaultOptions()
	require.NoError(t, NATSErrors(nil)(&quiet))
	quiet.AsyncErrorCB(nil, nil, errors.New("x"))
}
