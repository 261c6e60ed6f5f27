package workers

import (
	"os/exec"
	"slices"
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

// A watchdog someone killed is started again with the next command, and
// told of every group still running a command, not only the new one.
func TestAWatchdogStartedAgainKnowsEveryGroup(t *testing.T) {
	d := &watchdog{groups: map[int]bool{}}
	first, second, done := startGroup(t), startGroup(t), startGroup(t)
	_, err := d.watch(first)
	require.NoError(t, err)
	unwatch, err := d.watch(done)
	require.NoError(t, err)
	unwatch()
	old := d.proc
	require.NoError(t, old.Kill())
	natstest.Eventually(t, 10*time.Second, func() bool { return syscall.Kill(old.Pid, 0) != nil }, "the watchdog gone")
	_, err = d.watch(second)
	require.NoError(t, err)
	require.NotEqual(t, old.Pid, d.proc.Pid, "a new watchdog")
	require.NoError(t, d.pipe.Close()) // as when the worker dies
	for _, pgid := range []int{first, second} {
		natstest.Eventually(t, 10*time.Second, func() bool { return !groupRunning(pgid) }, "group %d killed", pgid)
	}
	require.True(t, groupRunning(done), "a group no longer listed is left alone")
}
