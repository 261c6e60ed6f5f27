package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/bench"
	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

var binary string

// waitingTestsAtOnce is how many of the package's parallel tests run at
// once when no -parallel is given. They are the ones that mostly wait on a
// clock (a server's 30 s for a NATS that is not there, an account's expiry,
// a refusal's backoff, a follow's outage), not on the CPU: go test's
// default, GOMAXPROCS at a time, ran them two by two on CI's 2 cores, one
// pair after the other.
const waitingTestsAtOnce = 16

func TestMain(m *testing.M) {
	if file := os.Getenv(natsConfigEnv); file != "" {
		runNATS(file) // this process is a test's NATS (startRotatingNATS)
	}
	flag.Parse()
	natstest.ParallelUnlessGiven(waitingTestsAtOnce)
	dir, err := os.MkdirTemp("", "jetjob-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "jetjob")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic(fmt.Sprintf("build jetjob: %v\n%s", err, out))
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// serverProc is a `jetjob server` child process.
type serverProc struct {
	t    *testing.T
	dir  string
	addr string
	url  string
	cmd  *exec.Cmd
	args []string
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func startServerProc(t *testing.T, extra ...string) *serverProc {
	t.Helper()
	s := &serverProc{t: t, dir: t.TempDir(), addr: freeAddr(t), args: extra}
	s.url = "nats://" + s.addr
	s.start()
	t.Cleanup(func() { s.kill() })
	return s
}

func (s *serverProc) start() {
	s.t.Helper()
	args := append([]string{"server", "--data", s.dir, "--listen", s.addr}, s.args...)
	s.cmd = exec.Command(binary, args...)
	out := &syncBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	require.NoError(s.t, s.cmd.Start())
	// The server says it is ready once every stream, bucket and service is
	// up. The views bucket, which this waited for before, is there long
	// before that on a restart (it is recovered with the data dir), so a
	// test could go on while the enqueuer and the detector were starting.
	natstest.Eventually(s.t, 20*time.Second, func() bool {
		return strings.Contains(out.String(), "jetjob server ready")
	}, "server up: %s", out)
}

func (s *serverProc) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func (s *serverProc) jetjob(args ...string) result {
	s.t.Helper()
	return runCLI(s.t, s.url, args...)
}

func runCLI(t *testing.T, url string, args ...string) result {
	t.Helper()
	return runCLIEnv(t, []string{"JETJOB_SERVER=" + url}, args...)
}

// runCLIEnv runs jetjob with env added to the test's environment.
func runCLIEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	// A command that should have refused its input may run on instead
	// (a server started): fail the test rather than hang it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("jetjob %v still ran after 2 minutes; stderr: %s", args, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run jetjob %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

func (r result) ok(t *testing.T) string {
	t.Helper()
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	return strings.TrimSpace(r.stdout)
}

type historyEntry struct {
	Seq         uint64          `json:"seq"`
	Type        string          `json:"type"`
	Quarantined string          `json:"quarantined"`
	Time        time.Time       `json:"time"`
	Data        json.RawMessage `json:"data"`
}

func history(t *testing.T, s *serverProc, id string) []historyEntry {
	t.Helper()
	var h []historyEntry
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("history", id, "-o", "json").ok(t)), &h))
	return h
}

func TestConcurrentCancelsExactlyOneWins(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "build").ok(t)
	var wg sync.WaitGroup
	codes := make([]int, 20)
	stderrs := make([]string, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := runCLI(t, s.url, "cancel", id, "--reason", "race")
			codes[i], stderrs[i] = r.code, r.stderr
		}()
	}
	wg.Wait()
	wins := 0
	for i, c := range codes {
		switch c {
		case 0:
			wins++
		case 4:
			require.Contains(t, stderrs[i], "canceled", "a refused cancel names the state")
			require.Equal(t, 1, strings.Count(strings.TrimSpace(stderrs[i]), "\n")+1, "one line: %q", stderrs[i])
		default:
			t.Fatalf("cancel exited %d: %s", c, stderrs[i])
		}
	}
	require.Equal(t, 1, wins)
	cancels := 0
	for _, e := range history(t, s, id) {
		if e.Type == "job.canceled" {
			cancels++
		}
	}
	require.Equal(t, 1, cancels)
}

// TestCancelOfAFinishedJobIsRefused: a job that succeeded cannot be
// canceled, and the refusal names its state with exit 4.
func TestCancelOfAFinishedJobIsRefused(t *testing.T) {
	s := startServerProc(t)
	startWorker(t, s, "--type", "ok", "--", "true")
	id := s.jetjob("submit", "--type", "ok").ok(t)
	waitView(t, s, id, func(v projector.View) bool { return v.State == "succeeded" }, "succeeded")
	r := s.jetjob("cancel", id)
	require.Equal(t, 4, r.code, r.stderr)
	require.Equal(t, "jetjob cancel: job "+id+" is succeeded: cannot cancel\n", r.stderr)
	require.Len(t, history(t, s, id), 3, "nothing appended")
}

// TestBulkCancelByFilter (seed 001): cancel --pending cancels the pending
// and scheduled jobs its filters select, asks for --all before it cancels
// every one, and a dry run changes nothing.
func TestBulkCancelByFilter(t *testing.T) {
	s := startServerProc(t)
	var v1, v2 []string
	for i := 0; i < 3; i++ {
		v1 = append(v1, s.jetjob("submit", "--type", "build", "--meta", "template_version=v1").ok(t))
	}
	v1 = append(v1, s.jetjob("submit", "--type", "build", "--meta", "template_version=v1", "--delay", "1h").ok(t))
	for i := 0; i < 2; i++ {
		v2 = append(v2, s.jetjob("submit", "--type", "build", "--meta", "template_version=v2").ok(t))
	}
	for _, id := range append(append([]string{}, v1...), v2...) {
		waitView(t, s, id, func(v projector.View) bool { return v.Version > 0 }, "projected")
	}
	pendingCount := func() int {
		var views []projector.View
		require.NoError(t, json.Unmarshal([]byte(s.jetjob("ls", "--state", "pending", "--state", "scheduled", "-o", "json").ok(t)), &views))
		return len(views)
	}

	r := s.jetjob("cancel", "--pending")
	require.Equal(t, 2, r.code)
	require.Contains(t, r.stderr, "add --all")
	require.Equal(t, 6, pendingCount(), "nothing canceled")

	var res struct {
		Canceled []string `json:"canceled"`
		DryRun   bool     `json:"dry_run"`
	}
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("cancel", "--pending", "--dry-run", "-o", "json").ok(t)), &res))
	require.True(t, res.DryRun)
	require.ElementsMatch(t, append(append([]string{}, v1...), v2...), res.Canceled)
	require.Equal(t, 6, pendingCount(), "a dry run changes nothing")

	out := s.jetjob("cancel", "--pending", "--meta-not", "template_version=v2", "--reason", "outdated").ok(t)
	for _, id := range v1 {
		require.Contains(t, out, "canceled "+id)
	}
	require.Contains(t, out, "4 canceled, 0 skipped")
	for _, id := range v2 {
		require.NotContains(t, out, id)
	}
	waitView(t, s, v1[3], func(v projector.View) bool { return v.State == "canceled" && v.CancelReason == "outdated" }, "the scheduled v1 job canceled")

	var all struct {
		Canceled []string `json:"canceled"`
		DryRun   *bool    `json:"dry_run"`
	}
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("cancel", "--pending", "--all", "-o", "json").ok(t)), &all))
	require.Nil(t, all.DryRun)
	require.ElementsMatch(t, v2, all.Canceled)
	natstest.Eventually(t, 5*time.Second, func() bool { return pendingCount() == 0 }, "no pending job left")
}

// TestGetFoldsTheHistoryWhileTheViewsBucketIsMissing: get answers from the
// log while the server makes the views bucket again.
func TestGetFoldsTheHistoryWhileTheViewsBucketIsMissing(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "build").ok(t)
	waitView(t, s, id, func(v projector.View) bool { return v.Version > 0 }, "projected")
	nc, err := nats.Connect(s.url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, js.DeleteKeyValue(context.Background(), projector.BucketDefault))
	var v projector.View
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("get", id, "-o", "json").ok(t)), &v))
	require.Equal(t, id, v.ID)
	require.Equal(t, "pending", string(v.State))
}

// TestHistoryShowsAForeignEventEscaped: an event that some other publisher
// put on a job's subject is quarantined; its type, whatever it holds, shows
// on one row with its control characters escaped.
func TestHistoryShowsAForeignEventEscaped(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "build").ok(t)
	nc, err := nats.Connect(s.url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.Publish(context.Background(), events.SubjectPrefixDefault+id, []byte(`{"v":1,"type":"job.bogus\u001b[31m\nX"}`))
	require.NoError(t, err)
	out := s.jetjob("history", id).ok(t)
	lines := strings.Split(out, "\n")
	require.Len(t, lines, 3, "a header and two events: %q", out)
	require.Contains(t, lines[2], `job.bogus\x1b[31m\nX`)
	require.Contains(t, lines[2], "quarantined: ")
	require.NotContains(t, out, "\x1b")

	// A well-formed event of a transition the job's state did not allow is
	// skipped by the fold, and history says so.
	illegal := fmt.Sprintf(`{"v":1,"id":"01a20000-0000-7000-8000-0000000000aa","job":%q,"type":"job.succeeded","time":"2026-11-30T00:00:00Z","data":{"lease":1}}`, id)
	_, err = js.Publish(context.Background(), events.SubjectPrefixDefault+id, []byte(illegal))
	require.NoError(t, err)
	var h []historyEntry
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("history", id, "-o", "json").ok(t)), &h))
	require.Len(t, h, 3)
	require.Equal(t, "job.succeeded", h[2].Type)
	require.Contains(t, h[2].Quarantined, "lease lost", "the job is pending: no attempt holds it")
	require.Contains(t, s.jetjob("history", id).ok(t), "quarantined: job "+id+" is pending (lease 0, attempt 0): report for lease 1 refused")
	waitView(t, s, id, func(v projector.View) bool { return v.State == "pending" && v.Quarantined == 2 }, "pending, two events skipped")
	// The first had no time: -o json leaves it out, rather than a zero time.
	var raw []map[string]any
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("history", id, "-o", "json").ok(t)), &raw))
	require.NotContains(t, raw[1], "time")
	require.Contains(t, raw[2], "time")
}

