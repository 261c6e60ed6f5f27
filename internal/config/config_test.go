package config

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var errInvalid = errors.New("invalid test config")

func TestZeroTakesTheDefaultAndANegativeIsRefused(t *testing.T) {
	n := 0
	require.NoError(t, Default(errInvalid, "flushers", &n, 4))
	require.Equal(t, 4, n, "zero takes the default")

	n = 7
	require.NoError(t, Default(errInvalid, "flushers", &n, 4))
	require.Equal(t, 7, n, "a value given is kept")

	n = -1
	err := Default(errInvalid, "flushers", &n, 4)
	require.ErrorIs(t, err, errInvalid)
	require.EqualError(t, err, "invalid test config: flushers -1, expected 0 (the default, 4) or more")
	require.Equal(t, -1, n, "a refused value is left as it was")

	d := -time.Second
	err = Default(errInvalid, "ack wait", &d, 30*time.Second)
	require.ErrorIs(t, err, errInvalid)
	require.EqualError(t, err, "invalid test config: ack wait -1s, expected 0 (the default, 30s) or more")

	d = 0
	err = DefaultSaid(errInvalid, "pause", &d, 2*time.Second, "a tenth of the hang-after")
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, d)
	d = -time.Millisecond
	err = DefaultSaid(errInvalid, "pause", &d, 2*time.Second, "a tenth of the hang-after")
	require.ErrorIs(t, err, errInvalid)
	require.EqualError(t, err, "invalid test config: pause -1ms, expected 0 (the default, a tenth of the hang-after) or more")
}

func TestSumDurationsStopsAtTheLongest(t *testing.T) {
	require.Equal(t, 12*time.Second, SumDurations(10*time.Second, 2*time.Second))
	require.Equal(t, time.Duration(0), SumDurations())
	longest := time.Duration(math.MaxInt64)
	require.Equal(t, longest, SumDurations(longest, 2*time.Second))
	require.Equal(t, longest, SumDurations(2000000*time.Hour, 2000000*time.Hour, 5*time.Second))
	require.Equal(t, longest, SumDurations(longest-time.Second, time.Second))
}
