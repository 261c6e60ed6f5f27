package events_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
)

// envelopeSeeds are envelopes as the codec tests and the log write them.
var envelopeSeeds = []string{
	`{"v":1,"id":"e1","job":"job-1","type":"job.promoted","time":"2026-01-01T00:00:00Z"}`,
	`{"v":1,"id":"0190","job":"job-1","type":"job.submitted","time":"2026-01-02T03:04:05.000000006Z","data":{"type":"build","tags":{"region":"eu"},"meta":{"v":"7"},"payload":"AAEC/w==","priority":3,"max_attempts":5,"run_at":"2026-01-02T03:04:05.000000006Z","key":"k","backoff":{"base":1000000000,"cap":60000000000}}}`,
	`{"v":1,"id":"e","job":"j","type":"job.succeeded","time":"2026-01-01T00:00:00+01:00","data":{"lease":9,"result": {"ok" : true, "html":"<&>"}}}`,
	`{"v":1,"id":"e","job":"j","type":"job.attempt_failed","time":"2026-01-01T00:00:00Z","data":{"lease":9,"attempt":1,"error":"boom","code":"exit","retry_at":"2026-01-02T03:04:05Z"}}`,
	`{"v":1,"id":"e","job":"j","type":"job.unknown","time":"2026-01-01T00:00:00Z","data":null}`,
	`{"v":2,"id":"e","job":"j","type":"job.promoted"}`,
	`{"v":1,"ID":"e\u2028","JOB":"j\xff","type":"job.released","data":{"lease":1,"reason":"shutdown"}}`,
	`[]`, `null`, `{"v":1}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00+24:00"}`,
}

// FuzzDecode checks that Decode never panics on any stored message, and that
// an event it accepts encodes again and decodes to the same event: the same
// ID, job, type and instant, and the same data (compared after Encode has
// compacted it); a second round trip is byte for byte the first.
func FuzzDecode(f *testing.F) {
	for _, s := range envelopeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := events.Decode(b)
		if err != nil {
			return
		}
		enc, err := events.Encode(ev)
		if err != nil {
			t.Fatalf("decoded event %+v does not encode: %v", ev, err)
		}
		ev2, err := events.Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded event %s does not decode: %v", enc, err)
		}
		if ev.ID != ev2.ID || ev.JobID != ev2.JobID || ev.Type != ev2.Type || !ev.Time.Equal(ev2.Time) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, ev2)
		}
		if ev.Time.Format(time.RFC3339Nano) != ev2.Time.Format(time.RFC3339Nano) {
			t.Fatalf("round trip changed the time's zone: %s, %s", ev.Time, ev2.Time)
		}
		var compact bytes.Buffer
		if len(ev.Data) > 0 {
			if err := json.Compact(&compact, ev.Data); err != nil {
				t.Fatalf("decoded data %q is not JSON: %v", ev.Data, err)
			}
		}
		var compact2 bytes.Buffer
		if len(ev2.Data) > 0 {
			_ = json.Compact(&compact2, ev2.Data)
		}
		if !jsonEqual(compact.Bytes(), compact2.Bytes()) {
			t.Fatalf("round trip changed the data: %q, %q", ev.Data, ev2.Data)
		}
		enc2, err := events.Encode(ev2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("second round trip differs (%v):\n%s\n%s", err, enc, enc2)
		}
	})
}

// zoneOf24Hours says the error is time.Time.MarshalJSON refusing a zone
// of +24:00, which time.Time.UnmarshalJSON accepts. Event data keeps what
// it read; the fold takes its times in UTC, as Decode takes an event's.
func zoneOf24Hours(err error) bool {
	return err != nil && strings.Contains(err.Error(), "timezone hour outside of range")
}

// jsonEqual compares two JSON texts as values (both empty is equal).
func jsonEqual(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}