// TestJunkOnlySubjectIsNotFoundByGetAndHistory: a job ID whose subject
// holds only messages that are no event (junk some other publisher put
// there) names no job. get said so with exit 3; history printed the junk
// with exit 0, as if the job existed. Both exit 3 now, with one line
// saying what the subject holds; history still shows the messages.
func TestJunkOnlySubjectIsNotFoundByGetAndHistory(t *testing.T) {
	s := startServerProc(t)
	nc, err := nats.Connect(s.url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	id := "01a20000-0000-7000-8000-000000000bad"
	for _, junk := range []string{"not json", `{"v":1,"type":"job.bogus"}`} {
		_, err = js.Publish(context.Background(), events.SubjectPrefixDefault+id, []byte(junk))
		require.NoError(t, err)
	}
	for _, args := range [][]string{{"get", id}, {"history", id}, {"history", id, "-o", "json"}} {
		r := s.jetjob(args...)
		require.Equal(t, 3, r.code, "%v: stdout %q, stderr %q", args, r.stdout, r.stderr)
		require.Equal(t, 1, strings.Count(r.stderr, "\n"), "%v: one line: %q", args, r.stderr)
		require.Contains(t, r.stderr, "job "+id+" not found: its history holds 2 messages, none a valid submit (each is quarantined)", args)
	}
	var h []historyEntry
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("history", id, "-o", "json").stdout), &h))
	require.Len(t, h, 2, "the messages are still shown")
	require.NotEmpty(t, h[0].Quarantined)
	require.NotEmpty(t, h[1].Quarantined)
}

// TestTextOutputShowsBidiOverridesEscaped: a tag, meta or cancel reason
// holding a bidirectional override (U+202E turns the rest of a line
// around; it is no control character, so it is taken) is shown escaped by
// get, ls and history, and as stored by -o json.
func TestTextOutputShowsBidiOverridesEscaped(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "build", "--tag", "who=\u202eevil", "--meta", "note=\u2066x\u2069").ok(t)
	s.jetjob("cancel", id, "--reason", "\u202ereason").ok(t)
	for _, args := range [][]string{{"get", id}, {"ls"}, {"history", id}} {
		out := s.jetjob(args...).ok(t)
		require.NotContains(t, out, "\u202e", "%v: %s", args, out)
		require.NotContains(t, out, "\u2066", "%v: %s", args, out)
		require.Contains(t, out, `\u202eevil`, args) // who=… in get and ls, JSON in history
	}
	require.Contains(t, s.jetjob("ls").ok(t), `who=\u202eevil`)
	get := s.jetjob("get", id).ok(t)
	require.Contains(t, get, `note=\u2066x\u2069`)
	require.Contains(t, get, `\u202ereason`)
	var v projector.View
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("get", id, "-o", "json").ok(t)), &v))
	require.Equal(t, "\u202eevil", v.Tags["who"])
	require.Contains(t, s.jetjob("ls", "-o", "json").ok(t), "\u202eevil", "JSON as stored")
}

func TestCanceledJobViewAndHistoryAgree(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "build", "--tag", "region=eu", "--meta", "template_version=v1").ok(t)
	s.jetjob("cancel", id).ok(t)
	var view projector.View
	natstest.Eventually(t, 5*time.Second, func() bool {
		r := s.jetjob("get", id, "-o", "json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &view) == nil && view.State == "canceled"
	}, "canceled view")
	h := history(t, s, id)
	require.Len(t, h, 2)
	require.Equal(t, "job.canceled", h[1].Type)
	require.Equal(t, h[1].Seq, view.Version)
	require.NotNil(t, view.CanceledAt)
	require.True(t, view.CanceledAt.Equal(h[1].Time))
	var listed []projector.View
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("ls", "--state", "canceled", "-o", "json").ok(t)), &listed))
	require.Len(t, listed, 1)
	require.Equal(t, id, listed[0].ID)
	r := s.jetjob("cancel", id)
	require.Equal(t, 4, r.code)
	require.Contains(t, r.stderr, "is canceled")
}

func listAll(t *testing.T, s *serverProc) string {
	t.Helper()
	return s.jetjob("ls", "--limit", "0", "-o", "json").ok(t)
}

// TestBulkCancelRightAfterASubmitCancelsEveryJob: a bulk cancel decides on
// the views, and waits for them to show every job the log held when it
// started, so none submitted just before is missed.
func TestBulkCancelRightAfterASubmitCancelsEveryJob(t *testing.T) {
	s := startServerProc(t)
	lines := &strings.Builder{}
	for i := 0; i < 2000; i++ {
		lines.WriteString(`{"type":"late"}` + "\n")
	}
	file := filepath.Join(t.TempDir(), "jobs.ndjson")
	require.NoError(t, os.WriteFile(file, []byte(lines.String()), 0o600))
	ids := strings.Fields(s.jetjob("submit", "--file", file).ok(t))
	require.Len(t, ids, 2000)
	var res struct {
		Canceled []string `json:"canceled"`
	}
	require.NoError(t, json.Unmarshal([]byte(s.jetjob("cancel", "--pending", "--all", "-o", "json").ok(t)), &res))
	require.ElementsMatch(t, ids, res.Canceled)
}

func TestKillAndRestartKeepsEveryJob(t *testing.T) {
	s := startServerProc(t)
	lines := &strings.Builder{}
	for i := 0; i < 500; i++ {
		fmt.Fprintf(lines, `{"type":"import","meta":{"n":"%d"}}`+"\n", i)
	}
	file := filepath.Join(t.TempDir(), "jobs.ndjson")
	require.NoError(t, os.WriteFile(file, []byte(lines.String()), 0o600))
	ids := strings.Fields(s.jetjob("submit", "--file", file).ok(t))
	require.Len(t, ids, 500)
	var before string
	natstest.Eventually(t, 10*time.Second, func() bool {
		var views []projector.View
		before = listAll(t, s)
		return json.Unmarshal([]byte(before), &views) == nil && len(views) == 500
	}, "500 views")
	s.kill()
	s.start()
	natstest.Eventually(t, 10*time.Second, func() bool { return listAll(t, s) == before }, "identical views after kill -9")
	for _, id := range ids[:20] {
		require.Len(t, history(t, s, id), 1)
	}
}

func TestDeletedViewsAreRebuiltIdentically(t *testing.T) {
	s := startServerProc(t)
	for i := 0; i < 30; i++ {
		id := s.jetjob("submit", "--type", "t", "--tag", fmt.Sprintf("n=%d", i%3)).ok(t)
		if i%4 == 0 {
			s.jetjob("cancel", id).ok(t)
		}
	}
	var before string
	natstest.Eventually(t, 10*time.Second, func() bool {
		var views []projector.View
		before = listAll(t, s)
		if json.Unmarshal([]byte(before), &views) != nil || len(views) != 30 {
			return false
		}
		canceled := 0
		for _, v := range views {
			if v.State == "canceled" {
				canceled++
			}
		}
		return canceled == 8
	}, "30 projected views")
	s.kill()
	nc, err := nats.Connect(s.url)
	if err == nil {
		nc.Close()
	}
	// Delete the bucket with the server down: start it, delete, restart.
	s.start()
	nc, err = nats.Connect(s.url)
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, js.DeleteKeyValue(context.Background(), projector.BucketDefault))
	nc.Close()
	s.kill()
	s.start()
	natstest.Eventually(t, 10*time.Second, func() bool { return listAll(t, s) == before }, "identical views after rebuild")
	r := s.jetjob("admin", "rebuild")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, before, listAll(t, s))
}

