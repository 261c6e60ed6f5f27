package natstest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// Cluster is a NATS cluster of embedded servers with JetStream, for what
// needs replicas.
type Cluster struct {
	Servers []*server.Server
	// URL lists every server's client URL, comma-separated, as a client's
	// --server takes it.
	URL  string
	t    testing.TB
	opts []*server.Options
}

// Restart starts server i again, shut down before, on its own store and
// ports.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Servers[i] = startClustered(c.t, c.opts[i])
}

func startClustered(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	require.True(t, ns.ReadyForConnections(10*time.Second), "server %s not ready", opts.ServerName)
	return ns
}

// StartStock starts one nats-server with JetStream as an operator would run
// it outside jetjob (stock options, which adjust can change), with its store
// in the test's temporary directory; the test's cleanup stops it. The env's
// client connects with connect, what a secured server asks of it.
func StartStock(t testing.TB, adjust func(*server.Options), connect ...nats.Option) *Env {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: freePort(t), JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
	}
	if adjust != nil {
		adjust(opts)
	}
	ns := startClustered(t, opts)
	env := &Env{URL: ns.ClientURL(), Dir: opts.StoreDir, Stock: ns}
	env.NC, env.JS = Connect(t, env.URL, connect...)
	return env
}

// StartCluster starts n clustered servers, each with its own store in the
// test's temporary directory, and waits until JetStream has a leader; the
// test's cleanup stops them. It is built as nats-server's own tests build
// theirs: explicit cluster ports and a route from every server to every
// other.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	c := &Cluster{t: t}
	var urls []string
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("jj-%d", i),
			Host:       "127.0.0.1",
			Port:       freePort(t), // fixed, so that a restart keeps it
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "jetjob-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		}
		ns := startClustered(t, opts)
		c.opts = append(c.opts, opts)
		c.Servers = append(c.Servers, ns)
		urls = append(urls, ns.ClientURL())
	}
	c.URL = strings.Join(urls, ",")
	_, js := Connect(t, c.URL)
	Eventually(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	}, "JetStream of the %d-server cluster ready", n)
	return c
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
