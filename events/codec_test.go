package events_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
)

func TestCodecRoundTrip(t *testing.T) {
	runAt := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, tc := range []struct {
		typ  string
		data any
		into func() any
	}{
		{events.TypeSubmitted, &events.Submitted{
			Type: "build", Tags: map[string]string{"region": "eu"}, Meta: map[string]string{"v": "7"},
			Payload: []byte{0, 1, 2, 255}, Priority: 3, MaxAttempts: 5, RunAt: &runAt, Key: "k",
			Backoff: &events.Backoff{Base: time.Second, Cap: time.Minute},
		}, func() any { return &events.Submitted{} }},
		{events.TypePromoted, &events.Promoted{}, func() any { return &events.Promoted{} }},
		{events.TypeAcquired, &events.Acquired{WorkerID: "w1", Attempt: 2}, func() any { return &events.Acquired{} }},
		{events.TypeCancelRequested, &events.CancelRequested{Reason: "stop"}, func() any { return &events.CancelRequested{} }},
		{events.TypeCanceled, &events.Canceled{Reason: "stop", By: events.CanceledByWorker, Lease: 9}, func() any { return &events.Canceled{} }},
		{events.TypeSucceeded, &events.Succeeded{Lease: 9, Result: json.RawMessage(`{"ok":true}`)}, func() any { return &events.Succeeded{} }},
		{events.TypeAttemptFailed, &events.AttemptFailed{Lease: 9, Attempt: 1, Error: "boom", Code: "exit", RetryAt: runAt}, func() any { return &events.AttemptFailed{} }},
		{events.TypeFailed, &events.Failed{Lease: 9, Attempt: 3, Error: "boom", Code: "exit"}, func() any { return &events.Failed{} }},
		{events.TypeReleased, &events.Released{Lease: 9, Reason: "shutdown"}, func() any { return &events.Released{} }},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			ev, err := events.New("job-1", tc.typ, tc.data)
			require.NoError(t, err)
			require.Equal(t, "job-1", ev.JobID)
			require.Equal(t, tc.typ, ev.Type)
			require.NotEmpty(t, ev.ID)
			require.Equal(t, time.UTC, ev.Time.Location())

			b, err := events.Encode(ev)
			require.NoError(t, err)
			var env map[string]any
			require.NoError(t, json.Unmarshal(b, &env))
			require.Equal(t, float64(events.EnvelopeVersion), env["v"], "the envelope is versioned")

			got, err := events.Decode(b)
			require.NoError(t, err)
			require.Equal(t, ev.ID, got.ID)
			require.Equal(t, ev.JobID, got.JobID)
			require.Equal(t, ev.Type, got.Type)
			require.True(t, ev.Time.Equal(got.Time))
			require.JSONEq(t, string(ev.Data), string(got.Data))

			into := tc.into()
			require.NoError(t, got.DecodeData(into))
			require.Equal(t, tc.data, into)
		})
	}
	// Every known type is covered above.
	require.Len(t, events.KnownTypes, 9)
}

func TestNewGivesTimeOrderedIDs(t *testing.T) {
	prev := ""
	for i := 0; i < 100; i++ {
		ev, err := events.New("job-1", events.TypePromoted, events.Promoted{})
		require.NoError(t, err)
		require.Greater(t, ev.ID, prev)
		prev = ev.ID
	}
	_, err := events.New("job-1", events.TypePromoted, func() {})
	require.Error(t, err, "data that cannot be encoded")
}

