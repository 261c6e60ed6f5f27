package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/statemachine"
)

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755))
	plain := filepath.Join(dir, "plain.txt")
	require.NoError(t, os.WriteFile(plain, []byte("not a program\n"), 0o644))
	spaced := filepath.Join(dir, "spaced.sh")
	require.NoError(t, os.WriteFile(spaced, []byte("#! /bin/sh -e\nexit 0\n"), 0o755))
	// Executable by their mode, yet the kernel starts none of them.
	noShebang := filepath.Join(dir, "no-shebang.sh")
	require.NoError(t, os.WriteFile(noShebang, []byte("echo hi\n"), 0o755))
	empty := filepath.Join(dir, "empty.sh")
	require.NoError(t, os.WriteFile(empty, nil, 0o755))
	badInterp := filepath.Join(dir, "bad-interp.sh")
	require.NoError(t, os.WriteFile(badInterp, []byte("#!/nonexistent/interp\necho hi\n"), 0o755))
	dirInterp := filepath.Join(dir, "dir-interp.sh")
	require.NoError(t, os.WriteFile(dirInterp, []byte("#!"+dir+"\n"), 0o755))
	plainInterp := filepath.Join(dir, "plain-interp.sh")
	require.NoError(t, os.WriteFile(plainInterp, []byte("#!"+plain+"\n"), 0o755))
	noInterp := filepath.Join(dir, "no-interp.sh")
	require.NoError(t, os.WriteFile(noInterp, []byte("#!  \necho hi\n"), 0o755))
	// The kernel takes the \r of a Windows line ending as the name's end.
	crlf := filepath.Join(dir, "crlf.sh")
	require.NoError(t, os.WriteFile(crlf, []byte("#!/bin/sh\r\nexit 0\r\n"), 0o755))
	// There the \r ends the argument, which the interpreter then refuses:
	// env finds no "sh\r", sh has no option "-\r".
	crlfEnv := filepath.Join(dir, "crlf-env.sh")
	require.NoError(t, os.WriteFile(crlfEnv, []byte("#!/usr/bin/env sh\r\nexit 0\r\n"), 0o755))
	crlfArg := filepath.Join(dir, "crlf-arg.sh")
	require.NoError(t, os.WriteFile(crlfArg, []byte("#!/bin/sh -e\r\nexit 0\r\n"), 0o755))
	pathDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(pathDir, "jetjob-bad-script"), []byte("#!/nonexistent/interp\n"), 0o755))
	t.Setenv("PATH", os.Getenv("PATH")+string(os.PathListSeparator)+pathDir)
	for _, tc := range []struct {
		name    string
		command []string
		want    string // "" for no error
	}{
		{"#! with a space and an argument", []string{spaced}, ""},
		{"the test binary, a program", []string{os.Args[0]}, ""},
		{"empty file", []string{empty}, "has no #! line"},
		{"missing interpreter", []string{badInterp}, `its #! line names "/nonexistent/interp", which does not exist`},
		{"interpreter a directory", []string{dirInterp}, "which is a directory"},
		{"interpreter not executable", []string{plainInterp}, "which is not executable"},
		{"#! without an interpreter", []string{noInterp}, "its #! line names no interpreter"},
		{"Windows line endings", []string{crlf}, `its #! line names "/bin/sh\r", which does not exist: the file has Windows line endings`},
		{"Windows line endings, through env", []string{crlfEnv}, `the file has Windows line endings`},
		{"Windows line endings, an argument", []string{crlfArg}, `the file has Windows line endings`},
		{"name on PATH, missing interpreter", []string{"jetjob-bad-script"}, "which does not exist"},
		{"name on PATH", []string{"sh", "-c", "true"}, ""},
		{"executable path", []string{script}, ""},
		{"no command", nil, "no command given"},
		{"empty name", []string{""}, "no command given"},
		{"missing path", []string{"/nonexistent/cmd"}, "does not exist"},
		{"name not on PATH", []string{"jetjob-no-such-command"}, "is not on $PATH"},
		{"not executable", []string{plain}, "is not executable"},
		{"directory", []string{dir}, "is a directory"},
		{"no #! line", []string{noShebang}, "has no #! line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.command != nil && (tc.command[0] == noShebang || tc.command[0] == empty) && runtime.GOOS != "linux" {
				t.Skip("refused on Linux only, where binfmt_misc tells what else the kernel runs")
			}
			err := CheckCommand(tc.command)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), "expected")
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

