package natstest

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// Leafed is a hub with JetStream in a domain, and a leaf node without
// JetStream connected to it: what a platform team runs when clients reach
// JetStream through a leaf, by the domain's API prefix
// ($JS.<domain>.API.), the plain one ($JS.API.) being denied across the
// leaf connection.
type Leafed struct {
	Hub    *server.Server
	Leaf   *server.Server
	Domain string
	// HubURL and LeafURL are the servers' client URLs.
	HubURL, LeafURL string
}

// StartLeafed starts the hub, with JetStream in domain and its store in the
// test's temporary directory, and the leaf, and waits until JetStream
// answers through the leaf by the domain; the test's cleanup stops both.
// It is built as nats-server's own leaf node tests build theirs.
func StartLeafed(t testing.TB, domain string) *Leafed {
	t.Helper()
	leafPort := freePort(t)
	hub := startClustered(t, &server.Options{
		ServerName: "jj-hub", Host: "127.0.0.1", Port: freePort(t),
		JetStream: true, JetStreamDomain: domain, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: leafPort},
	})
	leaf := startClustered(t, &server.Options{
		ServerName: "jj-leaf", Host: "127.0.0.1", Port: freePort(t), NoSigs: true, NoLog: true,
		LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{
			URLs: []*url.URL{{Scheme: "nats-leaf", Host: fmt.Sprintf("127.0.0.1:%d", leafPort)}},
		}}},
	})
	l := &Leafed{Hub: hub, Leaf: leaf, Domain: domain, HubURL: hub.ClientURL(), LeafURL: leaf.ClientURL()}
	_, js := l.Connect(t)
	Eventually(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	}, "JetStream of domain %s answering through the leaf node", domain)
	return l
}

// Connect opens a client connection to the leaf, with a JetStream handle
// on the hub's domain; the test's cleanup closes it.
func (l *Leafed) Connect(t testing.TB, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, _ := Connect(t, l.LeafURL, opts...)
	js, err := jetstream.NewWithDomain(nc, l.Domain)
	require.NoError(t, err)
	return nc, js
}