func TestBadInputExitCodes(t *testing.T) {
	s := startServerProc(t)
	big := strings.Repeat("x", 1<<20+10)
	payloadFile := filepath.Join(t.TempDir(), "big.json")
	require.NoError(t, os.WriteFile(payloadFile, []byte(`"`+big+`"`), 0o600))
	file := func(content string) string {
		name := filepath.Join(t.TempDir(), "f")
		require.NoError(t, os.WriteFile(name, []byte(content), 0o600))
		return name
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ls", "--state", "exploded"}, 2, "unknown state"},
		{[]string{"submit", "--type", "t", "--tag", "novalue"}, 2, "not k=v"},
		{[]string{"submit", "--type", "t", "--tag", "bad key=v"}, 2, "tag key"},
		{[]string{"submit", "--type", "t", "--payload-file", payloadFile}, 2, "payload too large"},
		{[]string{"submit", "--type", "t", "--payload", "{not json"}, 2, "not valid JSON"},
		{[]string{"submit", "--type", "t", "--priority", "42"}, 2, "priority"},
		{[]string{"submit"}, 2, "--type is required"},
		{[]string{"get", "01a20000-0000-7000-8000-000000000000"}, 3, "not found"},
		{[]string{"history", "01a20000-0000-7000-8000-000000000000"}, 3, "not found"},
		{[]string{"cancel", "01a20000-0000-7000-8000-000000000000"}, 3, "not found"},
		{[]string{"get", "bad.id"}, 2, "invalid job ID"},
		{[]string{"nosuchcommand"}, 2, "unknown command"},
		{[]string{"submit", "--type", "t", "--bogus"}, 2, "unknown flag --bogus; -h lists the flags"},
		{[]string{"submit", "--type", "t", "--max-attempts", "0"}, 2, "--max-attempts 0, expected 1-1000"},
		{[]string{"submit", "--type", "t", "--payload-file", file(`{"half`)}, 2, "does not hold valid JSON"},
		{[]string{"submit", "--file", file(`{"type":"a"}{"type":"b"}`)}, 2, "line 1: text after the job's JSON object"},
		{[]string{"submit", "--file", file("{\"type\":\"a\"}\n{\"type\":\"a\"} junk\n")}, 2, "line 2: text after"},
		{[]string{"submit", "--file", file(`{"type":"a"}`), "--priority", "3", "--key", "k"}, 2, "do not combine it with --key, --priority"},
		{[]string{"submit", "--file", file(`{"type":"a","delay":"5x"}`)}, 2, `line 1: delay "5x" has an unknown unit, expected one of ns, us, ms, s, m, h`},
		{[]string{"submit", "--file", file("{\"type\":\"a\",\"key\":\"\xff\xfe\"}\n")}, 2, "line 1: not valid UTF-8, expected UTF-8 text"},
		{[]string{"submit", "--file", file(`{"type":"a","delay":"-1s"}`)}, 2, `line 1: delay "-1s" is negative`},
		{[]string{"submit", "--file", file(`{"type":"a","tags":{"os":1}}`)}, 2, `line 1: a tags value is a JSON number, expected a string`},
		{[]string{"submit", "--file", file("{\"type\":\"a\"}\n\n\n{\"type\":\"a\",\"tags\":{\"a.b\":\"x\"}}\n")}, 2, "f line 4: tag key"},
		{[]string{"purge", "--older-than", "1h", "--state", "pending"}, 2, "only finished jobs are purged"},
		{[]string{"cancel", "--type", "t", "01a20000-0000-7000-8000-000000000000"}, 2, "a cancel by ID takes none"},
		{[]string{"watch", "--limit", "5"}, 2, "unknown flag --limit; -h lists the flags"},
		{[]string{"submit", "--type", "t", "--run-at", "2300-01-01T00:00:00Z"}, 2, "expected a time before 2262"},
		{[]string{"submit", "--type", "t", "--delay", "2562047h"}, 2, "runs the job after 2262-01-01, expected a shorter delay"},
		{[]string{"submit", "--type", "t", "--backoff-cap", "100000h"}, 2, "backoff of 100000h0m0s, expected at most 8760h"},
		{[]string{"submit", "--type", "t", "--tag", "gpu=true,region=eu"}, 2, "each tag its own k=v"},
		{[]string{"submit", "--type", "t", "--meta", "k=\xff"}, 2, "not valid UTF-8"},
		{[]string{"submit", "--type", "t", "--priority", "010"}, 2, "priority 10, expected 0-9"},
		{[]string{"submit", "--type", "t", "--max-attempts", "0x3"}, 2, `--max-attempts "0x3", expected a whole number`},
		{[]string{"submit", "--type", "t", "--payload-file", "/dev/zero"}, 2, "payload too large"},
		{[]string{"submit", "--file", "/dev/zero"}, 2, "line 1 is over 4194304 bytes"},
		{[]string{"submit", "--file", file("\ufeff{\"type\":\"a\",\"priority\":12}\n")}, 2, "f line 1: priority 12"},
		{[]string{"ls", "--server", "nats://127.0.0.1:99999"}, 2, "expected a port of 1-65535"},
		{[]string{"ls", "--server", ""}, 2, "--server is empty"},
		{[]string{"ls", "--server", "::::"}, 2, `--server "::::" is not a URL`},
		{[]string{"server", "--retain", "0s"}, 2, "--retain 0s, expected a duration of at least 1s"},
		{[]string{"ls", "--type", "a.b"}, 2, `--type "a.b", expected`},
		{[]string{"cancel", "--pending", "--tag", "a*=1"}, 2, `--tag key "a*", expected`},
		{[]string{"cancel", "--all"}, 2, "--all needs --pending"},
		{[]string{"cancel", "--pending", "--type", ""}, 2, `--type is empty, expected a job type`},
		{[]string{"cancel", "--pending", "--meta-not", "template_version="}, 2, "--meta-not template_version= has an empty value"},
		{[]string{"purge", "--older-than", ""}, 2, "--older-than is empty, expected a duration such as 720h"},
		{[]string{"ls", "--type", ""}, 2, `--type is empty, expected a job type`},
		{[]string{"bench", "--server", "http://127.0.0.1:4222"}, 2, `has scheme "http"`},
		{[]string{"bench", "--server", "nats://127.0.0.1:1", "--fsync", "always"}, 2, "drop --fsync"},
		{[]string{"bench", "--workers", "4", "--processes", "5"}, 2, "--processes 5, expected at most --workers (4)"},
		{[]string{"bench", "--scenario", "latency", "--n", "500"}, 2, "--n is for the ceiling or e2e or tags scenario"},
		{[]string{"bench", "--scenario", "ceiling", "--workers", "5"}, 2, "--workers is for the"},
		{[]string{"bench", "--scenario", "backlog", "--scenario", "tags", "--scenario", "ops", "--scenario", "memory", "--producers", "2"}, 2,
			"--producers is for the e2e scenario, which this run does not include"},
		{[]string{"bench", "--smoke", "--huge"}, 2, "give one of them"},
		{[]string{"bench", "--n", "abc"}, 2, `--n "abc", expected a whole number`},
		{[]string{"cancel", "--pending", "--all", "--type", "t"}, 2, "give it without --type"},
		{[]string{"ls", "-o", ""}, 2, `-o is empty, expected text or json`},
		{[]string{"cancel", "01a20000-0000-7000-8000-000000000000", "--reason", "two\nlines"}, 2, "expected one line of text"},
		{[]string{"worker", "--type", "t", "--id", "two\nlines", "--", "true"}, 2, "expected 1-128 bytes of one-line UTF-8 text"},
		// An empty value given is refused, not read as no flag: "$D" with D
		// unset ran the job now, "$URL" started a standalone server.
		{[]string{"submit", "--type", "t", "--delay", ""}, 2, "--delay is empty, expected a duration"},
		{[]string{"submit", "--type", "t", "--run-at="}, 2, "--run-at is empty, expected an RFC 3339 time"},
		{[]string{"submit", "--type", "t", "--payload", ""}, 2, "--payload is empty, expected JSON"},
		{[]string{"submit", "--type", "t", "--payload-file", ""}, 2, "--payload-file is empty, expected a file name"},
		{[]string{"submit", "--type", "t", "--backoff-base", ""}, 2, "--backoff-base is empty, expected a duration"},
		{[]string{"submit", "--type", "t", "--backoff-cap", ""}, 2, "--backoff-cap is empty, expected a duration"},
		{[]string{"submit", "--type", "t", "--key", ""}, 2, "--key is empty, expected a key"},
		{[]string{"submit", "--file", ""}, 2, "--file is empty, expected a file name"},
		{[]string{"ls", "--after", ""}, 2, "--after is empty, expected a job ID"},
		{[]string{"worker", "--type", "t", "--id", "", "--", "true"}, 2, "--id is empty, expected a worker ID"},
		{[]string{"worker", "--type", "t", "--grace", "", "--", "true"}, 2, "--grace is empty, expected a value, or no --grace for its default, 10s"},
		// A zero grace was taken as the defaults (10 s to SIGKILL, 30 s to
		// stop), not as none.
		{[]string{"worker", "--type", "t", "--grace", "0", "--", "true"}, 2, "--grace 0, expected a duration above 0 such as 10s"},
		{[]string{"worker", "--type", "t", "--grace", "0s", "--", "true"}, 2, "--grace 0s, expected a duration above 0 such as 10s"},
		// A negative grace was told "0 or more", which 0 is not.
		{[]string{"worker", "--type", "t", "--grace", "-1s", "--", "true"}, 2, "--grace -1s, expected a duration above 0 such as 10s"},
		{[]string{"bench", "--cpuprofile", ""}, 2, "--cpuprofile is empty, expected a file name"},
		{[]string{"server", "--nats", "", "--listen", freeAddr(t), "--data", t.TempDir()}, 2, "--nats is empty, expected a NATS URL"},
		{[]string{"dev", "--nats", "", "--listen", freeAddr(t), "--data", t.TempDir()}, 2, "--nats is empty, expected a NATS URL"},
		// Input is checked before connecting: exit 2, not 3 for the missing job.
		{[]string{"cancel", "01a20000-0000-7000-8000-000000000000", "--reason", strings.Repeat("r", 2000)}, 2, "cancel reason is 2000 bytes, expected at most"},
		{[]string{"bench", "--cpuprofile", "/nonexistent/x"}, 2, "--cpuprofile /nonexistent/x: cannot create it: no such file or directory"},
		{[]string{"worker", "--type", "a", "--type", "b", "--type", "a", "--", "true"}, 2, "--type a given twice, expected each type once"},
		{[]string{"submit", "--file", file("{\"type\":\"a\"}\nnull\n")}, 2, "f line 2: JSON null, expected a JSON object with type, tags"},
	} {
		r := s.jetjob(tc.args...)
		require.Equal(t, tc.code, r.code, "%v: %s", tc.args, r.stderr)
		require.Empty(t, r.stdout, "%v prints nothing on stdout", tc.args)
		require.Contains(t, r.stderr, tc.want, "%v", tc.args)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "one line for %v: %q", tc.args, r.stderr)
	}
	// Nothing was submitted by the refused commands.
	require.Equal(t, "[]", strings.TrimSpace(strings.ReplaceAll(listAll(t, s), "\n", "")))
}

// startWorker runs `jetjob worker` against the server until the test ends.
func startWorker(t *testing.T, s *serverProc, args ...string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"worker", "--server", s.url}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() { // what the worker said, to tell why
			t.Logf("worker %v:\n%s", args, tail(out.String(), 8<<10))
		}
	})
}