// An exec config that cannot run is refused when the handler is made. A
// negative grace was read as its default: -1 meant as "SIGKILL at once"
// gave a command 10 s after its SIGTERM.
func TestExecConfigThatCannotRunIsRefused(t *testing.T) {
	for name, cfg := range map[string]ExecConfig{
		"a negative grace": {Command: []string{"true"}, Grace: -1},
		"no command":       {},
		// CheckCommand says "no command given" of it; the handler took it
		// and failed every attempt as a command that could not start.
		"an empty command name": {Command: []string{""}},
	} {
		_, err := ExecHandler(cfg)
		require.ErrorIs(t, err, ErrInvalidConfig, name)
	}
	_, err := ExecHandler(ExecConfig{Command: []string{"true"}, Grace: -time.Second})
	require.EqualError(t, err, "invalid workers config: exec grace -1s, expected 0 (the default, 10s) or more")
	_, err = ExecHandler(ExecConfig{Command: []string{"true"}})
	require.NoError(t, err, "a zero grace takes its default")
}

// execHandler is ExecHandler for a config that can run.
func execHandler(t testing.TB, cfg ExecConfig) Handler {
	t.Helper()
	h, err := ExecHandler(cfg)
	require.NoError(t, err)
	return h
}

// startFailures wraps ExecHandler and keeps what it returned per attempt;
// after is called once the attempt's handler has returned.
type startFailures struct {
	mu   sync.Mutex
	errs map[int]error
}

func (s *startFailures) handler(t testing.TB, cfg ExecConfig, after func(*Job)) Handler {
	h := execHandler(t, cfg)
	s.errs = map[int]error{}
	return func(ctx context.Context, j *Job) error {
		err := h(ctx, j)
		s.mu.Lock()
		s.errs[j.Attempt] = err
		s.mu.Unlock()
		if after != nil {
			after(j)
		}
		return err
	}
}

func (s *startFailures) requireStartError(t *testing.T, attempt int) {
	t.Helper()
	s.mu.Lock()
	err, ok := s.errs[attempt]
	s.mu.Unlock()
	require.True(t, ok, "attempt %d ran", attempt)
	var coded *CodedError
	require.ErrorAs(t, err, &coded, "attempt %d", attempt)
	require.Equal(t, ErrorCodeStart, coded.Code)
	var noRetry *NoRetryError
	require.False(t, errors.As(err, &noRetry), "a start failure must not be NoRetry: %v", err)
}

// TestExecStartFailureIsRetried: a command that cannot be started fails the
// attempt with the start code, and the job is retried until its attempts are
// used up, then fails.
func TestExecStartFailureIsRetried(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	missing := filepath.Join(t.TempDir(), "gone", "cmd")
	var sf startFailures
	f.pool(PoolConfig{Types: []string{"nx"}}, sf.handler(t, ExecConfig{Command: []string{missing}}, nil))
	j := f.submit(statemachine.SubmitParams{Type: "nx", MaxAttempts: 3,
		Backoff: statemachine.BackoffConfig{Base: 20 * time.Millisecond, Cap: 50 * time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, 3, done.Attempt)
	require.Equal(t, ErrorCodeStart, done.ErrorCode)
	require.Contains(t, done.Error, "start command")
	require.Contains(t, done.Error, missing)
	require.Len(t, done.Errors, 3)
	for i, e := range done.Errors {
		require.Equal(t, i+1, e.Attempt)
		require.Equal(t, ErrorCodeStart, e.Code, "attempt %d", e.Attempt)
		sf.requireStartError(t, e.Attempt)
	}
	// Two retried attempts, then the final failure.
	types := f.types(j.ID)
	require.Equal(t, 2, count(types, events.TypeAttemptFailed), "%v", types)
	require.Equal(t, 1, count(types, events.TypeFailed), "%v", types)
	require.Equal(t, events.TypeFailed, types[len(types)-1])
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		lines, err := logs.Read(context.Background(), j.ID)
		if err != nil || len(lines) != 3 {
			return false
		}
		for _, l := range lines {
			if l.Stream != StreamSystem || !strings.Contains(l.Line, "cannot start") {
				return false
			}
		}
		return true
	}, "one 'cannot start' log line per attempt")
}

