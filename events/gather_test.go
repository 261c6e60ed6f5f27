package events

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gatherLog is a log with no flushers and an unbuffered queue: a send
// completes only when gather takes the append, so each case knows exactly
// what gather has taken. Its linger may exceed LingerLimit, so that a case
// can tell a linger from none.
func gatherLog(t *testing.T, cfg Config) *Log {
	t.Helper()
	linger := cfg.Linger
	cfg.Linger = 0
	require.NoError(t, cfg.validate())
	if linger != 0 {
		cfg.Linger = linger
	}
	return &Log{cfg: cfg, reqs: make(chan *appendReq), done: make(chan struct{})}
}

func req(job string) *appendReq {
	return &appendReq{ctx: context.Background(), ev: Event{JobID: job}}
}

type gathered struct {
	batch, next []*appendReq
	ok          bool
}

func startGather(l *Log, carry []*appendReq, busy bool) <-chan gathered {
	out := make(chan gathered, 1)
	go func() {
		b, n, ok := l.gather(carry, busy)
		out <- gathered{b, n, ok}
	}()
	return out
}

func send(t *testing.T, l *Log, r *appendReq) {
	t.Helper()
	select {
	case l.reqs <- r:
	case <-time.After(10 * time.Second):
		t.Fatalf("gather did not take the append to %s", r.ev.JobID)
	}
}

func recv(t *testing.T, got <-chan gathered) gathered {
	t.Helper()
	select {
	case g := <-got:
		return g
	case <-time.After(10 * time.Second):
		t.Fatal("gather did not return")
		return gathered{}
	}
}

func jobsOf(rs []*appendReq) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ev.JobID)
	}
	return out
}

func TestGatherLingersOnlyAfterABatch(t *testing.T) {
	t.Run("busy: appends arriving later join until the batch is full", func(t *testing.T) {
		l := gatherLog(t, Config{MaxBatch: 3, Linger: time.Hour})
		got := startGather(l, nil, true)
		send(t, l, req("a"))
		send(t, l, req("b"))
		send(t, l, req("c"))
		g := recv(t, got)
		require.True(t, g.ok)
		require.Equal(t, []string{"a", "b", "c"}, jobsOf(g.batch))
	})
	t.Run("not busy: the first append goes alone at once", func(t *testing.T) {
		l := gatherLog(t, Config{MaxBatch: 3, Linger: time.Hour})
		got := startGather(l, nil, false)
		send(t, l, req("a"))
		g := recv(t, got)
		require.Equal(t, []string{"a"}, jobsOf(g.batch))
	})
	t.Run("busy: the linger ends at its time", func(t *testing.T) {
		const linger = 20 * time.Millisecond
		l := gatherLog(t, Config{MaxBatch: 3, Linger: linger})
		got := startGather(l, nil, true)
		sent := time.Now()
		send(t, l, req("a"))
		require.Equal(t, []string{"a"}, jobsOf(recv(t, got).batch))
		// A lower bound only: the commit waited for the linger, no less.
		require.GreaterOrEqual(t, time.Since(sent), linger)
	})
	t.Run("busy: closing the log ends the linger, keeping what was taken", func(t *testing.T) {
		l := gatherLog(t, Config{MaxBatch: 3, Linger: time.Hour})
		got := startGather(l, nil, true)
		send(t, l, req("a"))
		close(l.done)
		g := recv(t, got)
		require.True(t, g.ok)
		require.Equal(t, []string{"a"}, jobsOf(g.batch))
	})
	t.Run("closed before any append", func(t *testing.T) {
		l := gatherLog(t, Config{})
		close(l.done)
		require.False(t, recv(t, startGather(l, nil, true)).ok)
	})
	t.Run("a second append to a job waits for the next commit", func(t *testing.T) {
		l := gatherLog(t, Config{Linger: -1})
		carry := []*appendReq{req("a"), req("a"), req("b")}
		g := recv(t, startGather(l, carry, true))
		require.Equal(t, []string{"a", "b"}, jobsOf(g.batch))
		require.Equal(t, []string{"a"}, jobsOf(g.next))
	})
	t.Run("a batch stops short of batchBytesMax; one larger event goes alone", func(t *testing.T) {
		l := gatherLog(t, Config{Linger: -1})
		sized := func(job string, n int) *appendReq {
			r := req(job)
			r.data = make([]byte, n)
			return r
		}
		carry := []*appendReq{sized("a", batchBytesMax/2), sized("b", batchBytesMax/2), sized("c", 1)}
		g := recv(t, startGather(l, carry, true))
		require.Equal(t, []string{"a", "b"}, jobsOf(g.batch))
		require.Equal(t, []string{"c"}, jobsOf(g.next))
		g = recv(t, startGather(l, []*appendReq{sized("a", batchBytesMax+1), sized("b", 1)}, true))
		require.Equal(t, []string{"a"}, jobsOf(g.batch))
		require.Equal(t, []string{"b"}, jobsOf(g.next))
	})
}

func TestConfigRefusesAnUnreasonableLinger(t *testing.T) {
	cfg := Config{Linger: 2 * time.Second}
	require.ErrorContains(t, cfg.validate(), "linger 2s, expected at most 1s")
	cfg = Config{Linger: -1}
	require.NoError(t, cfg.validate())
	require.Negative(t, cfg.Linger)
}
