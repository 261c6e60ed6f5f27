package workers

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/statemachine"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER for prctl(2).
const prSetChildSubreaper = 36

// A worker that adopts the orphans of its commands and never reaps them
// (PID 1 in a container without an init, a subreaper) does not wait out a
// cancel's grace for them: the zombies of a command's children that exited
// on SIGTERM kept its process group, so every cancel took the whole grace
// and the job's log said processes outlived it.
func TestExecCancelDoesNotWaitForZombies(t *testing.T) {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Skipf("cannot become a subreaper: %v", errno)
	}
	t.Cleanup(func() {
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0)
		for { // the orphans adopted, reaped
			if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				return
			}
		}
	})
	f := newFixture(t, true)
	f.pool(PoolConfig{Types: []string{"orphans"}}, execHandler(t, ExecConfig{
		Command: []string{"sh", "-c", "sleep 300 >/dev/null 2>&1 & echo ready; wait"}, Grace: time.Minute}))
	j := f.submit(statemachine.SubmitParams{Type: "orphans"})
	f.waitLines(j.ID, StreamStdout, 1)
	_, err := f.m.Cancel(context.Background(), j.ID, "not needed")
	require.NoError(t, err)
	// Within the minute's grace only if the zombie is not waited for.
	f.waitState(j.ID, statemachine.StateCanceled)
	for _, l := range f.waitLines(j.ID, StreamSystem, 1) {
		require.False(t, strings.Contains(l.Line, "outlived"), "the job's log says: %s", l.Line)
	}
}