func TestDecodeRefusesWhatIsNotAnEvent(t *testing.T) {
	valid := `"id":"e1","job":"job-1","type":"job.promoted","time":"2026-01-01T00:00:00Z"`
	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"empty", ``, events.ErrMalformed},
		{"garbage", `not json`, events.ErrMalformed},
		{"binary", "\x00\x01\xff", events.ErrMalformed},
		{"truncated", `{"v":1,` + valid[:20], events.ErrMalformed},
		{"array", `[1,2,3]`, events.ErrMalformed},
		{"null", `null`, events.ErrMalformed},
		{"empty object", `{}`, events.ErrMalformed},
		{"no version", `{` + valid + `}`, events.ErrMalformed},
		{"version 0", `{"v":0,` + valid + `}`, events.ErrMalformed},
		{"version 2", `{"v":2,` + valid + `}`, events.ErrMalformed},
		{"version as a string", `{"v":"1",` + valid + `}`, events.ErrMalformed},
		{"no id", `{"v":1,"job":"job-1","type":"job.promoted"}`, events.ErrMalformed},
		{"no job", `{"v":1,"id":"e1","type":"job.promoted"}`, events.ErrMalformed},
		{"no type", `{"v":1,"id":"e1","job":"job-1"}`, events.ErrMalformed},
		{"bad time", `{"v":1,"id":"e1","job":"job-1","type":"job.promoted","time":"yesterday"}`, events.ErrMalformed},
		{"unknown type", `{"v":1,"id":"e1","job":"job-1","type":"job.exploded"}`, events.ErrUnknownType},
		{"type of another case", `{"v":1,"id":"e1","job":"job-1","type":"JOB.PROMOTED"}`, events.ErrUnknownType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := events.Decode([]byte(tc.in))
			require.ErrorIs(t, err, tc.want)
			other := events.ErrUnknownType
			if tc.want == events.ErrUnknownType {
				other = events.ErrMalformed
			}
			require.NotErrorIs(t, err, other)
		})
	}

	ev, err := events.Decode([]byte(`{"v":1,"id":"e1","job":"job-1","type":"job.exploded"}`))
	require.ErrorIs(t, err, events.ErrUnknownType)
	require.Contains(t, err.Error(), "job.exploded")
	require.Equal(t, "job-1", ev.JobID, "an unknown event still names its job")

	ev, err = events.Decode([]byte(`{"v":1,` + valid + `,"data":{"lease":"nine"}}`))
	require.NoError(t, err, "data is read by the fold, not the codec")
	require.ErrorIs(t, ev.DecodeData(&events.Succeeded{}), events.ErrMalformed)
	require.NoError(t, events.Event{}.DecodeData(&events.Succeeded{}), "no data is no data")
}

func TestRecordFromMsg(t *testing.T) {
	ev, err := events.New("job-1", events.TypePromoted, events.Promoted{})
	require.NoError(t, err)
	b, err := events.Encode(ev)
	require.NoError(t, err)
	h := nats.Header{}
	h.Set("Nats-Sequence", "42")
	h.Set("Nats-Expected-Last-Subject-Sequence", "41")
	rec := events.RecordFromMsg(h, b, 7)
	require.NoError(t, rec.Err)
	require.Equal(t, uint64(42), rec.Seq, "the header's sequence wins")
	require.Equal(t, uint64(41), rec.PrevSeq)
	require.Equal(t, ev.ID, rec.ID)
	require.Nil(t, rec.Raw)

	rec = events.RecordFromMsg(nats.Header{}, []byte("garbage"), 7)
	require.ErrorIs(t, rec.Err, events.ErrMalformed)
	require.Equal(t, uint64(7), rec.Seq)
	require.Equal(t, []byte("garbage"), rec.Raw, "kept aside, not lost")
}

func TestValidateJobID(t *testing.T) {
	for _, ok := range []string{"a", "job-1", "job_1", "0190a5e4-6f0e-7c1b-9d2a-3b4c5d6e7f80", strings.Repeat("x", 64)} {
		require.NoError(t, events.ValidateJobID(ok), ok)
	}
	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", "ünïcode", "a\n", strings.Repeat("x", 65)} {
		require.ErrorIs(t, events.ValidateJobID(bad), events.ErrInvalidJobID, "%q", bad)
	}
}