// A command that exits 65 fails its job at once, and says so; another
// non-zero exit, or a signal, fails the attempt and is retried.
func TestExecExitCodesDecideTheRetry(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"exits"}}, execHandler(t, ExecConfig{Command: []string{"sh", "-c", `eval "$(cat)"`}}))
	backoff := statemachine.BackoffConfig{Base: 10 * time.Millisecond, Cap: 20 * time.Millisecond}
	for script, want := range map[string]struct {
		err      string
		attempts int
	}{
		"exit 65":    {"exit status 65 (no retry)", 1},
		"exit 3":     {"exit status 3", 2},
		"kill -9 $$": {"signal: killed", 2},
	} {
		j := f.submit(statemachine.SubmitParams{Type: "exits", MaxAttempts: 2, Backoff: backoff, Payload: []byte(script)})
		done := f.waitState(j.ID, statemachine.StateFailed)
		require.Equal(t, want.err, done.Error, script)
		require.Equal(t, ErrorCodeExit, done.ErrorCode, script)
		require.Equal(t, want.attempts, done.Attempt, script)
	}
}

// TestExecStartFailureThenSuccess: a command that is missing on the first
// attempt (being redeployed, say) and back by the second runs then: the
// job succeeds on attempt 2.
func TestExecStartFailureThenSuccess(t *testing.T) {
	f := newFixture(t, true)
	script := filepath.Join(t.TempDir(), "run.sh")
	var sf startFailures
	h := sf.handler(t, ExecConfig{Command: []string{script}}, func(j *Job) {
		if j.Attempt != 1 {
			return
		}
		// On the handler's goroutine: t.Errorf, not require.
		if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran attempt $JETJOB_ATTEMPT\n"), 0o755); err != nil {
			t.Errorf("write the command: %v", err)
		}
	})
	f.pool(PoolConfig{Types: []string{"redeploy"}}, h)
	j := f.submit(statemachine.SubmitParams{Type: "redeploy", MaxAttempts: 2,
		Backoff: statemachine.BackoffConfig{Base: 20 * time.Millisecond, Cap: 50 * time.Millisecond}})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	require.Equal(t, 2, done.Attempt)
	require.Len(t, done.Errors, 1)
	require.Equal(t, ErrorCodeStart, done.Errors[0].Code)
	sf.requireStartError(t, 1)
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		lines, err := logs.Read(context.Background(), j.ID)
		if err != nil {
			return false
		}
		for _, l := range lines {
			if l.Stream == StreamStdout && l.Line == "ran attempt 2" {
				return true
			}
		}
		return false
	}, "the command ran on attempt 2")
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

