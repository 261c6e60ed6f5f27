package workers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

// A failure repeated hundreds of times a second is said once, then with a
// count at most once per troubleEvery.
func TestARepeatedFailureIsSaidWithItsCount(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	trouble := newTroubleLog(zap.New(core), "acquire failed")
	for i := range 300 {
		trouble.add(errors.New("insufficient resources"), zap.Int("i", i))
	}
	require.Equal(t, 1, logs.Len(), "the first said at once, the rest counted")
	trouble.sayMore() // what the quiet's end does
	lines := logs.All()
	require.Len(t, lines, 2)
	require.Equal(t, int64(299), lines[1].ContextMap()["times_since_last_said"])
	trouble.add(errors.New("insufficient resources"))
	require.Equal(t, 2, logs.Len(), "still quiet after the count was said")
}

// Log lines the server refuses (here, no stream takes them) are said in the
// worker's log; before, they went missing without a word.
func TestLogLinesTheServerRefusesAreSaid(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	core, logs := observer.New(zapcore.WarnLevel)
	done := make(chan struct{})
	f.pool(PoolConfig{Types: []string{"chatty"}, Logger: zap.New(core)}, func(ctx context.Context, j *Job) error {
		defer close(done)
		j.Log("a line no stream takes")
		return nil
	}, func(p *Pool) {
		// The refusal is said at once; the line is then sent again for
		// the ack timeout before the result, which the test's end waits
		// out: 10 s by default.
		p.logAckTimeout = time.Second
	})
	require.NoError(t, f.env.JS.DeleteStream(context.Background(), LogsStream))
	f.submit(statemachine.SubmitParams{Type: "chatty"})
	<-done
	natstest.Eventually(t, 10*time.Second, func() bool {
		return logs.FilterMessage("job log lines were not stored, or not acknowledged").Len() > 0
	}, "the lost line said")
}
