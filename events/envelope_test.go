package events

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writtenSeeds are envelopes as Encode writes them, then near misses
// (writtenRefused on).
var writtenSeeds = []string{
	`{"v":1,"id":"e1","job":"job-1","type":"job.promoted","time":"2026-01-01T00:00:00Z"}`,
	`{"v":1,"id":"e1","job":"job-1","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{}}`,
	`{"v":1,"id":"01a22e01-31bd-7df7-8a8e-4e88a2160d1d","job":"0194c3a2-7d4e-7c1a-9a3b-3f1e2d4c5b6a","type":"job.acquired","time":"2026-11-30T19:49:19.933915753Z","data":{"worker_id":"vm-7725-7d6ddbda","attempt":1}}`,
	`{"v":1,"id":"e","job":"j","type":"job.succeeded","time":"2026-01-01T00:00:00+01:00","data":{"lease":9,"result":{"ok":true,"html":"\u003c\u0026\u003e"}}}`,
	`{"v":1,"id":"e","job":"j","type":"job.attempt_failed","time":"2026-01-01T00:00:00Z","data":{"lease":9,"attempt":1,"error":"exit status 1","retry_at":"2026-01-02T03:04:05Z"}}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{"x":"}"}}`,
	`{"v":1,"id":"","job":"","type":"","time":"0001-01-01T00:00:00Z"}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00+24:00"}`,
	// Left to encoding/json from here on.
	`{"v":1,"id":"e","job":"j","type":"job.unknown","time":"2026-01-01T00:00:00Z","data":null}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{"a":1}}}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{"a":1},"v":2}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{"a":1} }`,
	`{"v":1,"id":"e\u0041","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z"}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":{"a":1}`,
	`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z"}x`,
}

const writtenRefused = 8

// FuzzDecodeWrittenAgrees checks the fast path against encoding/json: what
// decodeWritten accepts, json.Unmarshal accepts too and reads the same.
func FuzzDecodeWrittenAgrees(f *testing.F) {
	for _, s := range writtenSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeWritten(b)
		if !ok {
			return
		}
		var slow envelope
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("decodeWritten accepted %q, which encoding/json refuses: %v", b, err)
		}
		if fast.V != slow.V || fast.ID != slow.ID || fast.JobID != slow.JobID || fast.Type != slow.Type ||
			!bytes.Equal(fast.Data, slow.Data) || !fast.Time.Equal(slow.Time) ||
			fast.Time.Format(time.RFC3339Nano) != slow.Time.Format(time.RFC3339Nano) {
			t.Fatalf("%q read differently:\nfast %+v\njson %+v", b, fast, slow)
		}
	})
}

// What Encode writes takes the fast path; the rest is left to encoding/json.
func TestDecodeWrittenTakesWhatEncodeWrites(t *testing.T) {
	for _, data := range []any{Acquired{WorkerID: "w", Attempt: 1}, Promoted{},
		Submitted{Type: "build", Tags: map[string]string{"region": "eu"}, Payload: []byte("<&>")},
		Failed{Error: "exit status 1 < 2"}} {
		// TypeAcquired for all: the codec does not look into data.
		ev, err := New("job-1", TypeAcquired, data)
		require.NoError(t, err)
		b, err := Encode(ev)
		require.NoError(t, err)
		env, ok := decodeWritten(b)
		require.True(t, ok, "%s", b)
		require.Equal(t, ev.ID, env.ID)
		require.Equal(t, []byte(ev.Data), []byte(env.Data))
		require.True(t, ev.Time.Equal(env.Time))
	}
	for _, s := range writtenSeeds[:writtenRefused] {
		_, ok := decodeWritten([]byte(s))
		require.True(t, ok, "%s", s)
	}
	for _, s := range writtenSeeds[writtenRefused:] {
		_, ok := decodeWritten([]byte(s))
		require.False(t, ok, "%s", s)
	}
}

// encoding/json refuses an envelope nested past its bound, though its data
// alone, one level shallower, is valid JSON: near the bound, the fast path
// leaves data to encoding/json, and Decode agrees with it.
func TestDecodeWrittenLeavesDeepDataToEncodingJSON(t *testing.T) {
	for _, repeats := range []int{9_996, 9_998, 9_999} {
		b := []byte(`{"v":1,"id":"e","job":"j","type":"job.promoted","time":"2026-01-01T00:00:00Z","data":` +
			strings.Repeat(`{"a":`, repeats) + `{}` + strings.Repeat(`}`, repeats) + `}`)
		var env envelope
		slow := json.Unmarshal(b, &env)
		_, fast := decodeWritten(b)
		_, err := Decode(b)
		if slow != nil {
			require.False(t, fast, "%d repeats: encoding/json refuses it", repeats)
			require.ErrorIs(t, err, ErrMalformed, "%d repeats", repeats)
		} else {
			require.NoError(t, err, "%d repeats", repeats)
		}
		if repeats == 9_999 {
			require.Error(t, slow, "10,001 deep in all: past encoding/json's bound")
		}
	}
}