func TestLineWriterSplitsAndCutsLines(t *testing.T) {
	long := strings.Repeat("é", maxLineBytes) // two bytes each
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{"lines", []string{"a\nb\n"}, []string{"a", "b"}},
		{"a line over several writes", []string{"he", "llo\nwor", "ld\n"}, []string{"hello", "world"}},
		{"empty lines and carriage returns", []string{"\n\r\nx\r\n"}, []string{"", "", "x"}},
		{"a last line without newline", []string{"a\nb"}, []string{"a", "b"}},
		{"a long line is cut, the next ones kept", []string{"before\n", long, long, "\nafter\n"},
			[]string{"before", long[:maxLineBytes] + "…", "after"}},
		{"a cut never splits a character", []string{"x" + long[:maxLineBytes] + "\n"},
			[]string{"x" + long[:maxLineBytes-2] + "…"}},
		{"nor one split between two writes", []string{"x" + long[:maxLineBytes-1], long[1:4] + "\n"},
			[]string{"x" + long[:maxLineBytes-2] + "…"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			w := &lineWriter{emit: func(l string) { got = append(got, l) }}
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				require.NoError(t, err)
				require.Equal(t, len(s), n)
			}
			w.flush()
			require.Equal(t, tc.want, got)
		})
	}
}

// A line is stored with no character cut in two, whether ExecHandler's
// lineWriter cut it or a handler logged it whole: a line cut by the writer
// was cut again as it was stored, in the middle of its mark or of a
// character, and showed a replacement character before the mark.
func TestStoredLinesAreCutBetweenCharacters(t *testing.T) {
	odd := "x" + strings.Repeat("é", maxLineBytes) // a character across the limit
	euros := strings.Repeat("€", maxLineBytes)     // three bytes each
	cutByWriter := func(s string) string {
		var got []string
		w := &lineWriter{emit: func(l string) { got = append(got, l) }}
		_, _ = w.Write([]byte(s + "\n"))
		require.Len(t, got, 1)
		return got[0]
	}
	for _, tc := range []struct {
		name, line, want string
	}{
		{"cut by the exec writer, two-byte characters", cutByWriter(odd), odd[:maxLineBytes-1] + "…"},
		{"cut by the exec writer, three-byte characters", cutByWriter(euros), euros[:maxLineBytes-1] + "…"},
		{"logged whole, two-byte characters", odd, odd[:maxLineBytes-1] + "…"},
		{"logged whole, three-byte characters", euros, euros[:maxLineBytes-1] + "…"},
		{"at the limit, kept", euros[:maxLineBytes-1], euros[:maxLineBytes-1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stored LogLine
			require.NoError(t, json.Unmarshal(encodeLine(LogLine{Line: tc.line}), &stored))
			require.Equal(t, tc.want, stored.Line)
			require.NotContains(t, stored.Line, "\uFFFD")
		})
	}
}

// A command that exits 0 but leaves a process in the background holding
// its output ends its job when it exits, not when that process does.
func TestExecJobEndsWhenItsCommandExits(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"bg"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", "(sleep 30 &); echo started; exit 0"}}))
	j := f.submit(statemachine.SubmitParams{Type: "bg"})
	done := f.waitState(j.ID, statemachine.StateSucceeded)
	took := done.CompletedAt.Sub(*done.StartedAt)
	require.Less(t, took, 10*time.Second, "the command exited at once, the job ran %s", took)
	require.Equal(t, "started", f.waitLines(j.ID, StreamStdout, 1)[0].Line)
	require.Equal(t, "the command exited, but a process it started still held its output 1s after: no longer reading it",
		f.waitLines(j.ID, StreamSystem, 1)[0].Line)
}

