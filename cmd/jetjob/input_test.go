package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/statemachine"
)

// deadServer is a NATS URL whose listener closes every connection: a
// command that gets as far as dialing fails at once, and dials nothing
// else (no fixed port, no server of anyone else's).
func deadServer(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return "nats://" + l.Addr().String()
}

// runInProcess runs the CLI in this process, as main does.
func runInProcess(args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return out.String(), errb.String(), code
}

// errLineMax bounds an error line whatever the input: a value is echoed
// shortened (quoteShort), never whole.
const errLineMax = 300

// A 10 KB value made a 10-20 KB error line: echoed whole, some twice.
func TestErrorLinesStayShort(t *testing.T) {
	t.Setenv("JETJOB_SERVER", deadServer(t))
	big := strings.Repeat("x", 10_000)
	digits := strings.Repeat("1", 10_000)
	// Files named short, for the line to measure the echo, not the path.
	t.Chdir(t.TempDir())
	files := 0
	file := func(content string) string {
		files++
		name := fmt.Sprintf("j%d", files)
		require.NoError(t, os.WriteFile(name, []byte(content), 0o600))
		return name
	}
	for _, args := range [][]string{
		{big},
		{"ls", big},
		{"ls", "--" + big},
		{"ls", "--" + big + "\n"},
		{"ls", "---" + big},
		{"ls", "--state", big},
		{"ls", "-o", big},
		{"ls", "--server", "::" + big},
		{"ls", "--server", big + "://host"},
		{"ls", "--limit", digits},
		{"ls", "--limit", big},
		{"ls", "--after", big},
		{"cancel", "--pending=" + big},
		{"cancel", "01a20000-0000-7000-8000-000000000000", "--reason", big + "\n"},
		{"submit", "--type", "t", "--run-at", big},
		{"submit", "--type", "t", "--delay", big},
		{"submit", "--type", "t", "--delay", digits},
		{"submit", "--type", "t", "--delay", digits + "s"},
		{"submit", "--type", "t", "--delay", "-" + big + "s"},
		{"submit", "--type", "t", "--delay", "1" + strings.Repeat("0", 10_000) + "1ns"},
		{"submit", "--type", "t", "--backoff-base", big},
		{"submit", "--type", "t", "--tag", big},
		{"submit", "--type", "t", "--meta", big},
		{"submit", "--type", "t", "--tag", big + "=1", "--tag", big + "=1"},
		{"submit", "--type", "t", "--tag", "k=" + big},
		{"submit", "--type", "t", "--key", big + "\n"},
		{"submit", "--type", "t", "--priority", digits},
		{"submit", "--type", "t", "--payload-file", "/nonexistent/" + big},
		{"submit", "--file", "/nonexistent/" + big},
		{"submit", "--file", file(`{"type":"t","run_at":"` + big + `"}`)},
		{"submit", "--file", file(`{"type":"t","delay":"` + big + `"}`)},
		{"submit", "--file", file(`{"type":"t","delay":"-` + digits + `s"}`)},
		{"submit", "--file", file(`{"type":"t","backoff_cap":"-` + digits + `s"}`)},
		{"submit", "--file", file(`{"type":"t","` + big + `":1}`)},
		{"submit", "--file", file(`{"type":"t","tags":{"` + big + `":"a","` + big + `":"a"}}`)},
		{"purge", "--older-than", "1h", "--state", big},
		{"worker", "--type", "t", "--id", big, "--", "true"},
		{"worker", "--type", "t", "--grace", big, "--", "true"},
		{"worker", "--type", big, "--", "true"},
		{"worker", "--type", "t", "--", big},
		{"worker", "--type", "t", "--", "/" + big},
		{"server", "--fsync", big},
		{"server", "--batch-staging", big},
		{"server", "--listen", big},
		{"server", "--listen", "127.0.0.1:" + digits},
		{"server", "--retain", strings.Repeat("0", 10_000) + "s"},
		{"server", "--nats", "::" + big},
		{"bench", "--scenario", big},
		{"bench", "--fsync", big},
		{"bench", "-o", big},
	} {
		stdout, stderr, code := runInProcess(args...)
		name := args[0]
		if len(args) > 1 {
			name += " " + args[1]
		}
		require.Equal(t, exitUsage, code, "%s: %s", name, stderr)
		require.Empty(t, stdout, name)
		require.Equal(t, 1, strings.Count(stderr, "\n"), "%s: one line: %q", name, stderr)
		require.Less(t, len(stderr), errLineMax, "%s: %s", name, stderr)
	}
	// A well-formed address with a long host: NATS's dial error names the
	// host whole (a 5 KB line).
	host := strings.Repeat("b", 5_000)
	for _, args := range [][]string{
		{"ls", "--server", "nats://" + host + ":1"},
		{"get", "--server", "nats://127.0.0.1:1,nats://" + host + ":2", "01a20000-0000-7000-8000-000000000000"},
	} {
		_, stderr, code := runInProcess(args...)
		require.Equal(t, exitFailure, code, stderr)
		require.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
		// Bounded, if above errLineMax: the address is said twice, the
		// line's own and NATS's.
		require.Less(t, len(stderr), 2*errLineMax, stderr)
	}
	// A long path keeps its end, the file name.
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 150), "jobs.ndjson")
	_, stderr, _ := runInProcess("submit", "--file", long)
	require.Contains(t, stderr, "jobs.ndjson")
}

