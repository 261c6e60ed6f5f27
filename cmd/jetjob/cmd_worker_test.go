package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWorkerRefusesACommandItCannotRun: `jetjob worker` with a command that
// is missing or not executable exits 2 with one line on stderr, before it
// connects: the server address is a closed port, and a worker that tried to
// connect would exit 1 saying it cannot reach it.
func TestWorkerRefusesACommandItCannotRun(t *testing.T) {
	url := "nats://" + freeAddr(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.txt")
	require.NoError(t, os.WriteFile(plain, []byte("not a program\n"), 0o644))
	// Executable by their mode, but no program the kernel can start: each
	// job's start failed ("exec format error", or "no such file or
	// directory" of a file that is there), every attempt of every job.
	noShebang := filepath.Join(dir, "no-shebang.sh")
	require.NoError(t, os.WriteFile(noShebang, []byte("echo hi\n"), 0o755))
	badInterp := filepath.Join(dir, "bad-interp.sh")
	require.NoError(t, os.WriteFile(badInterp, []byte("#!/nonexistent/interp -x\necho hi\n"), 0o755))
	type testCase struct {
		command []string
		want    string
	}
	cases := []testCase{
		{[]string{badInterp}, `its #! line names "/nonexistent/interp", which does not exist`},
		{[]string{"/nonexistent/cmd"}, `command "/nonexistent/cmd" does not exist`},
		{[]string{"/nonexistent/cmd", "arg"}, `command "/nonexistent/cmd" does not exist`},
		{[]string{"jetjob-no-such-command"}, `command "jetjob-no-such-command" is not on $PATH`},
		{[]string{plain}, "is not executable"},
		{[]string{dir}, "is a directory"},
	}
	if runtime.GOOS == "linux" { // elsewhere a file without #! is left to its start
		cases = append(cases, testCase{[]string{noShebang}, "has no #! line"})
	}
	for _, tc := range cases {
		args := append([]string{"worker", "--server", url, "--type", "nx", "--"}, tc.command...)
		r := runCLI(t, url, args...)
		require.Equal(t, exitUsage, r.code, "%v: stderr %q", tc.command, r.stderr)
		line := strings.TrimSuffix(r.stderr, "\n")
		require.NotContains(t, line, "\n", "one line for %v", tc.command)
		require.True(t, strings.HasPrefix(line, "jetjob worker: "), "%q", line)
		require.Contains(t, line, tc.want)
		require.Contains(t, line, "expected")
		require.Empty(t, r.stdout)
	}
	// A command that can run passes the check and the worker goes on to
	// connect, which fails on the closed port.
	r := runCLI(t, url, "worker", "--server", url, "--type", "nx", "--", "sh", "-c", "true")
	require.Equal(t, exitFailure, r.code, "stderr %q", r.stderr)
	require.Contains(t, r.stderr, "cannot reach the jetjob server")
}

// TestServerSecretsStayOutOfErrors: a password or token in --server is not
// printed when the server cannot be reached or the URL is refused.
func TestServerSecretsStayOutOfErrors(t *testing.T) {
	// Its server waits 30 s for a NATS that is not there: run beside the
	// other tests that mostly wait.
	t.Parallel()
	closed := freeAddr(t)
	for _, tc := range []struct {
		server string
		code   int
	}{
		{"nats://alice:s3cret@" + closed, exitFailure},
		{"nats://s3cret@" + closed, exitFailure},
		{"alice:s3cret@" + closed, exitFailure},
		{"nats://127.0.0.1:1,nats://alice:s3cret@" + closed, exitFailure},
		{"nats://alice:s3cret@127.0.0.1:99999", exitUsage},
		{"http://alice:s3cret@" + closed, exitUsage},
	} {
		for _, args := range [][]string{
			{"ls", "--server", tc.server},
			{"worker", "--server", tc.server, "--type", "t", "--", "true"},
		} {
			r := runCLI(t, tc.server, args...)
			require.Equal(t, tc.code, r.code, "%v: %s", args, r.stderr)
			require.NotContains(t, r.stderr, "s3cret", "%v", args)
			require.Contains(t, r.stderr, "REDACTED", "%v", args)
		}
	}
	r := runCLI(t, closed, "server", "--nats", "nats://alice:s3cret@"+closed)
	require.Equal(t, exitFailure, r.code, r.stderr)
	require.NotContains(t, r.stderr, "s3cret")
	require.Contains(t, r.stderr, "REDACTED")
}
