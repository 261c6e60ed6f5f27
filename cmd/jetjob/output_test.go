package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

func TestHistoryShowsAJSONPayloadAsJSON(t *testing.T) {
	for _, tc := range []struct {
		name, eventType, data, want string
	}{
		{"json payload", events.TypeSubmitted,
			`{"type":"render","payload":"eyAiZnJhbWUiOiA3IH0=","max_attempts":3}`,
			`{"type":"render","payload":{"frame":7},"max_attempts":3}`},
		{"payload that is not json stays as stored", events.TypeSubmitted,
			`{"type":"render","payload":"AAEC","max_attempts":3}`,
			`{"type":"render","payload":"AAEC","max_attempts":3}`},
		{"no payload", events.TypeSubmitted,
			`{"type":"render","max_attempts":3}`,
			`{"type":"render","max_attempts":3}`},
		{"other events as stored", events.TypeAcquired,
			`{"worker_id":"w","attempt":1}`,
			`{"worker_id":"w","attempt":1}`},
		{"unreadable data as stored", events.TypeSubmitted, `{"payload":`, `{"payload":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, readableData(tc.eventType, []byte(tc.data)))
		})
	}
}

// An error line whose cause is the NATS server's storage full says so;
// nats-server's own words do not.
func TestAnErrorOfAFullServerSaysSo(t *testing.T) {
	full := fmt.Errorf("submit job: append to job j: %w", errors.New("nats: API error: code=503 err_code=10023 description=insufficient resources"))
	require.Equal(t, "submit job: append to job j: nats: API error: code=503 err_code=10023 description=insufficient resources (the NATS server is out of storage: see the jetjob server's log)", oneLine(full))
	require.Equal(t, "job j not found", oneLine(errors.New("job j\nnot found")))
}

func TestLineRanges(t *testing.T) {
	require.Equal(t, "", lineRanges(nil))
	require.Equal(t, "4", lineRanges([]int{4}))
	require.Equal(t, "1-3, 5, 7-8", lineRanges([]int{1, 2, 3, 5, 7, 8}))
}

func TestFlagErrorsSayWhatIsExpected(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"submit", "--type", "a", "--priority", "abc"}, `--priority "abc", expected a whole number`},
		{[]string{"ls", "--limit", "1e99"}, `--limit "1e99", expected a whole number`},
		{[]string{"ls", "--limit", "99999999999999999999"}, `--limit "99999999999999999999" is out of range, expected a smaller whole number`},
		{[]string{"submit", "--type", "a", "--delay", "-5s"}, `--delay "-5s" is negative`},
		{[]string{"server", "--hang-after", "0s"}, `--hang-after 0s, expected a duration of at least 1s`},
		{[]string{"submit", "--type", "a", "--key", "one\ntwo"}, `idempotency key "one\ntwo" has a control character, expected one line of text`},
		{[]string{"submit", "--type", "a", "--tag", "os=\x1b[31m"}, `tag os value has a control character, expected one line of text`},
		{[]string{"submit", "--type", "a", "--type", "b"}, `--type "b": given twice, expected it once`},
		{[]string{"submit", "--file", "a.ndjson", "--file", "b.ndjson"}, `--file "b.ndjson": given twice, expected it once`},
		{[]string{"ls", "-o", "json", "-o", "text"}, `-o "text": given twice, expected it once`},
		{[]string{"cancel", "--pending", "--dry-run", "--dry-run"}, `--dry-run: given twice, expected it once`},
		{[]string{"submit", "--file", ""}, `--file is empty, expected a file name`},
		{[]string{"worker", "--type", "t", "-o", "json", "--", "true"}, `-o json: a worker prints only its log`},
		{[]string{"server", "--purge-every", "1ns"}, `--purge-every 1ns, expected a duration of at least 1s such as 1m`},
		{[]string{"server", "--hang-after", "-1s"}, `--hang-after -1s, expected a duration of at least 1s such as 5m`},
		{[]string{"server", "--queue-idle-after", "soon"}, `--queue-idle-after "soon", expected a duration such as 1h, or 0`},
		{[]string{"server", "--queue-idle-after", "10ms"}, `--queue-idle-after 10ms, expected a duration of at least 1s such as 1h, or 0`},
		{[]string{"server", "--nats", "http://127.0.0.1:4222"}, `--nats "http://127.0.0.1:4222" has scheme "http"`},
		{[]string{"server", "--nats", "nats://127.0.0.1:4222", "--data", "d", "--fsync", "interval"}, `--data, --fsync: for the embedded NATS server only; with --nats the external server's own settings apply, expected no --data or --fsync`},
		{[]string{"server", "--batch-staging", "ram"}, `--batch-staging "ram", expected memory or disk`},
		{[]string{"dev", "--nats", "nats://127.0.0.1:4222", "--batch-staging", "disk"}, `--batch-staging: for the embedded NATS server only`},
		{[]string{"submit", "--type", "a", "--delay", "99999999h"}, `--delay "99999999h" is too long, expected at most 2562047h (about 292 years)`},
		{[]string{"submit", "--type", "a", "--delay", "5"}, `--delay "5" has a number without a unit, expected a duration such as 30s or 5m`},
		{[]string{"submit", "--type", "a", "--delay", "5d"}, `--delay "5d" has an unknown unit, expected one of ns, us, ms, s, m, h`},
		{[]string{"purge", "--older-than", "99999999999h"}, `--older-than "99999999999h" is too long`},
		{[]string{"worker", "--type", "t", "--concurrency", "99999999999", "--", "true"}, `--concurrency 99999999999, expected 1-10000`},
		{[]string{"bench", "--workers", "20000"}, `--workers 20000, expected at most 10000`},
		// Held to the default 100 workers, where --smoke runs 20: it ran
		// 20 pools and said so only in a note.
		{[]string{"bench", "--smoke", "--scenario", "e2e", "--fsync", "interval", "--processes", "50"}, `--processes 50, expected at most --workers (20 with --smoke): each process runs at least one`},
		// Sizes past what memory holds ended in a Go runtime's out-of-memory dump.
		{[]string{"bench", "--scenario", "e2e", "--n", "2000000000"}, `--n 2000000000, expected at most 10000000 (the bench holds every job in memory)`},
		{[]string{"bench", "--scenario", "e2e", "--n", "10", "--producers", "1000000000"}, `--producers 1000000000, expected at most 10000`},
		{[]string{"purge", "--older-than", "1h", "--state", "succeeded", "--state", "bogus"}, `--state "bogus": only finished jobs are purged, expected succeeded, failed or canceled`},
		{[]string{"get", strings.Repeat("a", 10_000)}, `invalid job ID "` + strings.Repeat("a", 64) + `"… (10000 bytes): expected 1-64 letters`},
		{[]string{"server", "--purge-every", "999999999h"}, `--purge-every "999999999h" is too long`},
		{[]string{"submit", "--type", "a", "--payload", "\"\xff\""}, `--payload is not valid JSON (UTF-8 text)`},
		{[]string{"submit", "--type", "a", "--key", ""}, `--key is empty, expected a key, or no --key for a job without one`},
		{[]string{"submit", "--type", "a", "--delay", "2500000h"}, `--delay 2500000h runs the job after 2262-01-01, expected a shorter delay`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		require.Equal(t, exitUsage, code, "%v: %s", tc.args, stderr.String())
		require.Contains(t, stderr.String(), tc.want, "%v", tc.args)
		require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line")
	}
}

// A --file line that encoding/json would read by silently keeping one of
// two values, or a field in another case, is refused, as an unknown field
// is.
func TestJobLinesNameEachFieldOnceInItsOwnCase(t *testing.T) {
	for _, tc := range []struct {
		line, want string
	}{
		{`{"type":"a","Type":"b"}`, `field "Type", expected "type": field names are lower case`},
		{`{"TYPE":"a"}`, `field "TYPE", expected "type": field names are lower case`},
		{`{"type":"a","type":"b"}`, `field "type" given twice, expected each field once`},
		{`{"type":"a","priority":1,"priority":2}`, `field "priority" given twice`},
		{`{"type":"a","tags":{"k":"1","k":"2"}}`, `tags key "k" given twice, expected each key once`},
		{`{"type":"a","meta":{"k":"1","k":"1"}}`, `meta key "k" given twice`},
		{`{"type":"a","key":""}`, `key is empty, expected a key, or no key field for a job without one`},
		{`{"type":"a","tags":{"gpu":null}}`, `tags key "gpu" is null, expected a string`},
		{`{"type":"a","delay":"2500000h"}`, `delay "2500000h" runs the job after 2262-01-01, expected a shorter delay`},
	} {
		_, err := parseJobLine([]byte(tc.line))
		require.ErrorContains(t, err, tc.want, tc.line)
	}
	for _, line := range []string{
		`{"type":"a","tags":{"k":"1","K":"2"},"meta":{"k":"1"}}`,
		`{"type":"a","payload":{"type":"x","type":"y"},"key":"k"}`, // the payload is the caller's
		`{"type":"a","tags":null}`,
	} {
		_, err := parseJobLine([]byte(line))
		require.NoError(t, err, line)
	}
}

// A data directory whose jetstream/ the embedded NATS cannot write in is
// refused at once, as the data directory itself is; before, the start
// waited 10 s and said the server was not ready.
func TestAServerRefusesADataDirectoryItsNATSCannotWriteIn(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "jetstream"), nil, 0o644)) // a file where its directory goes
	var stdout, stderr bytes.Buffer
	code := run([]string{"server", "--data", dir, "--listen", "127.0.0.1:0"}, &stdout, &stderr)
	require.Equal(t, exitUsage, code, stderr.String())
	require.Contains(t, stderr.String(), "cannot write in "+filepath.Join(dir, "jetstream"))
	require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line")
}