// tail is the end of s, at most n bytes of it.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func waitView(t *testing.T, s *serverProc, id string, cond func(projector.View) bool, what string) projector.View {
	t.Helper()
	var v projector.View
	natstest.Eventually(t, 15*time.Second, func() bool {
		r := s.jetjob("get", id, "-o", "json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && cond(v)
	}, "%s: %s", id, what)
	return v
}

func TestCommandWorkerFailsWithExitStatusAndKeepsLogs(t *testing.T) {
	s := startServerProc(t)
	startWorker(t, s, "--type", "sh", "--", "sh", "-c", `echo "out $JETJOB_ATTEMPT"; cat; echo; echo err >&2; printf '\033[31mred\033[0m\n'; exit 1`)
	id := s.jetjob("submit", "--type", "sh", "--max-attempts", "1", "--payload", `{"n":7}`).ok(t)
	v := waitView(t, s, id, func(v projector.View) bool { return v.State == "failed" }, "failed")
	require.Equal(t, "exit status 1", v.Error)
	var logs string
	natstest.Eventually(t, 5*time.Second, func() bool {
		logs = s.jetjob("logs", id).stdout
		return strings.Contains(logs, "out 1") && strings.Contains(logs, `{"n":7}`) && strings.Contains(logs, "err") && strings.Contains(logs, "red")
	}, "log lines: %s", logs)
	require.Contains(t, logs, `] \x1b[31mred\x1b[0m`+"\n", "a terminal escape is shown, not obeyed")
	require.Contains(t, s.jetjob("logs", id, "--raw").stdout, "] \x1b[31mred\x1b[0m\n")

	// Output that cannot be written is a failure, not a silent success.
	full := toDevFull(t, s, "logs", id)
	require.Equal(t, 1, full.code)
	require.Contains(t, full.stderr, "jetjob logs: write output: ")
	full = toDevFull(t, s, "submit", "--type", "nobody")
	require.Equal(t, 1, full.code)
	require.Regexp(t, `^jetjob submit: job \S+ was submitted, but printing it failed: `, full.stderr)
}

// toDevFull runs jetjob with its stdout on /dev/full, where every write
// fails with ENOSPC.
func toDevFull(t *testing.T, s *serverProc, args ...string) result {
	t.Helper()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "JETJOB_SERVER="+s.url)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = full, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "jetjob %v succeeded with its output lost", args)
	return result{"", errb.String(), ee.ExitCode()}
}

func TestCanceledCommandGetsSIGTERM(t *testing.T) {
	s := startServerProc(t)
	script := filepath.Join(t.TempDir(), "trap.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\ntrap 'echo got SIGTERM; exit 143' TERM\necho started\nwhile :; do sleep 0.05; done\n"), 0o755))
	startWorker(t, s, "--type", "long", "--grace", "5s", "--", script)
	id := s.jetjob("submit", "--type", "long").ok(t)
	natstest.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(s.jetjob("logs", id).stdout, "started")
	}, "command started")
	require.Contains(t, s.jetjob("cancel", id).ok(t), "canceling")
	waitView(t, s, id, func(v projector.View) bool { return v.State == "canceled" }, "canceled")
	natstest.Eventually(t, 5*time.Second, func() bool {
		return strings.Contains(s.jetjob("logs", id).stdout, "got SIGTERM")
	}, "SIGTERM in the logs")
	require.Equal(t, 4, s.jetjob("cancel", id).code)
}

func TestPurgedJobIsGone(t *testing.T) {
	s := startServerProc(t)
	done := s.jetjob("submit", "--type", "t").ok(t)
	s.jetjob("cancel", done).ok(t)
	kept := s.jetjob("submit", "--type", "t").ok(t)
	waitView(t, s, done, func(v projector.View) bool { return v.State == "canceled" }, "canceled")
	waitView(t, s, kept, func(v projector.View) bool { return v.State == "pending" }, "pending")
	dry := s.jetjob("purge", "--older-than", "0s", "--dry-run")
	require.Equal(t, 0, dry.code, dry.stderr)
	require.Equal(t, "would purge "+done+"\n1 would purge\n", dry.stdout)
	require.Equal(t, 0, s.jetjob("get", done).code, "a dry run purges nothing")
	r := s.jetjob("purge", "--older-than", "0s", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, done)
	require.NotContains(t, r.stdout, kept)
	for _, cmd := range []string{"get", "history", "logs"} {
		require.Equal(t, 3, s.jetjob(cmd, done).code, cmd)
	}
	require.Equal(t, 0, s.jetjob("get", kept).code)
	require.Equal(t, 2, s.jetjob("purge", "--older-than", "1h", "--state", "running").code)
}

// TestWorkerRunsThroughAServerCrash: a worker that stays up while the server
// is killed and restarted goes on taking jobs, those queued before the crash
// and those submitted after, though the queue consumers (held in memory) did
// not survive the restart.
func TestWorkerRunsThroughAServerCrash(t *testing.T) {
	s := startServerProc(t)
	// The first worker alone serves "after"; the second, started after the
	// crash, alone serves the tagged jobs queued before it.
	startWorker(t, s, "--type", "after", "--concurrency", "4", "--", "true")
	first := s.jetjob("submit", "--type", "after").ok(t)
	waitView(t, s, first, func(v projector.View) bool { return v.State == "succeeded" }, "succeeded before the crash")

	// Queued while no worker serves the tag set, so they wait in the queue.
	var queued []string
	for i := 0; i < 5; i++ {
		queued = append(queued, s.jetjob("submit", "--type", "crash", "--tag", "gpu=a100").ok(t))
	}
	s.kill()
	s.start()
	startWorker(t, s, "--type", "crash", "--tag", "gpu=a100", "--", "true")
	for i := 0; i < 5; i++ {
		queued = append(queued, s.jetjob("submit", "--type", "after").ok(t))
	}
	for _, id := range queued {
		waitView(t, s, id, func(v projector.View) bool { return v.State == "succeeded" }, "succeeded after the crash")
	}
}

func TestSubmitWithAKeyAlreadyUsedSaysSo(t *testing.T) {
	s := startServerProc(t)
	first := s.jetjob("submit", "--type", "t", "--key", "k1")
	id := first.ok(t)
	require.Empty(t, first.stderr)
	again := s.jetjob("submit", "--type", "t", "--key", "k1")
	require.Equal(t, id, again.ok(t))
	require.Contains(t, again.stderr, "already names job "+id)
	require.Contains(t, again.stderr, "nothing was submitted")
}

// TestWatchFailsWhenTheServerIsGone: a dashboard must tell a lost server
// from a watch that was stopped.
func TestWatchFailsWhenTheServerIsGone(t *testing.T) {
	t.Parallel() // waits for the watch to give up on its server
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "watched").ok(t)
	// The watch is under way once it printed the current view.
	lines := endedByAKilledServer(t, s, id, "watch", "--type", "watched")
	require.Equal(t, "jetjob watch: lost the connection to the jetjob server at "+s.url+"; reconnecting", lines[0], "said as it happens")
	require.Len(t, lines, 2, "the notice, then the error on one line: %q", lines)
	require.Contains(t, lines[1], "watch ended: lost the connection")
}

// endedByAKilledServer runs a following command, kills the server once the
// command printed first (containing first), and returns the command's
// stderr lines after it exited 1.
func endedByAKilledServer(t *testing.T, s *serverProc, first string, args ...string) []string {
	t.Helper()
	cmd, errb := startedPrinting(t, s, first, args...)
	s.kill()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s still running a minute after its server was killed", args[0])
	}
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, 1, ee.ExitCode(), "stderr: %s", errb.String())
	return strings.Split(strings.TrimSpace(errb.String()), "\n")
}

// startedPrinting starts a jetjob command on s and returns once it printed
// first (in its first output), with its stderr.
func startedPrinting(t *testing.T, s *serverProc, first string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "JETJOB_SERVER="+s.url)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	errb := &bytes.Buffer{}
	cmd.Stderr = errb
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	line := make([]byte, 512)
	n, err := stdout.Read(line)
	require.NoError(t, err)
	require.Contains(t, string(line[:n]), first)
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return cmd, errb
}

// TestLogsFollowSaysWhenTheServerIsGone: following a job's log ends, as a
// watch does, naming the lost server rather than only what NATS said.
func TestLogsFollowSaysWhenTheServerIsGone(t *testing.T) {
	t.Parallel() // waits for the follow to give up on its server
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "talker").ok(t)
	startWorker(t, s, "--type", "talker", "--", "sh", "-c", "echo hello; sleep 600")
	// Following once it printed the job's first line.
	lines := endedByAKilledServer(t, s, "hello", "logs", "-f", id)
	require.Len(t, lines, 1, "one line: %q", lines)
	require.Contains(t, lines[0], "logs ended: lost the connection to the jetjob server at "+s.url)
}

// Ctrl-C ends a follow as asked, exit 0 with nothing said, as it ends a
// watch (Logs.Follow now says when its ctx ended it).
func TestLogsFollowEndsOnInterrupt(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "talker").ok(t)
	startWorker(t, s, "--type", "talker", "--", "sh", "-c", "echo hello; sleep 600")
	cmd, errb := startedPrinting(t, s, "hello", "logs", "-f", id)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait(), "stderr: %s", errb.String())
	require.Empty(t, errb.String())
}

