// Package natstest starts an embedded NATS server with JetStream for one
// test, with its store in the test's temporary directory.
package natstest

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natsserver"
)

// Env is a running server and a client connected to it.
type Env struct {
	Server *natsserver.Server
	URL    string
	NC     *nats.Conn
	JS     jetstream.JetStream
	Dir    string
	// Stock is the nats-server StartStock started (nil otherwise), for a
	// test that reloads its configuration.
	Stock *server.Server
}

// Start starts a fresh server on a random port; the test's cleanup stops it.
func Start(t testing.TB) *Env {
	t.Helper()
	dir := t.TempDir()
	env := &Env{Dir: dir}
	env.start(t)
	return env
}

func (e *Env) start(t testing.TB) {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{DataDir: e.Dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	e.Server = srv
	e.URL = srv.ClientURL()
	e.NC, e.JS = Connect(t, e.URL)
	t.Cleanup(func() {
		e.NC.Close()
		srv.Shutdown()
	})
}

// Restart stops the server and starts a new one on the same store, as a
// crash and restart would, and reconnects the client.
func (e *Env) Restart(t testing.TB) {
	t.Helper()
	e.NC.Close()
	e.Server.Shutdown()
	e.start(t)
}

// Bounce stops the server cleanly and starts it again on the same address
// and store, as an operator's restart would: clients stay connected through
// it by reconnecting, the env's own included.
func (e *Env) Bounce(t testing.TB) {
	t.Helper()
	u, err := url.Parse(e.URL)
	require.NoError(t, err)
	e.Server.Shutdown()
	srv, err := natsserver.Start(natsserver.Config{DataDir: e.Dir, Listen: u.Host})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	e.Server = srv
}

// Connect opens a client connection that the test's cleanup closes; opts
// add to its own (a secured server's credentials and TLS).
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// Eventually polls cond until it holds or the deadline passes.
func Eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: "+msg, append([]any{within}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Locked waits until mu is held by someone else, as a Stop under way holds
// its service's lock while it waits for the service to end.
func Locked(t testing.TB, mu *sync.Mutex, what string) {
	t.Helper()
	Eventually(t, 5*time.Second, func() bool {
		if mu.TryLock() {
			mu.Unlock()
			return false
		}
		return true
	}, "%s", what)
}

// LaggingReplica puts beside stream a mirror that answers its direct gets
// and holds none of its messages but one on subject, which it publishes:
// about half of the stream's direct gets are then answered as by a replica
// that has not caught up, which the embedded cluster never showed. A
// mirror answers direct gets only once it has caught up with what it
// mirrors, so it returns once the mirror holds that message.
func LaggingReplica(t testing.TB, js jetstream.JetStream, stream, subject string) {
	t.Helper()
	ctx := context.Background()
	behind, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: stream + "_BEHIND", MirrorDirect: true,
		Mirror: &jetstream.StreamSource{Name: stream, FilterSubject: subject},
	})
	require.NoError(t, err)
	_, err = js.Publish(ctx, subject, []byte("not a job's"))
	require.NoError(t, err)
	Eventually(t, 10*time.Second, func() bool {
		info, err := behind.Info(ctx)
		return err == nil && info.State.Msgs == 1
	}, "the mirror of %s caught up", stream)
}

// StreamUpdates starts counting the stream updates asked of the server
// through nc, and returns what says which streams were asked since its last
// call. A request reaches the subscription before the update's answer goes
// out, so a call made after the updates were answered sees them all.
func StreamUpdates(t testing.TB, nc *nats.Conn) func() []string {
	t.Helper()
	const prefix = "$JS.API.STREAM.UPDATE."
	sub, err := nc.SubscribeSync(prefix + ">")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return func() []string {
		t.Helper()
		require.NoError(t, nc.Flush())
		var streams []string
		for {
			msg, err := sub.NextMsg(0)
			if err != nil {
				return streams
			}
			streams = append(streams, strings.TrimPrefix(msg.Subject, prefix))
		}
	}
}
