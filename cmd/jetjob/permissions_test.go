package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/projector"
)

// permissionedNATS is a stock NATS server with the users the README's "NATS
// permissions" describes: client and server with what it says they need,
// denied with nothing of jetjob's. The test's own connection (no user) is an
// administrator's.
type permissionedNATS struct {
	*natstest.Env
	host string
}

func startPermissionedNATS(t *testing.T) permissionedNATS {
	t.Helper()
	allow := func(subjects ...string) *nserver.SubjectPermission {
		return &nserver.SubjectPermission{Allow: subjects}
	}
	client := &nserver.Permissions{
		Publish:   allow("$JS.>", "$KV.>", "jj.>"),
		Subscribe: allow("_INBOX.>", "$JS.EVENT.>", "jj.>"),
	}
	server := &nserver.Permissions{
		Publish:   allow("$JS.>", "$KV.>", "jj.>", "_INBOX.>"),
		Subscribe: client.Subscribe,
	}
	env := natstest.StartStock(t, func(o *nserver.Options) {
		o.Users = []*nserver.User{
			{Username: "admin", Password: "pw"},
			{Username: "client", Password: "pw", Permissions: client},
			{Username: "server", Password: "pw", Permissions: server},
			{Username: "denied", Password: "pw", Permissions: &nserver.Permissions{Publish: allow("_INBOX.>"), Subscribe: allow("_INBOX.>")}},
		}
		o.NoAuthUser = "admin"
	})
	return permissionedNATS{Env: env, host: strings.TrimPrefix(env.URL, "nats://")}
}

func (n permissionedNATS) as(user string) string { return "nats://" + user + ":pw@" + n.host }

// startProc starts jetjob with args, its output kept; the test's cleanup
// kills it.
func startProc(t *testing.T, url string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	return startProcEnv(t, []string{"JETJOB_SERVER=" + url}, args...)
}

// startProcEnv starts jetjob as startProc does, with env added to the
// test's environment.
func startProcEnv(t *testing.T, env []string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(cmd.Environ(), env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, out
}

// With the permissions the README gives them, jetjob's users run every
// command: a server, a worker, and each of the CLI's.
func TestUsersWithTheDocumentedPermissionsRunEveryCommand(t *testing.T) {
	n := startPermissionedNATS(t)
	_, serverOut := startProc(t, n.as("server"), "server", "--nats", n.as("server"))
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(context.Background(), n.JS)
		return err == nil
	}, "server up: %s", serverOut)
	url := n.as("client")
	_, workerOut := startProc(t, url, "worker", "--type", "perm", "--", "echo", "from the worker")
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(workerOut.String(), "worker serving") }, "worker started: %s", workerOut)
	watch, watchOut := startProc(t, url, "watch", "--type", "perm")

	id := runCLI(t, url, "submit", "--type", "perm").ok(t)
	natstest.Eventually(t, 30*time.Second, func() bool {
		var v projector.View
		r := runCLI(t, url, "get", id, "-o", "json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "succeeded"
	}, "job %s run", id)
	require.Contains(t, runCLI(t, url, "logs", id).ok(t), "from the worker")
	require.Contains(t, runCLI(t, url, "history", id).ok(t), "job.succeeded")
	require.Contains(t, runCLI(t, url, "ls").ok(t), id)
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(watchOut.String(), id+" succeeded") }, "watched: %s", watchOut)
	require.NoError(t, watch.Process.Signal(syscall.SIGTERM))

	waiting := runCLI(t, url, "submit", "--type", "nobody").ok(t)
	runCLI(t, url, "cancel", waiting).ok(t)
	runCLI(t, url, "submit", "--type", "nobody").ok(t)
	require.Contains(t, runCLI(t, url, "cancel", "--pending", "--type", "nobody").ok(t), "1 canceled")
	require.Contains(t, runCLI(t, url, "purge", "--older-than", "0s").ok(t), "3 purged")
	runCLI(t, url, "admin", "rebuild").ok(t)
	// The bench runs a server of its own there: the server's user.
	runCLI(t, url, "bench", "--server", n.as("server"), "--scenario", "e2e", "--n", "10", "--workers", "2", "--producers", "1").ok(t)
	require.NotContains(t, serverOut.String()+workerOut.String(), "ermission", "no refusal logged")
}

// A user refused a subject is told so in one line, exit 1, where the
// command waited out its timeouts to say that NATS did not answer.
func TestACommandRefusedASubjectSaysSo(t *testing.T) {
	n := startPermissionedNATS(t)
	url := n.as("denied")
	for _, args := range [][]string{
		{"ls"},
		{"get", "01a237f4-0202-7e62-acce-2921dd421814"},
		{"submit", "--type", "t"},
		{"cancel", "--pending", "--type", "t"},
		{"worker", "--type", "t", "--", "true"},
		{"server", "--nats", url},
		// It waited 35 s, then said "start server: look up stream
		// JJ_EVENTS: context deadline exceeded".
		{"bench", "--server", url, "--scenario", "e2e", "--n", "10"},
	} {
		t.Run(args[0], func(t *testing.T) {
			r := runCLI(t, url, args...)
			require.Equal(t, exitFailure, r.code, r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			require.Contains(t, lines[len(lines)-1], `NATS refused this user: Permissions Violation for `, r.stderr)
			require.NotContains(t, r.stderr, "did not answer", "told as what it is")
		})
	}
}
