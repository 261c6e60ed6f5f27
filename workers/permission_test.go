package workers

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
)

// A pool whose user may not make consumers, or subscribe to the wake-ups,
// says so from Start, naming the subject, at once: nats.go tells a refused
// request only to the connection's error handler, and the request goes
// unanswered, so Start waited out its 30 s for JetStream to answer and
// said "context deadline exceeded"; a subscription refused was not said
// at all, and the pool ran deaf to wake-ups.
func TestAPoolStartItsUserMayNotMakeSaysSo(t *testing.T) {
	for name, c := range map[string]struct {
		deny *server.Permissions
		says string
	}{
		"consumers": {&server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}, `Publish to "$JS.API.CONSUMER.`},
		"wake-ups": {&server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{wakePrefix + ">", wakeAllPrefix + ">"}},
		}, `Subscription to "jj.`},
	} {
		t.Run(name, func(t *testing.T) {
			env := natstest.StartStock(t, func(o *server.Options) {
				o.Users = []*server.User{
					{Username: "admin", Password: "pw"},
					{Username: "denied", Password: "pw", Permissions: c.deny},
				}
				o.NoAuthUser = "admin"
			})
			f := fixtureOn(t, env, false)
			_, js := natstest.Connect(t, env.URL, nats.UserInfo("denied", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			p, err := NewPool(js, f.m, PoolConfig{Types: []string{"denied"}}, func(context.Context, *Job) error { return nil })
			require.NoError(t, err)
			defer func() { _ = p.Stop(context.Background()) }()
			began := time.Now()
			err = p.Start(context.Background())
			require.ErrorIs(t, err, events.ErrPermission)
			require.ErrorIs(t, err, nats.ErrPermissionViolation)
			require.Contains(t, err.Error(), c.says)
			require.Less(t, time.Since(began), startTry, "said at once, not after a try timed out")
		})
	}
}