// FuzzCLIArgs runs the commands that fail before or at the dial with any
// arguments, against a server that closes every connection: never a panic,
// a documented exit code, and a failure is one short line on stderr with
// nothing on stdout.
func FuzzCLIArgs(f *testing.F) {
	f.Setenv("JETJOB_SERVER", deadServer(f))
	for _, s := range []string{
		"get\x00abc", "ls\x00--tag\x00k=v", "ls\x00--after\x00*", "cancel\x00--pending\x00--all",
		"cancel\x00x\x00--reason\x00a\nb", "history\x00a.b", "purge\x00--older-than\x001h",
		"ls\x00--state\x00pending\x00--limit\x00-1", "submit\x00--type\x00a\x00--tag\x00k=v=w",
		"submit\x00--type\x00a\x00--delay\x009999999999h", "watch\x00--meta-not\x00a=b",
		"logs\x00x\x00--raw", "submit\x00--type\x00a\x00--priority\x00010\x00--run-at\x002026-01-02T15:04:05Z",
		"admin\x00rebuild\x00-o=json", "submit\x00--type\x00a\x00--delay\x00", "worker\x00--type\x00a\x00--id\x00",
		"ls\x00---x", "cancel\x00--pending=maybe", "ls\x00-o\x00yaml", "ls\x00--state\x00" + strings.Repeat("\xff", 300),
	} {
		f.Add(s)
	}
	allowed := map[string]bool{"get": true, "ls": true, "watch": true, "history": true, "cancel": true, "purge": true,
		"admin": true, "submit": true, "logs": true, "worker": true}
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Split(s, "\x00")
		if !allowed[args[0]] || len(s) > 1<<16 {
			return
		}
		for _, a := range args {
			flagName, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			switch {
			case strings.Contains(a, "file"), // reads files or stdin
				strings.Contains(a, "server"),                             // dials elsewhere
				flagName == "h" || flagName == "help",                     // prints the usage on os.Stdout
				args[0] == "worker" && !strings.Contains(s, "--\x00true"): // would run a command
				return
			}
		}
		stdout, stderr, code := runInProcess(args...)
		switch code {
		case exitFailure, exitUsage, exitNotFound, exitRefused:
		default:
			t.Fatalf("%q: exit %d with no server; stderr %q", args, code, stderr)
		}
		if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
			t.Fatalf("%q: stderr not one line: %q", args, stderr)
		}
		if len(stderr) >= errLineMax {
			t.Fatalf("%q: stderr line of %d bytes: %q", args, len(stderr), stderr)
		}
		if stdout != "" {
			t.Fatalf("%q: stdout on failure: %q", args, stdout)
		}
	})
}

