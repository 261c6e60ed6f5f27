// Package coretest opens, for a test, what every jetjob component stands
// on: apart from natstest, which packages under events import in their
// tests.
package coretest

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// Open opens the event log (closed by the test's cleanup), the heartbeats,
// and a machine on the log, all with their defaults.
func Open(t testing.TB, js jetstream.JetStream) (*events.Log, *events.Heartbeats, *statemachine.Machine) {
	t.Helper()
	ctx := context.Background()
	lg, err := events.Open(ctx, js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	hb, err := events.OpenHeartbeats(ctx, js)
	require.NoError(t, err)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	return lg, hb, m
}