func TestLogLinesShowControlCharactersEscaped(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"plain text, tabs\tkept", "plain text, tabs\tkept"},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"50%\r100%", `50%\r100%`},
		{"bell\a, NUL\x00, DEL\x7f", `bell\a, NUL\x00, DEL\x7f`},
		{"C1 \u009b31m and ünïcode ✓", `C1 \u009b31m and ünïcode ✓`},
		{"bidi \u202eevil, a newline\n, not UTF-8 \xff", `bidi \u202eevil, a newline\n, not UTF-8 \xff`},
		{"", ""},
	} {
		require.Equal(t, tc.want, escapeControls(tc.line), "%q", tc.line)
	}
}

// Text output shows control characters and bidirectional overrides as Go
// escapes them, wherever they come from (a tag, a reason, an error), and
// passes ordinary text, newlines and tabs as written; JSON passes as
// written. A tag with U+202E reached the terminal raw, and turned the rest
// of its line around.
func TestTextOutputShowsControlsAndBidiOverridesEscaped(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ID\tTYPE  é … ✓ 日本\n", "ID\tTYPE  é … ✓ 日本\n"},
		{"tag=\u202eevil\n", `tag=\u202eevil` + "\n"},
		{"\u202a\u202b\u202c\u202d \u2066\u2067\u2068\u2069\n", `\u202a\u202b\u202c\u202d \u2066\u2067\u2068\u2069` + "\n"},
		{"\x1b[2J\r\a\x00\x7f \u0085\u009b\n", `\x1b[2J\r\a\x00\x7f \u0085\u009b` + "\n"},
		{"not UTF-8 \xff\xc3\n", `not UTF-8 \xff\xc3` + "\n"},
	} {
		var b bytes.Buffer
		out := &textOut{w: &b}
		n, err := out.Write([]byte(tc.in))
		require.NoError(t, err)
		require.Equal(t, len(tc.in), n)
		require.NoError(t, out.flush())
		require.Equal(t, tc.want, b.String(), "%q", tc.in)
	}
	// A character cut between two writes is written whole; one never
	// finished is written escaped when the command ends.
	var b bytes.Buffer
	out := &textOut{w: &b}
	rlo := []byte("\u202e")
	for _, part := range [][]byte{[]byte("a"), rlo[:1], rlo[1:2], append(rlo[2:], 'b'), []byte("é")[:1]} {
		_, err := out.Write(part)
		require.NoError(t, err)
	}
	require.Equal(t, `a\u202eb`, b.String())
	require.NoError(t, out.flush())
	require.Equal(t, `a\u202eb\xc3`, b.String())
	// JSON, and logs --raw, write past it.
	b.Reset()
	require.NoError(t, writeJSONLine(out, map[string]string{"tag": "\u202eevil"}))
	require.Equal(t, "{\"tag\":\"\u202eevil\"}\n", b.String())
}

