package statemachine

import (
	"bytes"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jetjob/jetjob/events"
)

var fuzzEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// fuzzHistory builds a job's history from fuzzed bytes, one record a line.
// Each line is: a byte choosing the event type among events.KnownTypes, a
// byte of flags (bits 0-1: how far the sequence moves on, 1-4; bit 2:
// PrevSeq is fuzzed rather than the previous Seq; bit 3: the event names
// another job; bit 4: the record is unreadable, Err set), a byte of seconds
// after the previous event, then the event's JSON data.
func fuzzHistory(b []byte) []events.Record {
	var recs []events.Record
	var seq uint64
	at := fuzzEpoch
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(line) < 3 {
			continue
		}
		typ, flags, secs, data := line[0], line[1], line[2], line[3:]
		prev := seq
		seq += 1 + uint64(flags&3)
		at = at.Add(time.Duration(secs) * time.Second)
		rec := events.Record{
			Event: events.Event{
				ID: "e", JobID: "job-1", Type: events.KnownTypes[int(typ)%len(events.KnownTypes)],
				Time: at, Data: append([]byte(nil), data...),
			},
			Seq: seq, PrevSeq: prev,
		}
		if flags&4 != 0 {
			rec.PrevSeq = uint64(secs)
		}
		if flags&8 != 0 {
			rec.JobID = "job-2"
		}
		if flags&16 != 0 {
			rec.Err, rec.Raw = events.ErrMalformed, line
		}
		recs = append(recs, rec)
	}
	return recs
}

// fuzzLine is one line of a fuzzHistory input with the sequence moving on by one.
func fuzzLine(typ string, secs byte, data string) string {
	for i, t := range events.KnownTypes {
		if t == typ {
			return string([]byte{byte(i), 0, secs}) + data + "\n"
		}
	}
	panic(typ)
}

