package projector

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jetjob/jetjob/statemachine"
)

// MarshalJSON writes the view exactly as encoding/json would from its
// struct tags, without reflection: every event costs a view encoding on the
// projector's hot path, and reflection made it a tenth of the CPU.
func (v View) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 640)
	b = append(b, `{"id":`...)
	b = appendString(b, v.ID)
	b = append(b, `,"type":`...)
	b = appendString(b, v.Type)
	b = append(b, `,"tags":`...)
	b = appendLabels(b, v.Tags)
	b = append(b, `,"meta":`...)
	b = appendLabels(b, v.Meta)
	b = append(b, `,"state":`...)
	b = appendString(b, string(v.State))
	b = append(b, `,"priority":`...)
	b = strconv.AppendInt(b, int64(v.Priority), 10)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(v.Attempt), 10)
	b = append(b, `,"max_attempts":`...)
	b = strconv.AppendInt(b, int64(v.MaxAttempts), 10)
	b = append(b, `,"worker_id":`...)
	b = appendString(b, v.WorkerID)
	b = append(b, `,"lease":`...)
	b = strconv.AppendUint(b, v.Lease, 10)
	b = append(b, `,"error":`...)
	b = appendString(b, v.Error)
	b = append(b, `,"error_code":`...)
	b = appendString(b, v.ErrorCode)
	b = append(b, `,"errors":`...)
	b, err := appendErrors(b, v.Errors)
	if err != nil {
		return nil, err
	}
	if v.ErrorsOmitted != 0 {
		b = append(b, `,"errors_omitted":`...)
		b = strconv.AppendInt(b, int64(v.ErrorsOmitted), 10)
	}
	b = append(b, `,"cancel_reason":`...)
	b = appendString(b, v.CancelReason)
	if v.CanceledBy != "" {
		b = append(b, `,"canceled_by":`...)
		b = appendString(b, v.CanceledBy)
	}
	b = append(b, `,"key":`...)
	b = appendString(b, v.Key)
	b = append(b, `,"payload_size":`...)
	b = strconv.AppendInt(b, int64(v.PayloadSize), 10)
	if len(v.Result) > 0 {
		raw, err := json.Marshal(v.Result) // validated and compacted as encoding/json does
		if err != nil {
			return nil, err
		}
		b = append(b, `,"result":`...)
		b = append(b, raw...)
	}
	if v.ResultOmitted {
		b = append(b, `,"result_omitted":true`...)
	}
	if v.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	if v.Backoff != nil {
		b = append(b, `,"backoff":{`...)
		comma := false
		if v.Backoff.Base != 0 {
			b = append(b, `"base":`...)
			b = strconv.AppendInt(b, int64(v.Backoff.Base), 10)
			comma = true
		}
		if v.Backoff.Cap != 0 {
			if comma {
				b = append(b, ',')
			}
			b = append(b, `"cap":`...)
			b = strconv.AppendInt(b, int64(v.Backoff.Cap), 10)
		}
		b = append(b, '}')
	}
	fields := []struct {
		name      string
		t         *time.Time
		omitEmpty bool
	}{
		{`,"run_at":`, v.RunAt, false},
		{`,"created_at":`, &v.CreatedAt, false},
		{`,"started_at":`, v.StartedAt, false},
		{`,"updated_at":`, &v.UpdatedAt, false},
		{`,"completed_at":`, v.CompletedAt, false},
		{`,"canceled_at":`, v.CanceledAt, false},
		{`,"cancel_requested_at":`, v.CancelRequestedAt, true},
		{`,"heartbeat_at":`, v.HeartbeatAt, false},
		{`,"last_event_at":`, &v.LastEventAt, false},
	}
	for _, f := range fields {
		if f.t == nil && f.omitEmpty {
			continue
		}
		b = append(b, f.name...)
		if b, err = appendTime(b, f.t); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, v.Version, 10)
	b = append(b, `,"events":`...)
	b = strconv.AppendInt(b, int64(v.Events), 10)
	b = append(b, `,"quarantined":`...)
	b = strconv.AppendInt(b, int64(v.Quarantined), 10)
	return append(b, '}'), nil
}

func appendTime(b []byte, t *time.Time) ([]byte, error) {
	if t == nil {
		return append(b, "null"...), nil
	}
	if _, offset := t.Zone(); offset <= -24*60*60 || offset >= 24*60*60 || t.Year() < 0 || t.Year() >= 10000 {
		return t.MarshalJSON() // its error, as encoding/json gives it
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

func appendErrors(b []byte, errs []statemachine.AttemptError) ([]byte, error) {
	if errs == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i, e := range errs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"attempt":`...)
		b = strconv.AppendInt(b, int64(e.Attempt), 10)
		b = append(b, `,"error":`...)
		b = appendString(b, e.Error)
		if e.Code != "" {
			b = append(b, `,"code":`...)
			b = appendString(b, e.Code)
		}
		if e.WorkerID != "" {
			b = append(b, `,"worker_id":`...)
			b = appendString(b, e.WorkerID)
		}
		b = append(b, `,"at":`...)
		var err error
		if b, err = appendTime(b, &e.At); err != nil {
			return nil, err
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

// appendLabels writes a map with sorted keys, as encoding/json does.
func appendLabels(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

// appendString quotes plain ASCII itself and leaves anything that needs
// escaping (including the HTML characters encoding/json escapes) to
// encoding/json, so the bytes are the same.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