// A worker killed with SIGKILL takes its command with it, and what the
// command started: the job is retried once the worker is found dead, and
// must not run next to an orphan. The kernel kills the command itself; the
// child it started ran on until the worker's watchdog came.
func TestCommandDiesWithItsWorker(t *testing.T) {
	s := startServerProc(t)
	dir := t.TempDir()
	pidFile, childFile := filepath.Join(dir, "pid"), filepath.Join(dir, "child")
	script := filepath.Join(dir, "stubborn.sh")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\ntrap '' TERM\n"+
		"sh -c 'echo $$ > "+childFile+"; while :; do sleep 0.05; done' &\n"+
		"echo $$ > "+pidFile+"\nwhile :; do sleep 0.05; done\n"), 0o755))
	cmd := exec.Command(binary, "worker", "--server", s.url, "--type", "stubborn", "--", script)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	s.jetjob("submit", "--type", "stubborn").ok(t)
	pids := map[string]int{}
	for what, file := range map[string]string{"the command": pidFile, "its child": childFile} {
		natstest.Eventually(t, 15*time.Second, func() bool {
			b, err := os.ReadFile(file)
			if err != nil {
				return false
			}
			pids[what], err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil
		}, "%s wrote its PID", what)
		require.True(t, alive(pids[what]))
		t.Cleanup(func() { _ = syscall.Kill(pids[what], syscall.SIGKILL) })
	}
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	for what, pid := range pids {
		natstest.Eventually(t, 10*time.Second, func() bool { return !alive(pid) }, "%s (%d) outlived the worker", what, pid)
	}
}

// alive reports whether a process runs: one that exited but was not yet
// reaped by its new parent is a zombie, not alive.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// ls shows a page and says on stderr how to get the next one.
func TestListSaysWhenThereIsMore(t *testing.T) {
	s := startServerProc(t)
	var ids []string
	for range 3 {
		ids = append(ids, s.jetjob("submit", "--type", "page").ok(t))
	}
	var page []projector.View
	natstest.Eventually(t, 10*time.Second, func() bool {
		r := s.jetjob("ls", "--type", "page", "-o", "json", "--limit", "0")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &page) == nil && len(page) == 3
	}, "three jobs listed")
	first := s.jetjob("ls", "--type", "page", "--limit", "2", "-o", "json")
	require.Equal(t, 0, first.code)
	require.NoError(t, json.Unmarshal([]byte(first.stdout), &page))
	require.Len(t, page, 2)
	require.Contains(t, first.stderr, "--after "+ids[1])
	rest := s.jetjob("ls", "--type", "page", "--limit", "2", "--after", ids[1], "-o", "json")
	require.Equal(t, 0, rest.code)
	require.NoError(t, json.Unmarshal([]byte(rest.stdout), &page))
	require.Len(t, page, 1)
	require.Equal(t, ids[2], page[0].ID)
	require.Empty(t, rest.stderr, "the last page says nothing more")
	require.Equal(t, 2, s.jetjob("ls", "--after", "not an id").code)
}

// worker --timeout stops a command that runs too long and fails its attempt.
func TestWorkerTimeoutStopsAHungCommand(t *testing.T) {
	s := startServerProc(t)
	startWorker(t, s, "--type", "hang", "--timeout", "300ms", "--grace", "1s", "--", "sh", "-c", "sleep 30")
	id := s.jetjob("submit", "--type", "hang", "--max-attempts", "1").ok(t)
	v := waitView(t, s, id, func(v projector.View) bool { return v.State == "failed" }, "failed by the timeout")
	require.Equal(t, "timeout", v.ErrorCode)
	require.Equal(t, 2, s.jetjob("worker", "--type", "x", "--timeout", "-1s", "--", "true").code)
}

// submit --file says which lines' keys already named a job.
func TestSubmitFileSaysWhichKeysWereUsed(t *testing.T) {
	s := startServerProc(t)
	file := filepath.Join(t.TempDir(), "jobs.ndjson")
	require.NoError(t, os.WriteFile(file, []byte(`{"type":"k","key":"a"}`+"\n"+`{"type":"k"}`+"\n"+`{"type":"k","key":"b"}`+"\n"), 0o644))
	first := s.jetjob("submit", "--file", file)
	require.Equal(t, 0, first.code, first.stderr)
	require.Empty(t, first.stderr)
	again := s.jetjob("submit", "--file", file)
	require.Equal(t, 0, again.code, again.stderr)
	require.Contains(t, again.stderr, "key already names a job, nothing submitted for it: line 1, 3")
	firstIDs, againIDs := strings.Fields(first.stdout), strings.Fields(again.stdout)
	require.Len(t, againIDs, 3)
	require.Equal(t, firstIDs[0], againIDs[0])
	require.NotEqual(t, firstIDs[1], againIDs[1], "no key: a new job")
	require.Equal(t, firstIDs[2], againIDs[2])
}

// Every bad line of a --file is said, in plain words, and nothing is
// submitted.
func TestSubmitFileSaysEveryBadLine(t *testing.T) {
	s := startServerProc(t)
	file := filepath.Join(t.TempDir(), "jobs.ndjson")
	require.NoError(t, os.WriteFile(file, []byte(`{"type":"ok"}
{"type":"ok","priority":"3"}
[1]
{"type":"ok","max_attempts":0}
{"type":"ok","backoff_base":"2s","backoff_cap":"1m"}
`), 0o644))
	r := s.jetjob("submit", "--file", file)
	require.Equal(t, 2, r.code)
	require.Contains(t, r.stderr, "line 2: priority is a JSON string, expected a whole number")
	require.Contains(t, r.stderr, "line 3: a JSON array, expected a JSON object")
	require.Contains(t, r.stderr, "line 4: max_attempts 0, expected 1-1000")
	require.Contains(t, r.stderr, "3 bad lines")
	require.NotContains(t, r.stderr, "line 5")
	require.NotContains(t, r.stderr, "main.jobLine")
	require.Equal(t, "[]", strings.TrimSpace(strings.ReplaceAll(listAll(t, s), "\n", "")), "nothing submitted")
}

// TestLogsCountsDroppedLinesByAttempt: the lines of an attempt cut off from
// the server and of its retry interleave, with a line of the server's
// between; none is missing there, and logs says nothing. A gap in one
// attempt is said once, with its count.
func TestLogsCountsDroppedLinesByAttempt(t *testing.T) {
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "interleaved").ok(t)
	_, js := natstest.Connect(t, s.url)
	logs, err := workers.AttachLogs(context.Background(), js)
	require.NoError(t, err)
	for _, l := range []workers.LogLine{
		{Attempt: 1, Number: 1, Stream: "stdout", Line: "a1"},
		{Attempt: 1, Stream: "system", Line: "the server's, unnumbered"},
		{Attempt: 2, Number: 1, Stream: "stdout", Line: "b1"},
		{Attempt: 1, Number: 2, Stream: "stdout", Line: "a2"},
		{Attempt: 2, Number: 2, Stream: "stdout", Line: "b2"},
		{Attempt: 2, Number: 5, Stream: "stdout", Line: "b5"},
		{Attempt: 2, Number: 7, Stream: "stdout", Line: "b7"},
	} {
		l.Time = time.Now()
		require.NoError(t, logs.Append(context.Background(), id, l))
	}
	r := s.jetjob("logs", id)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, 7, strings.Count(r.stdout, "\n"))
	require.Equal(t, "jetjob logs: 2 lines of attempt 2 missing here: a job keeps its last 10000 lines, and a worker cut off from the server may lose lines\n"+
		"jetjob logs: 1 line of attempt 2 missing here: a job keeps its last 10000 lines, and a worker cut off from the server may lose lines\n", r.stderr)
}

// TestLogsTellsARerunFromTheFirstRun: a job handed back (its worker
// stopping) runs again under the same attempt number. The text form showed
// the lines of both runs as [1 stdout]; only -o json's lease told them
// apart. The second run's lines now say so; the first run's, and the
// server's own, are shown as before.
func TestLogsTellsARerunFromTheFirstRun(t *testing.T) {
	ctx := context.Background()
	s := startServerProc(t)
	id := s.jetjob("submit", "--type", "rerun").ok(t)
	_, js := natstest.Connect(t, s.url)
	lg, err := events.Open(ctx, js, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	logs, err := workers.AttachLogs(ctx, js)
	require.NoError(t, err)
	first, err := m.Acquire(ctx, id, "w1")
	require.NoError(t, err)
	require.NoError(t, logs.Append(ctx, id, workers.LogLine{Time: time.Now(), Attempt: first.Attempt, Number: 1, Lease: first.Lease, Stream: "stdout", Line: "first run"}))
	_, err = m.Release(ctx, first, "worker stopping")
	require.NoError(t, err)
	require.NoError(t, logs.Append(ctx, id, workers.LogLine{Time: time.Now(), Attempt: first.Attempt, Stream: "system", Line: "the server's"}))
	second, err := m.Acquire(ctx, id, "w2")
	require.NoError(t, err)
	require.Equal(t, first.Attempt, second.Attempt, "a job handed back runs again under its attempt number")
	require.NotEqual(t, first.Lease, second.Lease)
	require.NoError(t, logs.Append(ctx, id, workers.LogLine{Time: time.Now(), Attempt: second.Attempt, Number: 1, Lease: second.Lease, Stream: "stdout", Line: "second run"}))

	out := s.jetjob("logs", id).ok(t)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 3, out)
	require.Regexp(t, `^\S+ \[1 stdout\] first run$`, lines[0])
	require.Regexp(t, `^\S+ \[1 system\] the server's$`, lines[1])
	require.Regexp(t, `^\S+ \[1 run 2 stdout\] second run$`, lines[2])
}

