package provision

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestUntilAnsweredAsksAgainOnlyWhileTheClusterElects(t *testing.T) {
	electing := fmt.Errorf("list streams: %w", &jetstream.APIError{Code: 503, ErrorCode: ErrCodeClusterNotAvailable})
	notFound := fmt.Errorf("look up: %w", jetstream.ErrStreamNotFound)
	peerOffline := fmt.Errorf("create stream: %w", &jetstream.APIError{Code: 400, ErrorCode: ErrCodeNoSuitablePeers,
		Description: "no suitable peers for placement, peer offline"})
	noRoom := fmt.Errorf("create stream: %w", &jetstream.APIError{Code: 400, ErrorCode: ErrCodeNoSuitablePeers,
		Description: "no suitable peers for placement, insufficient storage"})
	watchElecting := fmt.Errorf("list jobs: %w", &nats.APIError{Code: 503, ErrorCode: nats.ErrorCode(ErrCodeClusterNotAvailable),
		Description: "JetStream system temporarily unavailable"})
	watchPeerOffline := &nats.APIError{Code: 400, ErrorCode: nats.ErrorCode(ErrCodeNoSuitablePeers),
		Description: "no suitable peers for placement, peer offline"}
	watchNoRoom := &nats.APIError{Code: 400, ErrorCode: nats.ErrorCode(ErrCodeNoSuitablePeers),
		Description: "no suitable peers for placement, insufficient storage"}
	for _, tc := range []struct {
		name    string
		answers []error
		want    error
		calls   int
	}{
		{"answered at once", []error{nil}, nil, 1},
		{"answered after an election", []error{electing, context.DeadlineExceeded, nats.ErrTimeout, nil}, nil, 4},
		{"a refusal is not asked again", []error{electing, notFound, nil}, notFound, 2},
		{"a node offline is waited for", []error{peerOffline, nil}, nil, 2},
		{"a cluster too small is not waited for", []error{noRoom, nil}, noRoom, 1},
		{"not enabled is not an election", []error{jetstream.ErrJetStreamNotEnabled, nil}, jetstream.ErrJetStreamNotEnabled, 1},
		// A KV watch's consumer is made through nats.go's older API.
		{"a watch's election is waited for", []error{watchElecting, watchPeerOffline, nil}, nil, 3},
		{"a watch's refusal is not asked again", []error{watchNoRoom, nil}, watchNoRoom, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := UntilAnswered(context.Background(), time.Minute, time.Second, func(ctx context.Context) error {
				_, ok := ctx.Deadline()
				require.True(t, ok, "each try is bounded")
				calls++
				return tc.answers[calls-1]
			})
			require.ErrorIs(t, err, tc.want)
			if tc.want == nil {
				require.NoError(t, err)
			}
			require.Equal(t, tc.calls, calls)
		})
	}
	// Past the wait, the last transient error comes back.
	err := UntilAnswered(context.Background(), 600*time.Millisecond, time.Second, func(context.Context) error { return electing })
	require.True(t, errors.Is(err, electing) && Transient(err))
}

// A call that makes more requests than fit in try (a server's start ensures
// some twenty streams) gets more time each time it is made again: given try
// each time, it ran out of time each time, and a server on a busy cluster,
// every node up, never started ("look up stream JJ_QUEUE_07: context
// deadline exceeded").
func TestUntilAnsweredGivesALongCallMoreTimeEachTry(t *testing.T) {
	const needs = 300 * time.Millisecond // what the call's requests take in all
	var given []time.Duration
	err := UntilAnswered(context.Background(), 10*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		deadline, ok := ctx.Deadline()
		require.True(t, ok, "each try is bounded")
		left := time.Until(deadline)
		given = append(given, left)
		if left < needs {
			return fmt.Errorf("update stream JJ_QUEUE_07: %w", context.DeadlineExceeded)
		}
		return nil
	})
	require.NoError(t, err, "tries given %v", given)
	require.Len(t, given, 3, "100 ms, 200 ms, then 400 ms")
}
