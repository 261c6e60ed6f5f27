package workers

import "syscall"

// dieWithWorker has the kernel kill the command when the worker dies, so
// that a job retried after its worker was found dead never runs next to an
// orphan of its earlier attempt.
func dieWithWorker(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
