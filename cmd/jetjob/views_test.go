package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/coretest"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// get and ls show what the commands before them did, also while the views
// trail the log: get folds a job whose view is behind its history, and ls
// waits for the views (and says so when they stay behind).
func TestGetAndLsDoNotShowViewsBehindTheLog(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	lg, hb, m := coretest.Open(t, env.JS)
	startProjector := func() *projector.Projector {
		p, err := projector.New(env.JS, lg, hb, projector.Config{})
		require.NoError(t, err)
		require.NoError(t, p.Start(ctx))
		t.Cleanup(p.Stop)
		return p
	}
	// The commands' notices go to os.Stderr itself.
	cli := func(args ...string) (string, string) {
		rd, wr, err := os.Pipe()
		require.NoError(t, err)
		defer rd.Close()
		saved := os.Stderr
		os.Stderr = wr
		var stdout, stderr strings.Builder
		code := run(append(args, "--server", env.URL, "-o", "json"), &stdout, &stderr)
		os.Stderr = saved
		require.NoError(t, wr.Close())
		notices, err := io.ReadAll(rd)
		require.NoError(t, err)
		require.Equal(t, 0, code, "%v: %s", args, stderr.String())
		return stdout.String(), stderr.String() + string(notices)
	}
	state := func(view string) statemachine.State {
		var v projector.View
		require.NoError(t, json.Unmarshal([]byte(view), &v))
		return v.State
	}

	p := startProjector()
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "t"})
	require.NoError(t, err)
	r, err := projector.NewReader(ctx, env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool { _, err := r.Get(ctx, job.ID); return err == nil }, "the view is written")
	p.Stop()
	_, err = m.Cancel(ctx, job.ID, "not needed")
	require.NoError(t, err)

	view, _ := cli("get", job.ID)
	require.Equal(t, statemachine.StateCanceled, state(view), "get folds a view behind the history")

	listed, said := cli("ls", "--state", "pending")
	require.Contains(t, said, "the views are still behind the event log", "ls says it waited in vain")
	require.Contains(t, listed, job.ID, "and lists what the views hold")

	startProjector()
	listed, said = cli("ls", "--state", "pending")
	require.Empty(t, said)
	require.NotContains(t, listed, job.ID, "ls waited for the views to show the cancel")
}

// watch's text lines say each change of a job once: a heartbeat rewrites a
// running job's view with only a new time, and prints no line.
func TestWatchLinesSayEachChangeOnce(t *testing.T) {
	at := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	view := func(state statemachine.State, version uint64, sec int) projector.View {
		return projector.View{ID: "j1", State: state, Attempt: 1, MaxAttempts: 3, Version: version, UpdatedAt: at.Add(time.Duration(sec) * time.Second)}
	}
	var out strings.Builder
	lines := watchLines{shown: map[string]string{}}
	for _, v := range []projector.View{
		view(statemachine.StatePending, 1, 0),
		view(statemachine.StateRunning, 2, 1),
		view(statemachine.StateRunning, 2, 11), // heartbeats
		view(statemachine.StateRunning, 2, 21),
		view(statemachine.StateSucceeded, 3, 25),
	} {
		require.NoError(t, lines.write(&out, v))
	}
	require.Equal(t, "2026-12-02T01:00:00Z j1 pending attempt=1/3 version=1\n"+
		"2026-12-02T01:00:01Z j1 running attempt=1/3 version=2\n"+
		"2026-12-02T01:00:25Z j1 succeeded attempt=1/3 version=3\n", out.String())
	require.Empty(t, lines.shown, "nothing kept of a finished job")

	running := watchLines{filter: projector.Filter{States: []statemachine.State{statemachine.StateRunning}}, shown: map[string]string{}}
	require.NoError(t, running.write(&out, view(statemachine.StateRunning, 2, 1)))
	require.NoError(t, running.write(&out, view(statemachine.StateCanceling, 3, 2)))
	require.Empty(t, running.shown, "nothing kept of a job that stopped matching")
}

// A line whose lease the history does not hold yet (its acquire not read
// yet: a replica behind, a read that failed) is shown with its run once
// the acquire is read. Its run was kept as unknown, and every later line
// of the attempt lost its "run N" for as long as logs -f ran.
func TestALeaseNotInTheHistoryYetIsAskedAgain(t *testing.T) {
	ctx := context.Background()
	env := natstest.Start(t)
	lg, _, m := coretest.Open(t, env.JS)
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "t", MaxAttempts: 1})
	require.NoError(t, err)
	runs := leaseRuns{load: func() ([]events.Record, error) { return lg.Load(ctx, job.ID) }, run: map[uint64]int{}}
	held, err := m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	_, err = m.Release(ctx, held, "shutting down")
	require.NoError(t, err)
	// The second run's lease, before its acquire is stored: the log
	// holds nothing but this job's events, so the acquire comes next.
	next := held.Lease + 2
	require.Zero(t, runs.of(workers.LogLine{Attempt: 1, Lease: next}), "not in the history yet")
	again, err := m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	require.Equal(t, next, again.Lease)
	require.Equal(t, 2, runs.of(workers.LogLine{Attempt: 1, Lease: next}), "the acquire read now")
	require.Equal(t, 1, runs.of(workers.LogLine{Attempt: 1, Lease: held.Lease}))
	// A lease the history has gone past without an acquire at it is no
	// run of this job's.
	require.Zero(t, runs.of(workers.LogLine{Attempt: 1, Lease: held.Lease + 1}))
}
