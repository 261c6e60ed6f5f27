package events_test

import (
	"context"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

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
