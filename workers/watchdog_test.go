package workers

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
)

func TestWatchdogKillsTheGroupsListedAtTheEnd(t *testing.T) {
	for _, tc := range []struct {
		name   string
		given  string
		killed []int
	}{
		{"none", "", nil},
		{"one left", "+10\n+11\n-10\n", []int{-11}},
		{"all gone", "+10\n-10\n", nil},
		{"added again", "+10\n-10\n+10\n", []int{-10}},
		// A command's late "-" after its PID went to the next command.
		{"listed twice, ended once", "+10\n+10\n-10\n", []int{-10}},
		{"ended more often than listed", "+10\n-10\n-10\n+10\n", []int{-10}},
		{"never every process or init", "+1\n+0\n+-5\n", nil},
		{"junk", "hello\n+\n+x\n10\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var killed []int
			kill := func(pid int, sig syscall.Signal) error {
				require.Equal(t, syscall.SIGKILL, sig)
				killed = append(killed, pid)
				return nil
			}
			require.Equal(t, 0, runWatchdog(strings.NewReader(tc.given), kill))
			slices.Sort(killed)
			require.Equal(t, tc.killed, killed)
		})
	}
}

// startGroup starts a process in a process group of its own, as the exec
// handler starts commands.
func startGroup(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	return cmd.Process.Pid
}

func newWatchdog(t *testing.T) *watchdog {
	d := &watchdog{groups: map[int]int{}}
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.proc != nil {
			d.drop()
		}
	})
	return d
}

// closeAsAWorkerDies closes the worker's end of the pipe, as the kernel does
// when the worker dies.
func (d *watchdog) closeAsAWorkerDies(t *testing.T) {
	d.mu.Lock()
	defer d.mu.Unlock()
	require.NoError(t, d.pipe.Close())
	d.pipe, d.proc = nil, nil
}

// A watchdog someone killed is started again at once, and told of every
// group still running a command: started again only with the next
// command, it left a worker with one long command unwatched, and the
// worker's death then left the command's children running.
func TestAKilledWatchdogIsStartedAgainAtOnce(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newWatchdog(t)
	long, done := startGroup(t), startGroup(t)
	_, err := d.watch(long)
	require.NoError(t, err)
	unwatch, err := d.watch(done)
	require.NoError(t, err)
	unwatch()
	d.mu.Lock()
	old := d.proc
	d.mu.Unlock()
	require.NoError(t, old.Kill())
	natstest.Eventually(t, 10*time.Second, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.proc != nil && d.proc.Pid != old.Pid
	}, "a new watchdog, with no command started or ended")
	d.closeAsAWorkerDies(t)
	natstest.Eventually(t, 10*time.Second, func() bool { return !groupRunning(long) }, "group %d killed", long)
	require.True(t, groupRunning(done), "a group no longer listed is left alone")
}

// A watchdog that stopped reading (SIGSTOP, a debugger) is replaced once a
// line waits on it: it filled its pipe, and every command start then
// waited, holding the lock, so cancels and timeouts never came. The one
// replaced is killed, so that it kills nothing when it resumes.
func TestAStoppedWatchdogIsReplaced(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newWatchdog(t)
	running := startGroup(t)
	_, err := d.watch(running)
	require.NoError(t, err)
	stopped := d.proc
	require.NoError(t, syscall.Kill(stopped.Pid, syscall.SIGSTOP))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 { // past what a pipe holds
			unwatch, _ := d.watch(100000 + i)
			unwatch()
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("command starts wait on a watchdog that stopped reading")
	}
	require.NotEqual(t, stopped.Pid, d.proc.Pid)
	natstest.Eventually(t, 10*time.Second, func() bool { return syscall.Kill(stopped.Pid, 0) != nil }, "the stopped watchdog killed")
	d.closeAsAWorkerDies(t)
	natstest.Eventually(t, 10*time.Second, func() bool { return !groupRunning(running) }, "the new watchdog kills the group listed before")
}

// A binary that does not run as a watchdog (run through ld.so, whose
// /proc/self/exe is the loader) is said once, and not started again for
// every command.
func TestABinaryThatIsNoWatchdogIsSaidOnce(t *testing.T) {
	d := newWatchdog(t)
	d.exe = "/bin/true"
	_, err := d.watch(startGroup(t))
	require.ErrorContains(t, err, "did not run as one")
	_, err = d.watch(startGroup(t))
	require.NoError(t, err, "said once")
	require.Nil(t, d.proc, "not started again")
}

// A start that failed for a passing cause (here a binary not there yet; no
// file descriptors or processes left is another) is tried again after a
// pause, and said once: it disabled the watchdog for good.
func TestAWatchdogThatFailedToStartIsTriedAgain(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newWatchdog(t)
	d.exe = filepath.Join(t.TempDir(), "not-yet")
	require.Error(t, d.ensure())
	require.NoError(t, d.ensure(), "said once, not tried again at once")
	d.mu.Lock()
	d.exe = "" // this binary
	d.mu.Unlock()
	natstest.Eventually(t, 10*time.Second, func() bool {
		_ = d.ensure()
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.proc != nil
	}, "a watchdog started once the pause is over")
}

// A watchdog that exits as soon as it started is started again after a
// growing pause, not in a tight loop (2,506 starts in 2 s).
func TestAWatchdogThatDoesNotLastIsNotStartedInALoop(t *testing.T) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	exe := filepath.Join(dir, "brief")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\ndate +%s.%N >> "+runs+"\nprintf '"+strings.TrimSuffix(watchdogReady, "\n")+"\\n'\n"), 0o755))
	d := newWatchdog(t)
	d.exe = exe
	_, err := d.watch(startGroup(t))
	require.NoError(t, err)
	var at []float64
	natstest.Eventually(t, 20*time.Second, func() bool {
		b, _ := os.ReadFile(runs)
		at = at[:0]
		for _, f := range strings.Fields(string(b)) {
			v, err := strconv.ParseFloat(f, 64)
			require.NoError(t, err)
			at = append(at, v)
		}
		return len(at) >= 3
	}, "started three times")
	d.mu.Lock()
	d.groups = map[int]int{} // no more restarts
	d.mu.Unlock()
	require.GreaterOrEqual(t, at[1]-at[0], 0.9, "a pause of a second")
	require.GreaterOrEqual(t, at[2]-at[1], 1.9, "then of two")
}
