package provision

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrCodeClusterNotAvailable is nats-server's JSClusterNotAvailErr,
// "JetStream system temporarily unavailable": a cluster with no meta
// leader, as while it elects one.
const ErrCodeClusterNotAvailable jetstream.ErrorCode = 10008

// ErrCodeNoSuitablePeers is nats-server's JSClusterNoPeersErrF, "no
// suitable peers for placement": with the reason "peer offline", a stream
// that needs more nodes than are up, as right after one was lost, before
// its cluster notices it lost its quorum or while the node restarts.
const ErrCodeNoSuitablePeers jetstream.ErrorCode = 10005

// ElectionWaitDefault bounds how long UntilAnswered asks again: a NATS
// cluster of three that lost a node answered its JetStream requests again
// 6.5 s after the kill (measured with the leader of a stream killed).
const ElectionWaitDefault = 30 * time.Second

// electionPause is how long UntilAnswered waits between its tries.
const electionPause = 250 * time.Millisecond

// Transient reports whether err is what a JetStream request gets while a
// NATS cluster elects a leader or waits for a lost node: no answer in time,
// "temporarily unavailable", or no peers for a stream because one is
// offline.
func Transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return true
	}
	var code jetstream.ErrorCode
	var description string
	var apiErr *jetstream.APIError
	// A KV watch makes its consumer through nats.go's older JetStream API,
	// whose refusals are a *nats.APIError, another type with the same
	// codes: a listing's or a watch's "temporarily unavailable" went
	// unrecognized, and it failed at once rather than wait out the
	// election.
	var legacyErr *nats.APIError
	switch {
	case errors.As(err, &apiErr):
		code, description = apiErr.ErrorCode, apiErr.Description
	case errors.As(err, &legacyErr):
		code, description = jetstream.ErrorCode(legacyErr.ErrorCode), legacyErr.Description
	default:
		return false
	}
	return code == ErrCodeClusterNotAvailable ||
		code == ErrCodeNoSuitablePeers && strings.Contains(description, "peer offline")
}

// UntilAnswered calls fn, the first call bounded by try (a request sent to
// a leader that has just died is never answered), and calls it again while
// it fails with a Transient error, for at most wait in all. Each call after
// one that failed is given twice the time of the one before: fn may make
// many requests (a server's start ensures some twenty streams, a look-up
// and an update each, 4 s on a 3-node cluster at rest), and a busy cluster
// took longer than try for them all, so that every call ran out of time
// before its end and the server never started, its cluster up. It returns
// fn's last error: nil, one that is not transient, or the last transient
// one once wait passed or ctx ended.
func UntilAnswered(ctx context.Context, wait, try time.Duration, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for ; ; try *= 2 {
		tctx, tcancel := context.WithTimeout(ctx, try)
		err := fn(tctx)
		tcancel()
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(electionPause):
		}
	}
}

// NoJetStream reports whether err is what a JetStream request gets from a
// NATS where JetStream is not enabled: no responders, since every server
// with JetStream serves its API, leader or not (nats.go takes the same
// silence for ErrJetStreamNotEnabled), or that refusal itself.
func NoJetStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// NoJetStreamSays is what an error on a NATS without JetStream adds.
const NoJetStreamSays = "no JetStream on this NATS, which jetjob needs (nats-server -js):"
