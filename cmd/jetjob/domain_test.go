package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
)

// A NATS whose JetStream is reached through a leaf node, by the hub's
// domain: every command given --js-domain (or JETJOB_JS_DOMAIN) goes by
// $JS.<domain>.API., the plain $JS.API. being denied across the leaf
// connection.
func TestAJobRunsThroughALeafNodeByDomain(t *testing.T) {
	l := natstest.StartLeafed(t, "hub")
	_, js := l.Connect(t)
	leaf := &natstest.Env{URL: l.LeafURL, JS: js}
	// server --nats, worker, submit, get and logs, by the flag.
	runsAJob(t, leaf, nil, "--js-domain", "hub")
	// By the variable.
	env := []string{"JETJOB_SERVER=" + l.LeafURL}
	out := runCLIEnv(t, append(env, "JETJOB_JS_DOMAIN=hub"), "ls").ok(t)
	require.Contains(t, out, "succeeded")
	// bench's every connection: its check, its servers', its worker
	// processes' and its clean-up's.
	r := runCLIEnv(t, nil, "bench", "--server", l.LeafURL, "--js-domain", "hub", "--smoke", "--scenario", "e2e", "--n", "20", "--processes", "2")
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)

	// Without the domain, the plain API goes unanswered through the leaf:
	// one line, which says what to give.
	r = runCLIEnv(t, env, "ls")
	require.Equal(t, exitFailure, r.code, "stderr: %s", r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, lines, 1, "one line: %s", r.stderr)
	require.Contains(t, lines[0], "--js-domain")
}

// jetjob dev on a NATS of --nats reached by a domain says to export the
// domain too.
func TestDevThroughALeafNodeSaysToExportTheDomain(t *testing.T) {
	l := natstest.StartLeafed(t, "hub")
	_, out := startProcEnv(t, nil, "dev", "--nats", l.LeafURL, "--js-domain", "hub")
	natstest.Eventually(t, 60*time.Second, func() bool { return strings.Contains(out.String(), "Changes to demo jobs follow") }, "dev started: %s", out)
	var env []string
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "  export "); ok {
			env = append(env, v)
		}
	}
	require.Contains(t, env, "JETJOB_JS_DOMAIN=hub")
	r := runCLIEnv(t, env, "ls", "--type", "demo")
	require.Equal(t, 0, r.code, "with %q: %s", env, r.stderr)
}

// A domain is the NATS's: refused on the embedded servers, and one that
// cannot be a domain is bad input, each one line and exit 2.
func TestABadJetStreamDomainIsRefused(t *testing.T) {
	url := "nats://127.0.0.1:1"
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"an embedded server's", nil, []string{"server", "--listen", "127.0.0.1:0", "--js-domain", "hub"}, []string{"--js-domain: for the NATS of --nats only", "JetStream domain"}},
		{"a dev's", nil, []string{"dev", "--listen", "127.0.0.1:0", "--js-domain", "hub"}, []string{"--js-domain: for the NATS of --nats only"}},
		{"a bench on embedded servers'", nil, []string{"bench", "--smoke", "--js-domain", "hub"}, []string{"--js-domain: for the NATS of --server only"}},
		{"a domain with a dot", nil, []string{"ls", "--js-domain", "hub.eu"}, []string{`--js-domain "hub.eu" is no JetStream domain`, "without ., *, > or spaces"}},
		{"a wildcard domain", nil, []string{"worker", "--js-domain", "*", "--type", "t", "--", "true"}, []string{"is no JetStream domain"}},
		{"a domain by its variable", []string{"JETJOB_JS_DOMAIN=a b"}, []string{"ls"}, []string{`JETJOB_JS_DOMAIN "a b" is no JetStream domain`}},
		{"a server's", nil, []string{"server", "--nats", url, "--js-domain", "a>"}, []string{"is no JetStream domain"}},
		{"an empty --js-domain", nil, []string{"ls", "--js-domain", ""}, []string{"--js-domain is empty", "or no --js-domain"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runCLIEnv(t, append([]string{"JETJOB_SERVER=" + url}, c.env...), c.args...)
			require.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			require.Len(t, lines, 1, "one line: %s", r.stderr)
			for _, w := range c.want {
				require.Contains(t, lines[0], w)
			}
		})
	}
}