// A progress line shows its fraction: printed as its message alone, as
// before, a job's progress was seen only with -o json.
func TestLogLinesShowProgress(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.Local)
	frac := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		name string
		line workers.LogLine
		want string
	}{
		{"output", workers.LogLine{Stream: workers.StreamStdout, Line: "hello"}, "hello"},
		{"progress with a message", workers.LogLine{Stream: workers.StreamProgress, Line: "step 2", Progress: frac(0.4)}, "40% step 2"},
		{"progress alone", workers.LogLine{Stream: workers.StreamProgress, Progress: frac(1)}, "100%"},
		{"a fraction of a percent", workers.LogLine{Stream: workers.StreamProgress, Line: "x", Progress: frac(1.0 / 3)}, "33.3% x"},
		{"none", workers.LogLine{Stream: workers.StreamProgress, Progress: frac(0)}, "0%"},
		{"a message without a fraction", workers.LogLine{Stream: workers.StreamProgress, Line: "waiting"}, "waiting"},
		{"its message escaped", workers.LogLine{Stream: workers.StreamProgress, Line: "\x1b[2J", Progress: frac(0.5)}, `50% \x1b[2J`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.line.Time, tc.line.Attempt = at, 2
			require.Equal(t, "03:04:05.006 [2 "+tc.line.Stream+"] "+tc.want, logLineText(tc.line, false, 1))
		})
	}
}

