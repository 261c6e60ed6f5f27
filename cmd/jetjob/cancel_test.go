package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/coretest"
	"github.com/jetjob/jetjob/internal/natstest"
)

// TestBulkCancelPrintsJSONWhenItCannotList: a script reading
// `cancel --pending -o json` gets a JSON result (nothing canceled, and the
// error) when the jobs cannot be listed, or the server not reached, as it
// does when some cancels failed, with exit 1.
func TestBulkCancelPrintsJSONWhenItCannotList(t *testing.T) {
	env := natstest.Start(t)
	coretest.Open(t, env.JS) // the event log, but no views bucket: no server ran
	for name, url := range map[string]string{
		"no views bucket":    env.URL,
		"server not reached": "nats://" + freeAddr(t),
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run([]string{"cancel", "--pending", "--all", "-o", "json", "--server", url}, &stdout, &stderr)
			require.Equal(t, exitFailure, code, "stderr: %s", stderr.String())
			var res struct {
				Canceled []string          `json:"canceled"`
				Skipped  []json.RawMessage `json:"skipped"`
				Error    string            `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(stdout.String()), &res), "stdout: %q; stderr: %s", stdout.String(), stderr.String())
			require.NotNil(t, res.Canceled, "canceled is a list, empty: %s", stdout.String())
			require.Empty(t, res.Canceled)
			require.NotNil(t, res.Skipped, "skipped is a list, empty: %s", stdout.String())
			require.NotEmpty(t, res.Error)
			require.Contains(t, stderr.String(), res.Error, "the error is said on stderr too")
		})
	}
}

// A --server that is no NATS URL is bad input, refused (exit 2) with
// nothing on stdout, as the README says of bad flags under -o json: it was
// found only by the dial, whose error then printed a JSON result, exit 2.
func TestBulkCancelJSONRefusesABadServerWithNothingOnStdout(t *testing.T) {
	var stdout, stderr strings.Builder
	code := run([]string{"cancel", "--pending", "--all", "-o", "json", "--server", "http://localhost:4222"}, &stdout, &stderr)
	require.Equal(t, exitUsage, code, "stderr: %s", stderr.String())
	require.Empty(t, stdout.String())
	require.Contains(t, stderr.String(), "--server")
	require.Equal(t, 1, strings.Count(strings.TrimSpace(stderr.String()), "\n")+1, "one line: %q", stderr.String())
}