// FuzzFold checks the fold of any history (known event types with any
// data, increasing sequences): Fold never panics; its Version is the last
// record's Seq; every record is either applied (Events) or quarantined
// (Quarantined, and returned with a reason); Job.Apply record by record
// gives the same job and reasons; a record Apply refuses leaves the job as
// it was but for Version and Quarantined; and every event a decider
// decides on the folded job folds onto it, as Machine.apply (which panics
// otherwise) relies on.
func FuzzFold(f *testing.F) {
	sub := `{"type":"build","tags":{"region":"eu"},"meta":{"v":"7"},"payload":"AAEC/w==","priority":3,"max_attempts":2}`
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, sub)))
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, sub) +
		fuzzLine(events.TypeAcquired, 1, `{"worker_id":"w1","attempt":1}`) +
		fuzzLine(events.TypeSucceeded, 1, `{"lease":2,"result":{"ok":true}}`)))
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, sub) +
		fuzzLine(events.TypeAcquired, 1, `{"worker_id":"w1","attempt":1}`) +
		fuzzLine(events.TypeAttemptFailed, 1, `{"lease":2,"attempt":1,"error":"boom","code":"exit","retry_at":"2026-01-02T03:05:05Z"}`) +
		fuzzLine(events.TypePromoted, 60, `{}`) +
		fuzzLine(events.TypeAcquired, 1, `{"worker_id":"w2","attempt":2}`) +
		fuzzLine(events.TypeFailed, 1, `{"lease":5,"attempt":2,"error":"boom"}`)))
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, `{"type":"a","max_attempts":3,"run_at":"2027-01-01T00:00:00Z","backoff":{"base":1,"cap":9223372036854775807}}`) +
		fuzzLine(events.TypeCanceled, 1, `{"reason":"stop","by":"operator"}`)))
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, sub) +
		fuzzLine(events.TypeAcquired, 1, `{"worker_id":"w1","attempt":1}`) +
		fuzzLine(events.TypeCancelRequested, 1, `{"reason":"stop"}`) +
		fuzzLine(events.TypeCanceled, 1, `{"by":"worker","lease":2}`)))
	f.Add([]byte(fuzzLine(events.TypeSubmitted, 0, sub) +
		fuzzLine(events.TypeAcquired, 1, `{"worker_id":"w1","attempt":1}`) +
		fuzzLine(events.TypeReleased, 1, `{"lease":2,"reason":"shutdown"}`) +
		fuzzLine(events.TypeSubmitted, 0, sub) + "\x02\x1c\x00{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs := fuzzHistory(b)
		job, bad := Fold(recs)
		var last uint64
		if len(recs) > 0 {
			last = recs[len(recs)-1].Seq
		}
		if job.Version != last {
			t.Fatalf("version %d, last seq %d", job.Version, last)
		}
		if job.Events+job.Quarantined != len(recs) || len(bad) != job.Quarantined {
			t.Fatalf("%d records: %d events, %d quarantined, %d returned", len(recs), job.Events, job.Quarantined, len(bad))
		}
		step := Job{State: StateNew}
		var reasons []string
		for _, rec := range recs {
			before := step
			if err := step.Apply(rec); err != nil {
				reasons = append(reasons, err.Error())
				before.Version, before.Quarantined = step.Version, step.Quarantined
				if !reflect.DeepEqual(before, step) {
					t.Fatalf("refused record %d (%s: %v) changed the job:\n%+v\n%+v", rec.Seq, rec.Type, err, before, step)
				}
			}
		}
		if !reflect.DeepEqual(job, step) {
			t.Fatalf("Fold and Apply differ:\n%+v\n%+v", job, step)
		}
		for i, q := range bad {
			if q.Reason == nil || q.Reason.Error() != reasons[i] {
				t.Fatalf("quarantine reason %d: %v, Apply gave %q", i, q.Reason, reasons[i])
			}
		}
		if job.State == StateNew {
			return
		}
		now := job.UpdatedAt.Add(time.Hour)
		backoff := BackoffConfig{Base: BackoffBaseDefault, Cap: BackoffCapDefault}
		for name, decide := range map[string]func() (events.Event, error){
			"cancel":         func() (events.Event, error) { return decideCancel(job, "stop", now) },
			"pending cancel": func() (events.Event, error) { return decidePendingCancel(job, "stop", now) },
			"promote":        func() (events.Event, error) { return decidePromote(job, nil, now) },
			"acquire":        func() (events.Event, error) { return decideAcquire(job, "w9", now) },
			"succeed":        func() (events.Event, error) { return decideSucceed(job, job.Lease, nil, now) },
			"fail":           func() (events.Event, error) { return decideFail(job, job.Lease, FailParams{Error: "x"}, backoff, now) },
			"fail no retry": func() (events.Event, error) {
				return decideFail(job, job.Lease, FailParams{NoRetry: true}, backoff, now)
			},
			"ack cancel": func() (events.Event, error) { return decideAcknowledgeCancel(job, job.Lease, now) },
			"terminate":  func() (events.Event, error) { return decideTerminateCanceling(job, "grace", now) },
			"release":    func() (events.Event, error) { return decideRelease(job, job.Lease, "bye", now) },
		} {
			ev, err := decide()
			if err != nil {
				continue
			}
			next := job
			if err := next.Apply(events.Record{Event: ev, Seq: job.Version + 1, PrevSeq: job.Version}); err != nil {
				t.Fatalf("%s on a %s job decided %s, which does not fold: %v", name, job.State, ev.Type, err)
			}
		}
	})
}

// FuzzClipText checks that ClipText never panics for a limit of 0 or more,
// returns text itself when it fits, and otherwise a prefix of text of at
// most limit bytes, followed by its "… (N more bytes cut)" suffix counting
// what was cut; it is valid UTF-8 whenever text is.
func FuzzClipText(f *testing.F) {
	f.Add("boom", 2)
	f.Add(strings.Repeat("é", 3000), ErrorTextLimit)
	f.Add("日本語のエラー", 4)
	f.Add("\xff\xfe\x80abc", 1)
	f.Add("", 0)
	f.Fuzz(func(t *testing.T, text string, limit int) {
		if limit < 0 {
			limit = -limit
		}
		if limit < 0 {
			return // math.MinInt
		}
		got := ClipText(text, limit)
		if len(text) <= limit {
			if got != text {
				t.Fatalf("text within the limit changed: %q", got)
			}
			return
		}
		i := strings.LastIndex(got, "… (")
		if i < 0 {
			t.Fatalf("no suffix in %q", got)
		}
		kept, suffix := got[:i], got[i:]
		if len(kept) > limit || !strings.HasPrefix(text, kept) {
			t.Fatalf("kept %q of %q, limit %d", kept, text, limit)
		}
		if want := "… (" + strconv.Itoa(len(text)-len(kept)) + " more bytes cut)"; suffix != want {
			t.Fatalf("suffix %q, expected %q", suffix, want)
		}
		if utf8.ValidString(text) && !utf8.ValidString(got) {
			t.Fatalf("valid UTF-8 %q clipped to invalid %q", text, got)
		}
	})
}
