package projector

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// fuzzView builds a view whose texts, labels, result and times come from
// fuzzed values: s is split at NUL into texts; flags choose which optional
// fields are set; sec, nsec and offset make every time, in a zone offset
// seconds east of UTC.
func fuzzView(s string, result []byte, flags uint16, n int64, sec int64, nsec int64, offset int32) View {
	texts := strings.Split(s, "\x00")
	text := func(i int) string {
		if len(texts) == 0 {
			return ""
		}
		return texts[i%len(texts)]
	}
	// Zones of 24 hours or more too, which both encoders refuse.
	at := time.Unix(sec, nsec).In(time.FixedZone("z", int(offset)))
	v := View{
		ID: text(0), Type: text(1), State: statemachine.State(text(2)), Priority: int(n % 10), Attempt: int(n),
		MaxAttempts: int(n >> 8), WorkerID: text(3), Lease: uint64(n), Error: text(4), ErrorCode: text(5),
		CancelReason: text(6), Key: text(7), PayloadSize: int(n >> 4), CreatedAt: at, UpdatedAt: at.Add(time.Second),
		LastEventAt: at, Version: uint64(sec), Events: int(nsec), Quarantined: int(offset),
	}
	if flags&1 != 0 {
		v.Tags = map[string]string{}
		for i := 0; i < len(texts); i += 2 {
			v.Tags[text(i)] = text(i + 1)
		}
	}
	if flags&2 != 0 {
		v.Meta = map[string]string{text(1): text(0), "": text(2)}
	}
	if flags&4 != 0 {
		v.Errors = []statemachine.AttemptError{}
		for i := range texts {
			v.Errors = append(v.Errors, statemachine.AttemptError{Attempt: i, Error: text(i), Code: text(i + 1), WorkerID: text(i + 2), At: at})
		}
	}
	if flags&8 != 0 {
		v.ErrorsOmitted = int(n)
	}
	if flags&16 != 0 {
		v.CanceledBy = text(8)
	}
	if flags&32 != 0 {
		v.Result = json.RawMessage(result)
	}
	v.ResultOmitted, v.Truncated = flags&64 != 0, flags&128 != 0
	if flags&256 != 0 {
		v.Backoff = &events.Backoff{Base: time.Duration(n), Cap: time.Duration(sec)}
	}
	for i, p := range []**time.Time{&v.RunAt, &v.StartedAt, &v.CompletedAt, &v.CanceledAt, &v.CancelRequestedAt, &v.HeartbeatAt} {
		if flags&(512<<i) != 0 {
			t := at.Add(time.Duration(i) * time.Minute)
			*p = &t
		}
	}
	return v
}

func addViewSeeds(f *testing.F) {
	f.Add("job-1\x00build\x00running\x00w1\x00boom\x00exit\x00stop\x00k\x00worker", []byte(`{"ok":true}`), uint16(0xffff), int64(3), int64(1767323045), int64(6), int32(0))
	f.Add("<a>&\u2028\u2029\x00\xff\xfe\x00\"\\\x01\x7f\x00é日本", []byte(" [1, \"<\u2028>\" , null] "), uint16(0x3ff), int64(-1), int64(-62135596800), int64(999999999), int32(3600))
	f.Add("j\x00t", []byte(`{"a":`), uint16(32), int64(0), int64(0), int64(0), int32(-19800))
	f.Add("j\x00t", []byte(`"\xff"`), uint16(32|4), int64(0), int64(253402300799), int64(0), int32(0))
	f.Add("j", []byte(``), uint16(0), int64(1), int64(253402300800), int64(0), int32(0))
	f.Add("j", []byte(`1`), uint16(0), int64(1), int64(1767323045), int64(0), int32(86400))
}

// FuzzViewMarshalJSON checks that View.MarshalJSON writes exactly the bytes
// encoding/json writes for the view's struct, for any texts (invalid UTF-8,
// control and HTML characters, U+2028 included), labels, errors, result
// (valid JSON or not) and times, and that it fails where encoding/json does.
func FuzzViewMarshalJSON(f *testing.F) {
	addViewSeeds(f)
	f.Fuzz(func(t *testing.T, s string, result []byte, flags uint16, n, sec, nsec int64, offset int32) {
		v := fuzzView(s, result, flags, n, sec, nsec, offset)
		got, err := v.MarshalJSON()
		want, werr := json.Marshal(plainView(v)) // plainView (view_test.go): View without its MarshalJSON
		if werr != nil {
			if err == nil {
				t.Fatalf("encoding/json refuses the view (%v), MarshalJSON wrote %s", werr, got)
			}
			return
		}
		if err != nil {
			t.Fatalf("MarshalJSON refuses the view (%v), encoding/json wrote %s", err, want)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("MarshalJSON and encoding/json differ:\n%s\n%s", got, want)
		}
	})
}

// FuzzFit checks fit: when it gives no error, the encoding is within the
// limit and is exactly the returned view's MarshalJSON, the view still says
// where the job is (ID, state, attempt, lease, version), and fitting the
// same view again gives the same view and bytes. An error is either the
// view's own encoding error or ErrViewTooLarge.
func FuzzFit(f *testing.F) {
	addViewSeeds(f)
	f.Fuzz(func(t *testing.T, s string, result []byte, flags uint16, n, sec, nsec int64, offset int32) {
		v := fuzzView(s, result, flags, n, sec, nsec, offset)
		full, ferr := v.MarshalJSON()
		for _, limit := range []int{len(full), len(full) - 1, len(full) / 2, 400, int(uint16(n))} {
			v2, data, err := fit(v, limit)
			if err != nil {
				if ferr == nil && !errors.Is(err, ErrViewTooLarge) {
					t.Fatalf("limit %d: the view encodes, yet fit fails: %v", limit, err)
				}
				continue
			}
			if len(data) > limit {
				t.Fatalf("limit %d: %d bytes", limit, len(data))
			}
			again, err := v2.MarshalJSON()
			if err != nil || !bytes.Equal(data, again) {
				t.Fatalf("limit %d: fit's bytes are not its view's (%v):\n%s\n%s", limit, err, data, again)
			}
			if v2.ID != v.ID || v2.State != v.State || v2.Attempt != v.Attempt || v2.Lease != v.Lease || v2.Version != v.Version {
				t.Fatalf("limit %d: fit lost where the job is: %+v", limit, v2)
			}
			v3, data3, err := fit(v, limit)
			if err != nil || !bytes.Equal(data, data3) || !reflect.DeepEqual(v2, v3) {
				t.Fatalf("limit %d: fit is not deterministic (%v)", limit, err)
			}
		}
	})
}