// TestLogsSaysWhenEarlyLinesAreGone: a job that wrote more lines than a job
// keeps shows its last ones, and stderr says how many were dropped before
// them.
func TestLogsSaysWhenEarlyLinesAreGone(t *testing.T) {
	s := startServerProc(t)
	startWorker(t, s, "--type", "sh", "--", "sh", "-c", `seq 1 "$(cat)"`)
	chatty := s.jetjob("submit", "--type", "sh", "--payload", "10050").ok(t)
	quiet := s.jetjob("submit", "--type", "sh", "--payload", "3").ok(t)
	for _, id := range []string{chatty, quiet} {
		waitView(t, s, id, func(v projector.View) bool { return v.State == "succeeded" }, "succeeded")
	}
	var r result
	natstest.Eventually(t, 10*time.Second, func() bool {
		r = s.jetjob("logs", chatty)
		return strings.Contains(r.stdout, "] 10050\n")
	}, "the last line stored")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, workers.LogLinesPerJob, strings.Count(r.stdout, "\n"))
	require.NotContains(t, r.stdout, "] 1\n", "the first line was dropped")
	require.Equal(t, "jetjob logs: 50 lines of attempt 1 missing here: a job keeps its last 10000 lines, and a worker cut off from the server may lose lines\n", r.stderr)

	natstest.Eventually(t, 10*time.Second, func() bool {
		r = s.jetjob("logs", quiet)
		return strings.Contains(r.stdout, "] 3\n")
	}, "the quiet job's lines")
	require.Contains(t, r.stdout, "] 1\n")
	require.Empty(t, r.stderr)
}

// A worker cut off from NATS stops its command before the server fails the
// attempt as hung, so that the retry on another worker never runs beside it.
func TestACutOffWorkerStopsItsCommandBeforeTheRetry(t *testing.T) {
	s := startServerProc(t, "--hang-after", "3s")
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	script := filepath.Join(dir, "job.sh")
	require.NoError(t, os.WriteFile(script, []byte(`#!/bin/sh
trap 'echo "stop $JETJOB_ATTEMPT" >> `+runs+`; exit 143' TERM
echo "start $JETJOB_ATTEMPT" >> `+runs+`
while :; do sleep 0.05; done
`), 0o755))
	// A worker learns it when it starts, or soon after: here it must know
	// it before the cut.
	waitHangAfter(t, s, "3s")
	proxy := natstest.NewProxy(t, s.url)
	cutOff := exec.Command(binary, "worker", "--server", proxy.URL, "--type", "cutoff", "--grace", "1s", "-v", "--", script)
	var cutOffOut syncBuffer
	cutOff.Stdout, cutOff.Stderr = &cutOffOut, &cutOffOut
	require.NoError(t, cutOff.Start())
	t.Cleanup(func() { _ = cutOff.Process.Kill(); _ = cutOff.Wait() })
	id := s.jetjob("submit", "--type", "cutoff", "--max-attempts", "2", "--backoff-base", "100ms").ok(t)
	readRuns := func() []string {
		b, _ := os.ReadFile(runs)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	natstest.Eventually(t, 15*time.Second, func() bool { return readRuns()[0] == "start 1" }, "attempt 1 started")
	startWorker(t, s, "--type", "cutoff", "--grace", "1s", "--", script)
	proxy.Cut()
	waitView(t, s, id, func(v projector.View) bool { return v.Attempt == 2 && v.State == "running" }, "attempt 2 running")
	natstest.Eventually(t, 5*time.Second, func() bool { return slices.Contains(readRuns(), "start 2") }, "attempt 2 started")
	require.Equal(t, []string{"start 1", "stop 1", "start 2"}, readRuns(), "attempt 1 stopped before attempt 2 started; the cut-off worker said:\n%s", &cutOffOut)
	v := waitView(t, s, id, func(v projector.View) bool { return len(v.Errors) == 1 }, "attempt 1's error")
	require.Equal(t, "hung", v.Errors[0].Code)
}

// A stopped worker gives a command that ignores SIGTERM its grace, then
// SIGTERM, then SIGKILL a grace later, and hands its job back. Before, with
// a grace over about 7 s, the worker gave up before the SIGKILL and left the
// job running, to be failed as hung and lose an attempt.
func TestAStoppedWorkerHandsBackTheJobOfACommandThatIgnoresSIGTERM(t *testing.T) {
	t.Parallel() // waits out a grace twice
	out := stopWorkerRunning(t, "#!/bin/sh\ntrap '' TERM\necho started\nwhile :; do sleep 0.05; done\n", "6s", syscall.SIGTERM)
	require.Contains(t, out, "running commands get 6s to finish")
}

// A stopped worker lets a running command finish within its grace, however
// long the grace. Before, a --grace over about 1,281,000 h (146 years, given
// for "never kill") overflowed the worker's wait on the stop (twice the
// grace and 5 s) into the past: the first Ctrl-C handed the job back at
// once, its command SIGTERMed, as a second Ctrl-C does.
func TestAStoppedWorkerWithAHugeGraceLetsItsCommandFinish(t *testing.T) {
	t.Parallel()
	s := startServerProc(t)
	path := filepath.Join(t.TempDir(), "command.sh")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\necho started\nsleep 1\necho finished\n"), 0o755))
	cmd := exec.Command(binary, "worker", "--server", s.url, "--type", "hugegrace", "--grace", "2000000h", "--", path)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	id := s.jetjob("submit", "--type", "hugegrace", "--max-attempts", "1").ok(t)
	natstest.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(s.jetjob("logs", id).stdout, "started")
	}, "the command started: %s", &out)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "worker output: %s", out.String())
	case <-time.After(time.Minute):
		t.Fatalf("worker still running a minute after SIGTERM; it said: %s", out.String())
	}
	v := waitView(t, s, id, func(v projector.View) bool { return v.State != "running" }, "finished")
	require.Equal(t, statemachine.StateSucceeded, v.State, "the command finished within its grace; the worker said: %s", out.String())
	require.Contains(t, s.jetjob("logs", id).stdout, "finished")
}

// A worker whose log nobody reads any more (piped into head, or into a log
// shipper that died) runs on, and on SIGTERM hands its job back. Before,
// SIGPIPE killed it at its next log line: here the "stopping" line of its
// SIGTERM, so the job was never handed back and stayed running until the
// hang detector failed it, an attempt spent (and, started as `jetjob worker
// ... | head -1`, it died before it took a job).
func TestAWorkerWhoseLogNobodyReadsHandsBackItsJob(t *testing.T) {
	t.Parallel()
	s := startServerProc(t)
	path := filepath.Join(t.TempDir(), "command.sh")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\necho started\nexec sleep 60\n"), 0o755))
	cmd := exec.Command(binary, "worker", "--server", s.url, "--type", "unread", "--grace", "1s", "--", path)
	startUnread(t, cmd, "worker serving")
	id := s.jetjob("submit", "--type", "unread", "--max-attempts", "1").ok(t)
	natstest.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(s.jetjob("logs", id).stdout, "started")
	}, "the command started")
	stopsOnSIGTERM(t, cmd)
	v := waitView(t, s, id, func(v projector.View) bool { return v.State != "running" }, "handed back")
	require.Equal(t, statemachine.StatePending, v.State, "handed back without using up its one attempt")
	require.Equal(t, 0, v.Attempt)
}

// A server whose log nobody reads any more serves on, and stops cleanly on
// SIGTERM. Before, SIGPIPE killed it at its next log line (here the
// "shutting down" of its SIGTERM; in service, any warning or hang it
// logged), and with it the queue's enqueuer, projector and detector.
func TestAServerWhoseLogNobodyReadsRunsOn(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	url := "nats://" + addr
	cmd := exec.Command(binary, "server", "--data", t.TempDir(), "--listen", addr)
	startUnread(t, cmd, "jetjob server ready")
	s := &serverProc{t: t, url: url}
	id := s.jetjob("submit", "--type", "unread").ok(t)
	require.Contains(t, s.jetjob("get", id).stdout, "pending")
	stopsOnSIGTERM(t, cmd)
}

// startUnread starts cmd with its output on a pipe that is read until a
// line says ready, then closed: nobody reads its log from then on.
func startUnread(t *testing.T, cmd *exec.Cmd, ready string) {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = w, w
	require.NoError(t, cmd.Start())
	require.NoError(t, w.Close())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var said bytes.Buffer
	line := bufio.NewReader(r)
	for !strings.Contains(said.String(), ready) {
		l, err := line.ReadString('\n')
		said.WriteString(l)
		require.NoError(t, err, "%s said: %s", cmd.Args[1], &said)
	}
	require.NoError(t, r.Close())
}

// stopsOnSIGTERM sends cmd SIGTERM and requires it to exit 0 within a
// minute, not killed by a signal.
func stopsOnSIGTERM(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			status := exit.Sys().(syscall.WaitStatus)
			require.False(t, status.Signaled(), "%s killed by %v", cmd.Args[1], status.Signal())
		}
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatalf("%s still running a minute after SIGTERM", cmd.Args[1])
	}
}

// A worker whose terminal closes (SIGHUP) stops as on Ctrl-C and hands its
// job back; it used to die at once, its job running until the hang-after.
func TestAHungUpWorkerHandsBackItsJob(t *testing.T) {
	stopWorkerRunning(t, "#!/bin/sh\necho started\nexec sleep 60\n", "1s", syscall.SIGHUP)
}

// stopWorkerRunning starts a worker with the given grace whose command is
// script, and once the command runs a job, sends the worker sig: it must
// exit 0 and hand the job back without using up its one attempt. It
// returns what the worker said.
func stopWorkerRunning(t *testing.T, script, grace string, sig os.Signal) string {
	t.Helper()
	s := startServerProc(t)
	path := filepath.Join(t.TempDir(), "command.sh")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	cmd := exec.Command(binary, "worker", "--server", s.url, "--type", "stopped", "--grace", grace, "--", path)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if sig == syscall.SIGHUP && signal.Ignored(syscall.SIGHUP) {
		// The tests run under nohup: the worker would inherit the ignored
		// hangup, and rightly not stop on it. A signal this process
		// handles is reset to its default in the worker it starts.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	id := s.jetjob("submit", "--type", "stopped", "--max-attempts", "1").ok(t)
	natstest.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(s.jetjob("logs", id).stdout, "started")
	}, "the command started: %s", &out)
	require.NoError(t, cmd.Process.Signal(sig))
	// A worker that does not stop fails the test with what it said, not
	// the package at its timeout with nothing.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "worker output: %s", out.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("worker still running 2 minutes after %v; it said: %s", sig, out.String())
	}
	v := waitView(t, s, id, func(v projector.View) bool { return v.State != "running" }, "handed back")
	require.Equal(t, statemachine.StatePending, v.State, "handed back without using up its one attempt")
	require.Equal(t, 0, v.Attempt)
	return out.String()
}

