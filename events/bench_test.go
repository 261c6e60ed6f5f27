package events_test

import (
	"testing"

	"github.com/jetjob/jetjob/events"
)

func benchEvent(b *testing.B) events.Event {
	b.Helper()
	ev, err := events.New("0194c3a2-7d4e-7c1a-9a3b-3f1e2d4c5b6a", events.TypeSubmitted, events.Submitted{
		Type: "build", Tags: map[string]string{"region": "eu", "gpu": "a100"}, Meta: map[string]string{"template_version": "v7"},
		Payload: []byte(`{"repo":"github.com/jetjob/jetjob","ref":"main"}`), Priority: 3, MaxAttempts: 5,
	})
	if err != nil {
		b.Fatal(err)
	}
	return ev
}

// BenchmarkEncode: one event to its stored bytes, as every append does.
func BenchmarkEncode(b *testing.B) {
	ev := benchEvent(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Encode(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode: stored bytes to an event and its data, as every reader
// of the log (projector, enqueuer, machine) does.
func BenchmarkDecode(b *testing.B) {
	raw, err := events.Encode(benchEvent(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		ev, err := events.Decode(raw)
		if err != nil {
			b.Fatal(err)
		}
		var d events.Submitted
		if err := ev.DecodeData(&d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeEnvelope: an acquired event's stored bytes to an event, its
// data left undecoded, as a reader that passes over most types does.
func BenchmarkDecodeEnvelope(b *testing.B) {
	ev, err := events.New("0194c3a2-7d4e-7c1a-9a3b-3f1e2d4c5b6a", events.TypeAcquired, events.Acquired{WorkerID: "vm-7725-7d6ddbda", Attempt: 1})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := events.Encode(ev)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}