// dataTypes returns a fresh value of each event type's data, by type.
var dataTypes = []struct {
	typ string
	new func() any
}{
	{events.TypeSubmitted, func() any { return &events.Submitted{} }},
	{events.TypePromoted, func() any { return &events.Promoted{} }},
	{events.TypeAcquired, func() any { return &events.Acquired{} }},
	{events.TypeCancelRequested, func() any { return &events.CancelRequested{} }},
	{events.TypeCanceled, func() any { return &events.Canceled{} }},
	{events.TypeSucceeded, func() any { return &events.Succeeded{} }},
	{events.TypeAttemptFailed, func() any { return &events.AttemptFailed{} }},
	{events.TypeFailed, func() any { return &events.Failed{} }},
	{events.TypeReleased, func() any { return &events.Released{} }},
}

// FuzzDecodeData checks that Event.DecodeData never panics, whatever the
// data and whichever event type's data it is read into, and that data it
// accepts encodes again (as events.New would) and decodes to data that
// encodes to the same bytes: one round trip reaches a fixed point.
func FuzzDecodeData(f *testing.F) {
	for i, s := range []string{
		`{"type":"build","tags":{"region":"eu"},"meta":{"v":"7"},"payload":"AAEC/w==","priority":3,"max_attempts":5,"run_at":"2026-01-02T03:04:05.000000006Z","key":"k","backoff":{"base":1000000000,"cap":60000000000}}`,
		`{}`,
		`{"worker_id":"w1","attempt":2}`,
		`{"reason":"stop"}`,
		`{"reason":"stop","by":"worker","lease":9}`,
		`{"lease":9,"result":{"ok":true}}`,
		`{"lease":9,"attempt":1,"error":"boom","code":"exit","retry_at":"2026-01-02T03:04:05.000000006Z"}`,
		`{"lease":9,"attempt":3,"error":"boom","code":"exit"}`,
		`{"lease":9,"reason":"shutdown"}`,
	} {
		f.Add(uint8(i), []byte(s))
	}
	f.Add(uint8(0), []byte(`{"type":"a","payload":"","tags":{},"run_at":"2026-01-02T03:04:05+05:30"}`))
	f.Add(uint8(5), []byte(`{"lease":1,"result": [1, "<\u2028>" ,null]}`))
	f.Add(uint8(6), []byte(`null`))
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dt := dataTypes[int(which)%len(dataTypes)]
		ev := events.Event{ID: "e", JobID: "j", Type: dt.typ, Data: data}
		d := dt.new()
		if err := ev.DecodeData(d); err != nil {
			return
		}
		enc, err := json.Marshal(d)
		if zoneOf24Hours(err) {
			return // known: see zoneOf24Hours
		}
		if err != nil {
			t.Fatalf("decoded %s data %+v does not encode: %v", dt.typ, d, err)
		}
		d2 := dt.new()
		if err := (events.Event{Type: dt.typ, Data: enc}).DecodeData(d2); err != nil {
			t.Fatalf("re-encoded %s data %s does not decode: %v", dt.typ, enc, err)
		}
		enc2, err := json.Marshal(d2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("%s data round trip differs (%v):\n%s\n%s", dt.typ, err, enc, enc2)
		}
	})
}

// FuzzEncodePlainAgrees: Encode writes what encoding/json writes for the
// envelope, whichever way it takes.
func FuzzEncodePlainAgrees(f *testing.F) {
	f.Add("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "job-1", events.TypeSubmitted, int64(1764547200123456789), "eu", int8(0), false)
	f.Add("e", "j<b>&", events.TypeAcquired, int64(0), "\u2028\"\\", int8(5), false)
	f.Add("é", "j", "t", int64(-62135596800000000), "", int8(-3), true)
	f.Fuzz(func(t *testing.T, id, job, typ string, unixNano int64, tag string, zone int8, noData bool) {
		var data any = map[string]string{"region": tag}
		if noData {
			data = nil
		}
		ev, err := events.New(job, typ, data)
		require.NoError(t, err)
		if noData {
			ev.Data = nil
		}
		ev.ID, ev.Time = id, time.Unix(0, unixNano).In(time.FixedZone("z", int(zone)*3600))
		want, wantErr := json.Marshal(struct {
			V int `json:"v"`
			events.Event
		}{events.EnvelopeVersion, ev})
		got, err := events.Encode(ev)
		if wantErr != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})
}