// A worker whose --grace cannot fit in the half hang-after left after it
// stops a cut-off command says so.
func TestWorkerWarnsOfAGraceLongerThanHalfTheHangAfter(t *testing.T) {
	s := startServerProc(t, "--hang-after", "4s")
	waitHangAfter(t, s, "4s")
	for grace, warned := range map[string]bool{"10s": true, "2s": false} {
		cmd := exec.Command(binary, "worker", "--server", s.url, "--type", "w", "--grace", grace, "--", "true")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		natstest.Eventually(t, 15*time.Second, func() bool { return strings.Contains(out.String(), "worker serving") }, "worker started: %s", out.String())
		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		_ = cmd.Wait()
		require.Equal(t, warned, strings.Contains(out.String(), "--grace "+grace+" is longer than half the server's hang-after (4s)"), "grace %s: %s", grace, out.String())
	}
}

// syncBuffer is a buffer a process writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitHangAfter waits until the server has published its hang-after.
func waitHangAfter(t *testing.T, s *serverProc, want string) {
	t.Helper()
	_, js := natstest.Connect(t, s.url)
	natstest.Eventually(t, 15*time.Second, func() bool {
		kv, err := js.KeyValue(context.Background(), events.SettingsBucketDefault)
		if err != nil {
			return false
		}
		e, err := kv.Get(context.Background(), "hang_after")
		return err == nil && string(e.Value()) == want
	}, "the server published its hang-after %s", want)
}

// TestEveryCommandsHelpIsClean: -h prints the usage line and the flags with
// their argument names, nothing else, and exits 0.
func TestEveryCommandsHelpIsClean(t *testing.T) {
	for _, c := range commands() {
		r := runCLI(t, "nats://127.0.0.1:1", c.name, "-h")
		require.Equal(t, 0, r.code, "%s -h: %s", c.name, r.stderr)
		require.True(t, strings.HasPrefix(r.stdout, "usage: jetjob "+c.name), "%s -h: %q", c.name, r.stdout)
		require.NotContains(t, r.stdout+r.stderr, "panic", "%s -h", c.name)
	}
	require.Contains(t, runCLI(t, "nats://127.0.0.1:1", "ls", "-h").stdout, "  -after string\n", "named by the flag's own type")
}

// TestBenchHelpSaysWhatEachScenarioMeasures: a newcomer's -h named the
// scenarios and nothing of what they measure, which durability settings
// each runs, or what a run prints.
func TestBenchHelpSaysWhatEachScenarioMeasures(t *testing.T) {
	r := runCLI(t, "nats://127.0.0.1:1", "bench", "-h")
	require.Equal(t, 0, r.code, r.stderr)
	for _, s := range bench.Scenarios {
		require.Regexp(t, `(?m)^  `+s+` +\S`, r.stdout, "what %s measures", s)
	}
	for _, want := range []string{"once per --fsync", "ratio to", "target", "-o json", "Exit codes"} {
		require.Contains(t, r.stdout, want)
	}
}

// TestABenchWhoseOutputNobodyReadsCleansUp: piped into head, which exits
// after the first line, the bench was killed by SIGPIPE at its next line
// (exit 141) and left its embedded server's data directory in TMPDIR (and,
// with --server, its queues on that server); it now stops as after a
// Ctrl-C, cleaning up, and exits 1.
func TestABenchWhoseOutputNobodyReadsCleansUp(t *testing.T) {
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "bench", "--smoke", "--scenario", "e2e", "--scenario", "latency", "--fsync", "interval")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line := make([]byte, 1)
	_, err = io.ReadFull(stdout, line) // its first figure, or part of it
	require.NoError(t, err)
	require.NoError(t, stdout.Close())
	err = cmd.Wait()
	require.NoError(t, ctx.Err(), "still running after 2 minutes")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, stderr.String())
	status := exit.Sys().(syscall.WaitStatus)
	require.False(t, status.Signaled(), "killed by %v; stderr: %s", status.Signal(), stderr.String())
	require.Equal(t, 1, status.ExitStatus(), stderr.String())
	left, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Empty(t, left, "left in TMPDIR")
}

// TestServerReplicatesOnACluster: on a 3-server NATS cluster, `server
// --replicas 3` makes every jetjob stream with 3 replicas, and the queue
// keeps working when one NATS server is gone.
func TestServerReplicatesOnACluster(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	cmd := exec.Command(binary, "server", "--nats", c.URL, "--replicas", "3")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	_, js := natstest.Connect(t, c.URL)
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(ctx, js)
		return err == nil
	}, "server up on the cluster: %s", &out)

	streams := 0
	for name := range js.StreamNames(ctx).Name() {
		st, err := js.Stream(ctx, name)
		require.NoError(t, err)
		require.Equal(t, 3, st.CachedInfo().Config.Replicas, "stream %s", name)
		streams++
	}
	require.GreaterOrEqual(t, streams, 20, "the log, the heartbeats, 16 queue shards, timers, logs and the buckets")

	first := runCLI(t, c.URL, "submit", "--type", "t").ok(t)
	c.Servers[0].Shutdown()
	var second string
	natstest.Eventually(t, 30*time.Second, func() bool {
		r := runCLI(t, c.URL, "submit", "--type", "t")
		second = strings.TrimSpace(r.stdout)
		return r.code == 0
	}, "a submit with one NATS server of three gone")
	for _, id := range []string{first, second} {
		natstest.Eventually(t, 30*time.Second, func() bool { return runCLI(t, c.URL, "get", id).code == 0 }, "job %s readable", id)
	}
}

// TestQueueGoesOnWhenANodeRestartsWhileAnotherIsDown: on a 3-server
// cluster with one server gone, another restarted leaves two of three up,
// and jobs run again. With the queue consumers' state in memory, the
// restarted server came back with none of it, and each consumer stayed
// without a leader (every lookup answered 503) until the third server
// returned: jobs stayed pending, 480 of them for 11 minutes in a soak.
func TestQueueGoesOnWhenANodeRestartsWhileAnotherIsDown(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	var out, wout bytes.Buffer
	srv := exec.Command(binary, "server", "--nats", c.URL, "--replicas", "3")
	srv.Stdout, srv.Stderr = &out, &out
	require.NoError(t, srv.Start())
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	_, js := natstest.Connect(t, c.URL)
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(ctx, js)
		return err == nil
	}, "server up on the cluster: %s", &out)
	wrk := exec.Command(binary, "worker", "--server", c.URL, "--type", "t", "--", "true")
	wrk.Stdout, wrk.Stderr = &wout, &wout
	require.NoError(t, wrk.Start())
	t.Cleanup(func() {
		_ = wrk.Process.Kill()
		_ = wrk.Wait()
		if t.Failed() {
			t.Logf("server:\n%s\nworker:\n%s", tail(out.String(), 4<<10), tail(wout.String(), 4<<10))
		}
	})
	succeeds := func(id string, within time.Duration) {
		t.Helper()
		natstest.Eventually(t, within, func() bool {
			var v projector.View
			r := runCLI(t, c.URL, "get", id, "-o", "json")
			return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "succeeded"
		}, "job %s succeeded", id)
	}
	succeeds(runCLI(t, c.URL, "submit", "--type", "t").ok(t), 30*time.Second)

	c.Servers[2].Shutdown() // gone
	c.Servers[1].Shutdown() // and restarted: two of three up
	c.Restart(1)
	var id string
	natstest.Eventually(t, 30*time.Second, func() bool {
		r := runCLI(t, c.URL, "submit", "--type", "t")
		id = strings.TrimSpace(r.stdout)
		return r.code == 0
	}, "a submit with two NATS servers of three up")
	succeeds(id, 60*time.Second)
}

// TestReplicasOverAnUnreplicatedDeploymentSaysWhatToDelete: a server asked
// for replicas over streams made for one node changes nothing, and names
// every stream to delete at once.
func TestReplicasOverAnUnreplicatedDeploymentSaysWhatToDelete(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	first := exec.Command(binary, "server", "--nats", c.URL)
	require.NoError(t, first.Start())
	_, js := natstest.Connect(t, c.URL)
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(ctx, js)
		return err == nil
	}, "server up")
	require.NoError(t, first.Process.Kill())
	_ = first.Wait()

	r := runCLI(t, c.URL, "server", "--nats", c.URL, "--replicas", "3")
	require.Equal(t, 1, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	for _, name := range []string{"JJ_HEARTBEATS", "JJ_LOGS", "JJ_QUEUE_00", "JJ_QUEUE_15", "KV_jj_jobs", "KV_jj_tagsets"} {
		require.Contains(t, last, name)
	}
	require.Contains(t, last, "nats stream rm")
	st, err := js.Stream(ctx, events.StreamDefault)
	require.NoError(t, err)
	require.Equal(t, 1, st.CachedInfo().Config.Replicas, "nothing changed")
}

// startServerOnSmallMessages starts a jetjob server on a stock NATS server
// that takes messages of at most 128 KiB.
func startServerOnSmallMessages(t *testing.T) *natstest.Env {
	t.Helper()
	env := natstest.StartStock(t, func(o *nserver.Options) { o.MaxPayload = 128 << 10 })
	cmd := exec.Command(binary, "server", "--nats", env.URL)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(context.Background(), env.JS)
		return err == nil
	}, "server up: %s", &out)
	return env
}

