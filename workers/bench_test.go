package workers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkLogsRead measures a read of a finished job's lines, as jetjob
// logs and the tests that check what a job wrote do.
func BenchmarkLogsRead(b *testing.B) {
	for _, n := range []int{10, 1_000} {
		b.Run(fmt.Sprintf("lines=%d", n), func(b *testing.B) {
			env, logs := startLogs(b)
			ctx := context.Background()
			for i := range n {
				logs.appendAsync("job-1", LogLine{Time: time.Now().UTC(), Attempt: 1, Number: int64(i + 1), Lease: 5, Stream: StreamStdout, Line: fmt.Sprint("line ", i+1)})
			}
			select {
			case <-env.JS.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("lines not stored within a minute")
			}
			b.ResetTimer()
			for range b.N {
				lines, err := logs.Read(ctx, "job-1")
				require.NoError(b, err)
				require.Len(b, lines, n)
			}
		})
	}
}