// A line of an attempt handed back and run again says which run wrote it;
// the first run's, and a line whose run is not known, are shown as before.
func TestLogLinesOfALaterRunSayWhichRun(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.Local)
	line := workers.LogLine{Time: at, Attempt: 1, Lease: 7, Stream: workers.StreamStdout, Line: "hello"}
	require.Equal(t, "03:04:05.006 [1 stdout] hello", logLineText(line, false, 0))
	require.Equal(t, "03:04:05.006 [1 stdout] hello", logLineText(line, false, 1))
	require.Equal(t, "03:04:05.006 [1 run 2 stdout] hello", logLineText(line, false, 2))
	require.Equal(t, "03:04:05.006 [1 run 3 stderr] hello", logLineText(workers.LogLine{Time: at, Attempt: 1, Lease: 9, Stream: workers.StreamStderr, Line: "hello"}, false, 3))
}

func TestNoCommandPrintsTheUsageOnStderr(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitUsage, run(nil, &stdout, &stderr))
	require.Empty(t, stdout.String())
	require.Contains(t, stderr.String(), "usage: jetjob COMMAND")
	stderr.Reset()
	require.Equal(t, exitOK, run([]string{"help"}, &stdout, &stderr))
	require.Contains(t, stdout.String(), "usage: jetjob COMMAND")
	require.Empty(t, stderr.String())
}

func TestABadJETJOBSERVERIsNamed(t *testing.T) {
	t.Setenv("JETJOB_SERVER", "http://127.0.0.1:4222")
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitUsage, run([]string{"ls"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `JETJOB_SERVER "http://127.0.0.1:4222" has scheme "http"`)
	stderr.Reset()
	require.Equal(t, exitUsage, run([]string{"ls", "--server", "http://127.0.0.1:4223"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `--server "http://127.0.0.1:4223" has scheme "http"`, "the flag wins over the variable")
}

// get prints a job's result on one line, cut short when long.
func TestGetPrintsTheResult(t *testing.T) {
	for name, tc := range map[string]struct{ result, want string }{
		"compacted": {"{\n  \"rows\": 3\n}", `{"rows":3}`},
		"long":      {`"` + strings.Repeat("é", 150) + `"`, `"` + strings.Repeat("é", 99) + `… (302 bytes; -o json prints all of it)`},
		"escaped":   {`"a\u001b[31m"`, `"a\u001b[31m"`},
	} {
		t.Run(name, func(t *testing.T) {
			var out strings.Builder
			require.NoError(t, printView(&out, projector.View{ID: "j", Result: json.RawMessage(tc.result)}))
			var got string
			for _, line := range strings.Split(out.String(), "\n") {
				if rest, ok := strings.CutPrefix(line, "result:"); ok {
					got = strings.TrimSpace(rest)
				}
			}
			require.Equal(t, tc.want, got)
		})
	}
	var out strings.Builder
	require.NoError(t, printView(&out, projector.View{ID: "j"}))
	require.NotContains(t, out.String(), "result:")
}

// get shows an error's code and worker in parentheses when it has them:
// an error a Go handler returned plainly has no code, and printed as
// "boom ()" and "(, on w1)".
func TestGetLeavesOutAnErrorCodeItDoesNotHave(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var out strings.Builder
	require.NoError(t, printView(&out, projector.View{ID: "j", Error: "boom", Errors: []statemachine.AttemptError{
		{Attempt: 1, Error: "boom", WorkerID: "w1", At: at},
		{Attempt: 2, Error: "exit status 1", Code: "exit", WorkerID: "w2", At: at},
		{Attempt: 3, Error: "exit status 2", Code: "exit", At: at},
		{Attempt: 4, Error: "boom", At: at},
	}}))
	lines := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			lines[k] = strings.TrimSpace(v)
		}
	}
	require.Equal(t, "boom", lines["error"])
	require.Equal(t, "2026-01-02T03:04:05Z: boom (on w1)", lines["attempt 1"])
	require.Equal(t, "2026-01-02T03:04:05Z: exit status 1 (exit, on w2)", lines["attempt 2"])
	require.Equal(t, "2026-01-02T03:04:05Z: exit status 2 (exit)", lines["attempt 3"])
	require.Equal(t, "2026-01-02T03:04:05Z: boom", lines["attempt 4"])

	out.Reset()
	require.NoError(t, printView(&out, projector.View{ID: "j", Error: "exit status 1", ErrorCode: "exit"}))
	require.Contains(t, out.String(), "exit status 1 (exit)\n")
}
