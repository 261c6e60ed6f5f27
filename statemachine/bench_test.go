package statemachine

import (
	"testing"

	"github.com/jetjob/jetjob/events"
)

// BenchmarkFold: a job's whole history of one retried attempt to its
// state, as every command that loads a job and every view does.
func BenchmarkFold(b *testing.B) {
	recs := given(b, hist(submitted, acquired1,
		[]any{events.TypeAttemptFailed, events.AttemptFailed{Lease: 2, Attempt: 1, Error: "exit status 1", RetryAt: t0}},
		[]any{events.TypePromoted, events.Promoted{}},
		[]any{events.TypeAcquired, events.Acquired{WorkerID: "w2", Attempt: 2}},
		[]any{events.TypeSucceeded, events.Succeeded{Lease: 5}},
	)...)
	b.ReportAllocs()
	for b.Loop() {
		if j, bad := Fold(recs); j.State != StateSucceeded || len(bad) > 0 {
			b.Fatalf("folded to %s with %d bad records", j.State, len(bad))
		}
	}
	b.ReportMetric(float64(len(recs)*b.N)/b.Elapsed().Seconds(), "events/s")
}