// endlessBadLines reads as a file of bad lines with no end (/dev/urandom).
type endlessBadLines struct{}

func (endlessBadLines) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "x\n"[i%2]
	}
	return len(p), nil
}

// submit --file /dev/urandom kept every bad line's message, grew to 815 MB
// and never ended.
func TestSubmitFileStopsReadingWhatIsNotNDJSON(t *testing.T) {
	type result struct {
		err    error
		errOut string
	}
	done := make(chan result, 1)
	go func() {
		var errOut bytes.Buffer
		_, err := scanJobs("/dev/urandom", endlessBadLines{}, (*statemachine.SubmitParams).Validate, &errOut)
		done <- result{err, errOut.String()}
	}()
	select {
	case r := <-done:
		require.ErrorIs(t, r.err, errUsage)
		require.Contains(t, r.err.Error(), fmt.Sprintf("/dev/urandom: %d bad lines of the first %d (the first %d above), where reading stopped: expected one JSON job object per line", badLinesMax, badLinesMax, badLinesShown))
		require.Equal(t, badLinesShown, strings.Count(r.errOut, "\n"), r.errOut)
	case <-time.After(time.Minute):
		t.Fatal("still reading an endless file of bad lines after a minute")
	}
}

func TestSubmitFileCountsTheBadLinesItDoesNotShow(t *testing.T) {
	var errOut bytes.Buffer
	lines := strings.Repeat("{\"type\":\"a\"}\nnope\n", badLinesShown+5)
	_, err := scanJobs("f", strings.NewReader(lines), (*statemachine.SubmitParams).Validate, &errOut)
	require.ErrorContains(t, err, fmt.Sprintf("f: %d bad lines (the first %d above); nothing was submitted", badLinesShown+5, badLinesShown))
	require.Equal(t, badLinesShown, strings.Count(errOut.String(), "\n"))
	require.Contains(t, errOut.String(), "jetjob submit: f line 2: not valid JSON")
}

// A run-at takes what RFC 3339 allows: its "T" and "Z" in lower case too
// (section 5.6), in --run-at and in a --file line's run_at. Both were
// refused, "expected an RFC 3339 time".
func TestRunAtTakesRFC3339InLowerCase(t *testing.T) {
	want := time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)
	for _, s := range []string{"2030-01-02T15:04:05Z", "2030-01-02t15:04:05z", "2030-01-02t16:04:05+01:00"} {
		got, err := parseRunAt(s, "")
		require.NoError(t, err, s)
		require.True(t, want.Equal(*got), "%s: %s", s, got)
		p, err := parseJobLine([]byte(`{"type":"t","run_at":"` + s + `"}`))
		require.NoError(t, err, s)
		require.True(t, want.Equal(*p.RunAt), "%s in a line: %s", s, p.RunAt)
	}
	_, err := parseRunAt("2030-01-02x15:04:05z", "")
	require.Error(t, err)
}

// --payload-file's payload is the file's bytes as they are, whitespace and
// trailing newline too, as curl --data-binary @F sends a file: the CLI
// checks that a payload is JSON but does not rewrite it (a pretty-printed
// file keeps its indentation), and a handler or command gets what was
// given. The help says so.
func TestPayloadFileIsTakenAsItIs(t *testing.T) {
	name := filepath.Join(t.TempDir(), "payload.json")
	written := []byte("{\n  \"frame\": 7\n}\n")
	require.NoError(t, os.WriteFile(name, written, 0o600))
	got, err := readPayloadFile(t.Context(), name)
	require.NoError(t, err)
	require.Equal(t, written, got)

	r := runCLI(t, "nats://127.0.0.1:1", "help", "submit")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "its bytes as they are (a trailing newline too)")
}
