package events_test

import (
	"context"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
)

// An append its user may not publish is told as that, in each way a log
// appends: nats.go hears the refusal only in its error handler, and the
// append waited out its tries to say that it may have been stored, which
// a refused publish never is.
func TestAnAppendItsUserMayNotPublishSaysSo(t *testing.T) {
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.Users = []*nserver.User{
			{Username: "admin", Password: "pw"},
			{Username: "denied", Password: "pw", Permissions: &nserver.Permissions{
				Publish:   &nserver.SubjectPermission{Allow: []string{"$JS.API.>"}},
				Subscribe: &nserver.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		}
		o.NoAuthUser = "admin"
	})
	_, err := events.Open(context.Background(), env.JS, events.Config{})
	require.NoError(t, err)
	for name, cfg := range map[string]events.Config{
		"batched":    {},
		"one by one": {MaxBatch: 1},
		"streamed":   {MinBatch: events.MaxBatchLimit + 1},
	} {
		t.Run(name, func(t *testing.T) {
			// Each waits out its tries, on a connection and a log of its
			// own: side by side.
			t.Parallel()
			// Kept short: the refusal comes at once, the tries' waits do not.
			cfg.PublishTimeout = time.Second
			_, js := natstest.Connect(t, env.URL, nats.UserInfo("denied", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			l, err := events.Attach(js, cfg)
			require.NoError(t, err)
			defer l.Close()
			_, err = l.Append(context.Background(), mustEvent(t, "job1", events.TypeSubmitted), 0)
			require.ErrorIs(t, err, events.ErrPermission)
			require.ErrorIs(t, err, nats.ErrPermissionViolation)
			require.NotErrorIs(t, err, events.ErrOutcomeUnknown, "a refused publish is not stored")
			require.Contains(t, err.Error(), `Publish to "jj.ev.job1"`)
		})
	}
}

// A refusal heard only after an earlier try went unanswered says nothing
// of that try: it may have been stored, its ack lost, before the user's
// permissions changed. Here the first try is stored and its ack held, then
// the user loses the subject: the append must not say nothing was stored.
func TestAPermissionRefusalAfterAStoredTryIsNotNothingStored(t *testing.T) {
	writer := func(subjects ...string) []*nserver.User {
		return []*nserver.User{
			{Username: "admin", Password: "pw"},
			{Username: "writer", Password: "pw", Permissions: &nserver.Permissions{
				Publish:   &nserver.SubjectPermission{Allow: append([]string{"$JS.API.>"}, subjects...)},
				Subscribe: &nserver.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		}
	}
	var opts *nserver.Options
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.Users = writer("jj.ev.>")
		o.NoAuthUser = "admin"
		opts = o
	})
	_, err := events.Open(context.Background(), env.JS, events.Config{})
	require.NoError(t, err)

	proxy := natstest.NewProxy(t, env.URL)
	_, js := natstest.Connect(t, proxy.URL, nats.UserInfo("writer", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	core, logs := observer.New(zap.DebugLevel)
	l, err := events.Attach(js, events.Config{MaxBatch: 1, PublishTimeout: time.Second, PublishRetries: 3, Logger: zap.New(core)})
	require.NoError(t, err)
	defer l.Close()

	proxy.StallAnswers()
	done := make(chan error, 1)
	go func() {
		_, err := l.Append(context.Background(), mustEvent(t, "job1", events.TypeSubmitted), 0)
		done <- err
	}()
	natstest.Eventually(t, 10*time.Second, func() bool {
		// Through the API, not a direct get: nats-server reads its options
		// unlocked on a direct get, which a reload writes.
		s, err := env.JS.Stream(context.Background(), events.StreamDefault)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter("jj.ev.job1"))
		return err == nil && info.State.Subjects["jj.ev.job1"] == 1
	}, "the first try was not stored")
	reloaded := opts.Clone()
	reloaded.Users = writer()
	require.NoError(t, env.Stock.ReloadOptions(reloaded))
	natstest.Eventually(t, 10*time.Second, func() bool {
		return logs.FilterMessage("append ack lost, resending").Len() > 0
	}, "the first try's ack was never given up on")
	proxy.Restore()

	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the append did not end")
	}
	require.NoError(t, err, "the first try was stored, and the history says so")
}
