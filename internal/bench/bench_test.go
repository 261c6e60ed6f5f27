package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// TestSmokeRunsEveryScenario keeps the harness working; it asserts nothing
// about speed.
func TestSmokeRunsEveryScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every scenario")
	}
	var out bytes.Buffer
	cfg := Smoke()
	cfg.Jobs, cfg.BacklogLarge, cfg.OpsJobs = 100, 200, 100
	cfg.Fsyncs = []string{natsserver.FsyncInterval}
	figures, err := Run(context.Background(), cfg, &out)
	require.NoError(t, err, out.String())
	seen := map[string]bool{}
	for _, f := range figures {
		seen[f.Scenario] = true
	}
	for _, s := range Scenarios {
		require.True(t, seen[s], "scenario %s printed no figure", s)
	}
	require.Contains(t, out.String(), "bench scenario=e2e fsync=interval metric=jobs_per_s_batch value=")
	require.True(t, strings.Contains(out.String(), "SCENARIO"))
}

func benchServer(b testing.TB, fsync string) *server.Server {
	b.Helper()
	s, err := server.Start(context.Background(), server.Options{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Fsync: fsync})
	require.NoError(b, err)
	b.Cleanup(s.Stop)
	return s
}

// BenchmarkSubmitAcquireSucceed runs b.N no-op jobs through a pool of 100,
// submitted in batches: the whole hot path, end to end.
func BenchmarkSubmitAcquireSucceed(b *testing.B) {
	for _, fsync := range []string{natsserver.FsyncAlways, natsserver.FsyncInterval} {
		b.Run("fsync="+fsync, func(b *testing.B) {
			s := benchServer(b, fsync)
			r := &Runner{cfg: Config{Producers: 8, Workers: 100}, ceiling: map[string]float64{}}
			params := make([]statemachine.SubmitParams, b.N)
			for i := range params {
				params[i] = statemachine.SubmitParams{Type: "noop"}
			}
			b.ResetTimer()
			rate, err := r.throughput(context.Background(), s, params,
				[]workers.PoolConfig{{Types: []string{"noop"}, Concurrency: 100}}, true)
			require.NoError(b, err)
			b.ReportMetric(rate, "jobs/s")
		})
	}
}

// BenchmarkAcquire measures acquiring pending jobs from their snapshots.
func BenchmarkAcquire(b *testing.B) {
	s := benchServer(b, natsserver.FsyncAlways)
	ctx := context.Background()
	params := make([]statemachine.SubmitParams, b.N)
	for i := range params {
		params[i] = statemachine.SubmitParams{Type: "t"}
	}
	res := s.Machine.SubmitMany(ctx, params)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_ = i
			i++
		}
	})
	for _, r := range res {
		if _, err := s.Machine.AcquireFrom(ctx, r.Job, "w"); err != nil {
			b.Fatal(err)
		}
	}
}