// A line longer than a log line is cut; the lines after it are kept.
func TestExecKeepsTheLinesAfterALongOne(t *testing.T) {
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"longline"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", "echo before; head -c 2000000 /dev/zero | tr '\\0' x; echo; echo after"}}))
	j := f.submit(statemachine.SubmitParams{Type: "longline"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	lines := f.waitLines(j.ID, StreamStdout, 3)
	require.Equal(t, "before", lines[0].Line)
	require.Equal(t, strings.Repeat("x", maxLineBytes)+"…", lines[1].Line)
	require.Equal(t, "after", lines[2].Line)
}

// A command that ignores SIGTERM is killed at the end of its grace, and its
// job's log says so.
func TestExecCommandThatIgnoresSIGTERMIsKilledAndTheLogSaysSo(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"stubborn"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", "trap '' TERM; echo ready; sleep 30"}, Grace: 100 * time.Millisecond}))
	j := f.submit(statemachine.SubmitParams{Type: "stubborn"})
	f.waitLines(j.ID, StreamStdout, 1)
	_, err := f.m.Cancel(context.Background(), j.ID, "not needed")
	require.NoError(t, err)
	f.waitState(j.ID, statemachine.StateCanceled)
	lines := f.waitLines(j.ID, StreamSystem, 2)
	require.Contains(t, lines[0].Line, "SIGTERM to its process group, SIGKILL in 100ms")
	require.Equal(t, "the command outlived its grace of 100ms after SIGTERM: SIGKILL to its process group", lines[1].Line)
}

// A canceled command that exits on SIGTERM but leaves a process that
// ignores it (holding none of its output) has that process killed at the
// end of the grace: the job's retry must not run beside it.
func TestExecCancelKillsWhatTheCommandLeftAfterTheGrace(t *testing.T) {
	f := newFixture(t, true)
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	script := `sh -c 'trap "" TERM; echo $$ > ` + pidFile + `; exec sleep 300 >/dev/null 2>&1' & echo ready; wait`
	f.pool(PoolConfig{Types: []string{"leaves"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", script}, Grace: 200 * time.Millisecond}))
	j := f.submit(statemachine.SubmitParams{Type: "leaves"})
	f.waitLines(j.ID, StreamStdout, 1)
	var pid int
	natstest.Eventually(t, 10*time.Second, func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, "the child wrote its pid")
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	_, err := f.m.Cancel(context.Background(), j.ID, "not needed")
	require.NoError(t, err)
	f.waitState(j.ID, statemachine.StateCanceled)
	natstest.Eventually(t, 10*time.Second, func() bool { return !runningProcess(pid) }, "the child of the canceled command killed")
	lines := f.waitLines(j.ID, StreamSystem, 2)
	require.Equal(t, "the command exited, but processes it started outlived its grace of 200ms after SIGTERM: SIGKILL to its process group", lines[1].Line)
}

// runningProcess: pid is a process that has not exited (a zombie has).
func runningProcess(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// An attempt's lines are numbered from 1 over all its streams, in the order
// they are stored, however its command interleaves stdout and stderr.
func TestAnAttemptsLinesAreNumberedInOrder(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"both"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done"}}))
	j := f.submit(statemachine.SubmitParams{Type: "both"})
	f.waitState(j.ID, statemachine.StateSucceeded)
	logs, err := AttachLogs(context.Background(), f.env.JS)
	require.NoError(t, err)
	var lines []LogLine
	natstest.Eventually(t, 10*time.Second, func() bool {
		lines, err = logs.Read(context.Background(), j.ID)
		return err == nil && len(lines) == 400
	}, "400 lines of job %s (%d)", j.ID, len(lines))
	gaps := NewLineGaps(nil)
	for i, l := range lines {
		require.Equal(t, int64(i+1), l.Number, "line %d: %+v", i, l)
		require.Zero(t, gaps.Before(l))
	}
}

// Missing lines are counted by attempt, passing over the server's
// unnumbered lines; a line stored after a later one is no gap when all the
// lines are known, and is not counted twice when they come one by one.
func TestLineGapsCountTheMissingNumbers(t *testing.T) {
	line := func(attempt int, n int64) LogLine { return LogLine{Attempt: attempt, Number: n} }
	leased := func(attempt int, lease uint64, n int64) LogLine {
		return LogLine{Attempt: attempt, Lease: lease, Number: n}
	}
	for _, tc := range []struct {
		name  string
		lines []LogLine
		want  []int64 // as they come
		all   []int64 // all known at once
	}{
		{"complete", []LogLine{line(1, 1), line(1, 2), line(1, 3)}, []int64{0, 0, 0}, []int64{0, 0, 0}},
		{"first lines gone", []LogLine{line(1, 51), line(1, 52)}, []int64{50, 0}, []int64{50, 0}},
		{"a gap", []LogLine{line(1, 1), line(1, 2000)}, []int64{0, 1998}, []int64{0, 1998}},
		{"the server's line between", []LogLine{line(1, 10), line(1, 0), line(1, 11)}, []int64{9, 0, 0}, []int64{9, 0, 0}},
		{"two attempts interleaved", []LogLine{line(1, 1), line(2, 1), line(1, 2), line(2, 2)}, []int64{0, 0, 0, 0}, []int64{0, 0, 0, 0}},
		{"a retry's first lines gone", []LogLine{line(1, 1), line(2, 30)}, []int64{0, 29}, []int64{0, 29}},
		{"stored out of order", []LogLine{line(1, 1), line(1, 3), line(1, 4), line(1, 2)}, []int64{0, 1, 0, 0}, []int64{0, 0, 0, 0}},
		{"unnumbered lines of an older worker", []LogLine{line(1, 0), line(1, 0)}, []int64{0, 0}, []int64{0, 0}},
		// Counted at once, not walked: a tester's hand-published line
		// numbered 9e18 kept `jetjob logs` busy for good.
		{"a number near the limit", []LogLine{line(1, 1), line(1, 9e18), line(1, 5)}, []int64{0, 9e18 - 2, 0}, []int64{0, 9e18 - 3, 0}},
		{"numbered twice", []LogLine{line(1, 1), line(1, 1), line(1, 4)}, []int64{0, 0, 2}, []int64{0, 0, 2}},
		// A job handed back runs again under the same attempt number, its
		// lines numbered from 1 again under a new lease.
		{"an attempt run again after a hand-back", []LogLine{leased(1, 7, 1), leased(1, 7, 2), leased(1, 9, 1), leased(1, 9, 3)}, []int64{0, 0, 0, 1}, []int64{0, 0, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				gaps *LineGaps
				want []int64
			}{{NewLineGaps(nil), tc.want}, {NewLineGaps(tc.lines), tc.all}} {
				var got []int64
				for _, l := range tc.lines {
					got = append(got, c.gaps.Before(l))
				}
				require.Equal(t, c.want, got)
			}
		})
	}
}

// A line stored twice (sent again after its ack was lost, though it had
// been stored) is read once; a line sent again that fills a gap, a line of
// another lease under the same number, and the unleased lines of the
// server and of older workers are each read.
func TestReadLinesTellsASecondCopy(t *testing.T) {
	line := func(lease uint64, n int64) LogLine { return LogLine{Attempt: 1, Lease: lease, Number: n} }
	for _, tc := range []struct {
		name  string
		lines []LogLine
		again []bool
	}{
		{"in order", []LogLine{line(5, 1), line(5, 2), line(5, 3)}, []bool{false, false, false}},
		{"a copy of the last", []LogLine{line(5, 1), line(5, 2), line(5, 2)}, []bool{false, false, true}},
		{"copies sent again after later lines", []LogLine{line(5, 1), line(5, 2), line(5, 3), line(5, 1), line(5, 2)}, []bool{false, false, false, true, true}},
		{"lost lines sent again fill their gap once", []LogLine{line(5, 1), line(5, 5), line(5, 3), line(5, 2), line(5, 4), line(5, 3)}, []bool{false, false, false, false, false, true}},
		{"a gap filled from its ends", []LogLine{line(5, 10), line(5, 1), line(5, 9), line(5, 1), line(5, 9)}, []bool{false, false, false, true, true}},
		{"another lease, the same numbers", []LogLine{line(5, 1), line(5, 2), line(6, 1), line(6, 2)}, []bool{false, false, false, false}},
		{"unleased lines", []LogLine{line(0, 1), line(0, 1), line(5, 0), line(5, 0)}, []bool{false, false, false, false}},
		{"a number near the limit", []LogLine{line(5, 9e18), line(5, 1), line(5, 9e18), line(5, 1)}, []bool{false, false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read := readLines{}
			var got []bool
			for _, l := range tc.lines {
				got = append(got, read.again(l))
			}
			require.Equal(t, tc.again, got)
		})
	}
}

// A command past its timeout that ignores SIGTERM is killed at the end of
// its grace, and its attempt fails as timed out: the pool, whose grace is
// the worker's too, failed it as unstopped in the same moment, and then
// refused the exec handler's own result.
func TestExecTimeoutKillsAndFailsAStubbornCommandOnce(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	const grace = 300 * time.Millisecond
	f.pool(PoolConfig{Types: []string{"stubborn"}, JobTimeout: 200 * time.Millisecond, ShutdownGrace: grace},
		execHandler(t, ExecConfig{Command: []string{"sh", "-c", "trap '' TERM; sleep 30"}, Grace: grace}))
	j := f.submit(statemachine.SubmitParams{Type: "stubborn", MaxAttempts: 1})
	failed := f.waitState(j.ID, statemachine.StateFailed)
	require.Equal(t, ErrorCodeTimeout, failed.ErrorCode)
	require.NotContains(t, failed.Error, "did not stop", "failed by the pool, not by the handler's own end")
}

// The lines an attempt keeps to send again are its last LogLinesPerJob
// that failed, and never many more, however many a chatty job cut off from
// the server fails.
func TestFailedLinesKeptAreTheAttemptsLast(t *testing.T) {
	j := &Job{}
	for range 3*LogLinesPerJob + 7 {
		j.lines++
		j.lineFailed(LogLine{Number: j.lines})
		require.LessOrEqual(t, len(j.failed), LogLinesPerJob+LogLinesPerJob/4, "failed lines kept")
	}
	require.Equal(t, j.lines, j.failed[len(j.failed)-1].Number, "the last line kept")
	last := j.failed[len(j.failed)-LogLinesPerJob:]
	require.Equal(t, j.lines-LogLinesPerJob+1, last[0].Number, "the attempt's last lines kept, in order")
}

// BenchmarkLineFailed is a line failed by a chatty job cut off from the
// server: moving the 10,000 kept at each, under the lock every Log takes,
// made such a job write 1,000,000 lines in 70 s against 9.5 s.
func BenchmarkLineFailed(b *testing.B) {
	j := &Job{}
	for b.Loop() {
		j.lines++
		j.lineFailed(LogLine{Number: j.lines})
	}
}

// A command's output is read to its end however slowly its lines are
// logged: the output delay counts only what a process the command left in
// the background holds or writes. Counted from the command's exit, it threw
// away what was still in the pipe a second after, and said a process held
// the output: a job of `seq 1 10050` succeeded with its log ending at line
// 6,775 on a loaded machine. Here, with the server's answers held, the
// lines past the 4,000 awaiting their acks are logged 200 ms apart, the
// command long exited.
func TestExecReadsTheOutputToItsEndHoweverSlowlyItIsLogged(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	// 4,000 short lines, then 12 of 4 kB logged 200 ms apart: a read takes
	// at most 32 kB, so the last ones are still in the pipe over a second
	// after the command exited.
	const lines = 4012
	seq := `seq 1 4000; pad=$(head -c 4000 /dev/zero | tr '\0' x); for i in $(seq 4001 4012); do echo "$i $pad"; done`
	for _, tc := range []struct {
		name, script string
		held         bool // a background process holds the output
	}{
		{"the command alone", seq, false},
		{"a background process holds the output", seq + "; sleep 30 &", true},
		{"a background process writes on", seq + "; while :; do echo tick; sleep 0.2; done &", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each waits out its lines logged 200 ms apart and the output
			// delay, on a server and a proxy of its own.
			t.Parallel()
			f := newFixture(t, true)
			proxy := natstest.NewProxy(t, f.env.URL)
			h := execHandler(t, ExecConfig{Command: []string{"sh", "-c", tc.script}})
			f.poolThrough(proxy, false, PoolConfig{Types: []string{"slowlog"}}, func(ctx context.Context, j *Job) error {
				proxy.StallAnswers()
				defer proxy.Restore() // the lines refused meanwhile are sent again before the result
				return h(ctx, j)
			}, func(p *Pool) { p.logAckTimeout = time.Minute }) // the 4,000 acks held not given up on, nor the lines sent again
			j := f.submit(statemachine.SubmitParams{Type: "slowlog"})
			// The result waits for the 4,000 acks held, then for the lines
			// refused sent again: on a loaded machine, longer than
			// waitState's 10 s.
			natstest.Eventually(t, 2*time.Minute, func() bool {
				done, err := f.m.Load(context.Background(), j.ID)
				return err == nil && done.State == statemachine.StateSucceeded
			}, "job %s succeeded", j.ID)
			logs, err := AttachLogs(context.Background(), f.env.JS)
			require.NoError(t, err)
			all, err := logs.Read(context.Background(), j.ID)
			require.NoError(t, err)
			var numbers []int
			var system []string
			for _, l := range all {
				if l.Stream == StreamSystem {
					system = append(system, l.Line)
					continue
				}
				require.Equal(t, StreamStdout, l.Stream, l.Line)
				if l.Line == "tick" {
					continue
				}
				n, err := strconv.Atoi(strings.Fields(l.Line)[0])
				require.NoError(t, err)
				numbers = append(numbers, n)
			}
			slices.Sort(numbers)
			require.Equal(t, lines, len(numbers), "lines stored when the job succeeded")
			for i, n := range numbers {
				require.Equal(t, i+1, n)
			}
			if !tc.held {
				require.Empty(t, system)
				return
			}
			require.Equal(t, []string{"the command exited, but a process it started still held its output 1s after: no longer reading it"}, system)
		})
	}
}

// A command that exited on its own before its handler was told to stop
// keeps its exit: a worker paused (SIGSTOP) while its command ran, and
// woken after the command had exited 0, stopped the handler as cut off
// from the server before reading the exit, and the attempt was failed as
// lost_contact and ran again (a chaos soak: 17 such jobs in 20 minutes).
// Here the stop comes while a background process holds the command's
// output, so its exit is read only later.
func TestExecCommandThatExitedBeforeItsStopKeepsItsExit(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	f := newFixture(t, true)
	mark := filepath.Join(t.TempDir(), "pid")
	// The background sleep holds the command's output, so its exit is read
	// late; and a stop must still end it.
	h := execHandler(t, ExecConfig{Command: []string{"sh", "-c", `sleep 60 & echo $! > "$0.bg"; echo $$ > "$0.tmp" && mv "$0.tmp" "$0"; exit 0`, mark}})
	returned := make(chan error, 1)
	f.pool(PoolConfig{Types: []string{"woken"}}, func(ctx context.Context, j *Job) error {
		hctx, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		go func() {
			// Stopped once the command has exited, as the fence stops a
			// handler whose worker was paused past it.
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				b, err := os.ReadFile(mark)
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil &&
					!runningProcess(pid) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			stop(fmt.Errorf("%w: paused", ErrLostContact))
		}()
		err := h(hctx, j)
		returned <- err
		return err
	})
	j := f.submit(statemachine.SubmitParams{Type: "woken"})
	require.NoError(t, <-returned, "the command exited 0 before the stop")
	f.waitState(j.ID, statemachine.StateSucceeded)
	b, err := os.ReadFile(mark + ".bg")
	require.NoError(t, err)
	bg, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !runningProcess(bg) }, 10*time.Second, 5*time.Millisecond,
		"the process the command left running outlived the handler's stop")
}
