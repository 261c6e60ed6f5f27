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
	// routes[i][j] relays the routes server i solicits to server j, in a
	// cluster started by StartFreezableCluster.
	routes [][]*Proxy
}

// Freeze holds every byte of the routes between server i and the others,
// their connections left open, until Thaw: the others see it as a node
// stopped with SIGSTOP, which answers nothing, tells nothing (it leaves no
// route closed, as a shutdown does, and a shut down consumer leader tells
// its waiting pull requests) and is still there. Only in a cluster started
// by StartFreezableCluster; server i itself runs on, alone.
func (c *Cluster) Freeze(i int) {
	c.t.Helper()
	require.NotNil(c.t, c.routes, "Freeze needs StartFreezableCluster")
	for _, p := range c.routesOf(i) {
		p.Stall()
	}
}

// Thaw delivers what Freeze held, and lets the routes of server i through
// again.
func (c *Cluster) Thaw(i int) {
	c.t.Helper()
	require.NotNil(c.t, c.routes, "Thaw needs StartFreezableCluster")
	for _, p := range c.routesOf(i) {
		p.Restore()
	}
}

func (c *Cluster) routesOf(i int) []*Proxy {
	var out []*Proxy
	for j := range c.routes {
		if j != i {
			out = append(out, c.routes[i][j], c.routes[j][i])
		}
	}
	return out
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
	// 10 s was overrun once by a CI run beside another test run.
	require.True(t, ns.ReadyForConnections(30*time.Second), "server %s not ready", opts.ServerName)
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
	return startCluster(t, n, false)
}

// StartFreezableCluster is StartCluster with each route relayed by a Proxy
// of its own, so that Freeze can cut a server off as SIGSTOP does. A server
// soliciting a route to another goes through the relay of that pair; the
// address each advertises for routes refuses connections, so that none is
// made around the relays from what the servers tell each other.
func StartFreezableCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startCluster(t, n, true)
}

func startCluster(t testing.TB, n int, freezable bool) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	c := &Cluster{t: t}
	routesOf := func(i int) []*url.URL {
		var routes []*url.URL
		for j, p := range ports {
			host := fmt.Sprintf("127.0.0.1:%d", p)
			if freezable {
				if j == i {
					continue
				}
				host = hostPort(c.routes[i][j].URL)
			}
			routes = append(routes, &url.URL{Scheme: "nats", Host: host})
		}
		return routes
	}
	if freezable {
		c.routes = make([][]*Proxy, n)
		for i := range n {
			c.routes[i] = make([]*Proxy, n)
			for j, p := range ports {
				if j != i {
					c.routes[i][j] = NewProxy(t, fmt.Sprintf("nats://127.0.0.1:%d", p))
				}
			}
		}
	}
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
			Routes:     routesOf(i),
		}
		if freezable {
			// Nothing listens there: a server told of another makes no
			// route of its own to it, around the relays.
			opts.Cluster.Advertise = fmt.Sprintf("127.0.0.1:%d", freePort(t))
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