// TestSubmitFileChecksEveryJobAgainstTheServersMessageLimit: a --file whose
// one job's event is over the NATS server's max_payload (under jetjob's own
// payload limit) is refused whole, as that job alone is; before, the other
// lines were stored.
func TestSubmitFileChecksEveryJobAgainstTheServersMessageLimit(t *testing.T) {
	env := startServerOnSmallMessages(t)

	file := filepath.Join(t.TempDir(), "jobs.ndjson")
	big := `{"type":"fit","payload":"` + strings.Repeat("p", 200<<10) + `"}`
	require.NoError(t, os.WriteFile(file, []byte(`{"type":"fit"}`+"\n"+big+"\n"+`{"type":"fit"}`+"\n"), 0o644))
	r := runCLI(t, env.URL, "submit", "--file", file)
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, "line 2: payload too large")
	require.Contains(t, r.stderr, "nothing was submitted")
	require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %s", r.stderr)
	require.Equal(t, "[]", strings.TrimSpace(runCLI(t, env.URL, "ls", "--type", "fit", "-o", "json").ok(t)), "nothing stored")
}

// TestGetShowsAResultTheViewLeftOut: a result that fits in its event but
// not in the job's view with the job's tags and meta is left out of the
// view, and get reads it from the history.
func TestGetShowsAResultTheViewLeftOut(t *testing.T) {
	ctx := context.Background()
	env := startServerOnSmallMessages(t)

	lg, err := events.Open(ctx, env.JS, events.Config{})
	require.NoError(t, err)
	t.Cleanup(lg.Close)
	m, err := statemachine.New(lg, statemachine.Config{})
	require.NoError(t, err)
	labels := map[string]string{}
	for i := range 32 {
		labels[fmt.Sprintf("%03d%s", i, strings.Repeat("k", 125))] = strings.Repeat("v", 128)
	}
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "big", Tags: labels, Meta: labels})
	require.NoError(t, err)
	held, err := m.Acquire(ctx, job.ID, "w")
	require.NoError(t, err)
	result := `"` + strings.Repeat("r", 110<<10) + `"`
	_, err = m.Succeed(ctx, held, json.RawMessage(result))
	require.NoError(t, err)

	r, err := projector.NewReader(ctx, env.JS)
	require.NoError(t, err)
	natstest.Eventually(t, 30*time.Second, func() bool {
		v, err := r.Get(ctx, job.ID)
		return err == nil && v.State == statemachine.StateSucceeded
	}, "the job's view projected")
	v, err := r.Get(ctx, job.ID)
	require.NoError(t, err)
	require.True(t, v.ResultOmitted, "the view leaves the result out")

	var got projector.View
	require.NoError(t, json.Unmarshal([]byte(runCLI(t, env.URL, "get", job.ID, "-o", "json").ok(t)), &got))
	require.False(t, got.ResultOmitted)
	require.True(t, result == string(got.Result), "get -o json shows the result from the history")
}

// TestDevRunsItsDemo: `jetjob dev`, the README's first command, starts a
// server that the other commands reach, runs its demo jobs as its banner
// says (the failing one retried, the scheduled one later, the region=us one
// left waiting), prints one line per change a job shows, and stops cleanly
// on Ctrl-C.
func TestDevRunsItsDemo(t *testing.T) {
	addr := freeAddr(t)
	url := "nats://" + addr
	cmd := exec.Command(binary, "dev", "--data", t.TempDir(), "--listen", addr)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var views []projector.View
	natstest.Eventually(t, 30*time.Second, func() bool {
		r := runCLI(t, url, "ls", "--type", "demo", "-o", "json")
		views = nil
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &views) != nil {
			return false
		}
		finished := 0
		for _, v := range views {
			if v.State == statemachine.StateSucceeded {
				finished++
			}
		}
		return len(views) == 5 && finished == 4
	}, "4 of 5 demo jobs succeeded; the feed:\n%s%s", &out, &errb)
	for _, v := range views {
		switch {
		case v.Tags["region"] == "us":
			require.Equal(t, statemachine.StatePending, v.State, "nothing serves region=us")
		case v.Attempt == 2:
			require.Len(t, v.Errors, 1)
			require.Equal(t, "demo failure on the first attempt", v.Errors[0].Error)
		}
	}

	feed := out.String()
	require.Contains(t, feed, "Changes to demo jobs follow")
	for _, v := range views {
		lines := 0
		for _, l := range strings.Split(feed, "\n") {
			if strings.Contains(l, v.ID+"  running ") {
				lines++
			}
		}
		require.LessOrEqual(t, lines, v.Attempt, "job %s: one running line per attempt:\n%s", v.ID, feed)
	}

	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "exit: %s", &errb)
	case <-time.After(20 * time.Second):
		t.Fatalf("jetjob dev did not stop within 20s of an interrupt: %s", &errb)
	}
	require.Contains(t, errb.String(), "stopped")
}

// A worker's command is everything from its first word on, as after a
// "--": its own flags reached the worker (echo -v turned on debug logging,
// printf --id=x set the worker's ID), and a "--" of its own was dropped.
func TestWorkerFlagsEndAtItsCommand(t *testing.T) {
	s := startServerProc(t)
	startWorker(t, s, "--type", "argv", "printf", `[%s]\n`, "-v", "--id=abc", "--", "x")
	id := s.jetjob("submit", "--type", "argv").ok(t)
	waitView(t, s, id, func(v projector.View) bool { return v.State == "succeeded" }, "succeeded")
	var logs string
	natstest.Eventually(t, 5*time.Second, func() bool {
		logs = s.jetjob("logs", id).stdout
		return strings.Contains(logs, "[x]")
	}, "log lines: %s", logs)
	for _, arg := range []string{"[-v]", "[--id=abc]", "[--]", "[x]"} {
		require.Contains(t, logs, arg)
	}
}

// A server whose NATS is gone takes a while to stop (each service waits out
// the requests it has in flight: about 25 s in all); a second Ctrl-C leaves
// at once, as it does for a worker, rather than being ignored.
func TestASecondSignalStopsTheServerAtOnce(t *testing.T) {
	for _, tc := range []struct{ command, ready string }{
		{"server", "server ready"},
		// jetjob dev stops a worker and a server: a second Ctrl-C was
		// ignored there.
		{"dev", "jetjob dev is running"},
	} {
		t.Run(tc.command, func(t *testing.T) {
			nats := natstest.StartStock(t, nil)
			proxy := natstest.NewProxy(t, nats.URL)
			cmd := exec.Command(binary, tc.command, "--nats", proxy.URL)
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			require.NoError(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { _ = cmd.Process.Kill() })
			natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(out.String(), tc.ready) }, "up: %s", &out)

			proxy.Cut() // the NATS is gone
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			natstest.Eventually(t, 10*time.Second, func() bool { return strings.Contains(out.String(), "shutting down") }, "stopping: %s", &out)
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			select {
			case err := <-exited:
				var ee *exec.ExitError
				require.ErrorAs(t, err, &ee, "output: %s", &out)
				require.Equal(t, 1, ee.ExitCode())
				require.Contains(t, out.String(), "stopped at once")
			case <-time.After(5 * time.Second):
				t.Fatalf("still stopping 5 s after a second signal: %s", &out)
			}
		})
	}
}

// TestLogsStreamThatDoesNotAnswerIsWaitedForAndSaid: jetjob logs waits for
// the job logs stream as it waits for the event log, and says why it gave
// up: with the logs stream's leader paused (the event log's elsewhere), it
// failed within 5 s with "bind job logs: context deadline exceeded" alone.
func TestLogsStreamThatDoesNotAnswerIsWaitedForAndSaid(t *testing.T) {
	t.Parallel() // waits out the 15 s given to the logs stream
	env := natstest.Start(t)
	require.NoError(t, workers.EnsureTopology(context.Background(), env.JS))
	proxy := natstest.NewProxy(t, env.URL)
	_, js := natstest.Connect(t, proxy.URL)
	proxy.StallAnswers()
	t.Cleanup(proxy.Restore)
	_, err := attachLogs(context.Background(), &client{js: js})
	require.ErrorContains(t, err, "the job logs stream did not answer within 15s (a NATS cluster electing a leader takes seconds; try again)")
}

// TestWorkerHelpSaysHowTheCommandIsRun: a script's author reads worker -h,
// which listed the flags only: not what the command gets (the payload on
// stdin, the job in its environment) nor what its exit status does, exit 65
// failing the job without retry among it.
func TestWorkerHelpSaysHowTheCommandIsRun(t *testing.T) {
	r := runCLI(t, "nats://127.0.0.1:1", "worker", "-h")
	require.Equal(t, 0, r.code, r.stderr)
	for _, want := range []string{"stdin", "JETJOB_JOB_ID", "JETJOB_TYPE", "JETJOB_ATTEMPT", "exit 0", fmt.Sprintf("exit %d", workers.ExitNoRetry), "without retry", "SIGTERM"} {
		require.Contains(t, r.stdout, want)
	}
}

// TestHelpOfACommandIsItsHelp: `jetjob help submit` printed the list of
// commands, the argument dropped without a word, as `go help build` does not.
func TestHelpOfACommandIsItsHelp(t *testing.T) {
	r := runCLI(t, "nats://127.0.0.1:1", "help", "submit")
	require.Equal(t, 0, r.code, r.stderr)
	require.True(t, strings.HasPrefix(r.stdout, "usage: jetjob submit"), r.stdout)
	r = runCLI(t, "nats://127.0.0.1:1", "help", "bogus")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, `unknown command "bogus"`)
	require.Empty(t, r.stdout)
	// More than one command: said, not the list printed for it.
	r = runCLI(t, "nats://127.0.0.1:1", "help", "submit", "cancel")
	require.Equal(t, exitUsage, r.code)
	require.Equal(t, "jetjob: help takes one command, as in jetjob help submit; got 2\n", r.stderr)
	require.Empty(t, r.stdout)
}
