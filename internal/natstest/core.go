package natstest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// Core opens, on the test's server, what every jetjob component stands on:
// the event log (closed by the test's cleanup), the heartbeats, and a
// machine on the log, all with their defaults.
func (e *Env) Core(t testing.TB) (*events.Log, *events.Heartbeats, *statemachine.Machine) {
	t.Helper()
	ctx := context.Background()
	lg, err := events.Open(ctx, e.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, e.JS)
	require.NoError(t, err)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	return lg, hb, m
}
