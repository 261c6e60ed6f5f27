package workers

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// watchdogEnv, set in its environment, makes a binary that imports this
// package the watchdog of the worker that started it (see init).
const watchdogEnv = "JETJOB_EXEC_WATCHDOG"

// watchdogReady is what a watchdog writes on its stdout once it runs: a
// binary that is not one (a program run through ld.so, whose
// /proc/self/exe is the loader; a library loaded by another runtime) does
// not, and is not started again for every command.
const watchdogReady = "jetjob exec watchdog ready\n"

// The watchdog kills what the exec handler's commands started when their
// worker dies, SIGKILL included. The kernel kills only a command itself
// then (dieWithWorker), and a shell script's children would run on, orphans,
// beside the retry of their job on another worker. So each worker process
// that runs commands starts this binary again as its watchdog, in a process
// group of its own, and tells it over a pipe which process groups run
// commands now: when the worker dies the kernel closes the pipe, and the
// watchdog, reading its end, kills those groups and exits.
//
// A binary that imports this package runs as the watchdog, and never
// reaches its main, when started with watchdogEnv set: a library's users
// need not wire anything for their own workers.
func init() {
	if os.Getenv(watchdogEnv) == "" {
		return
	}
	// The worker's end is known from the pipe: the signals a terminal or
	// a service manager sends the worker's group are not the watchdog's.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	_, _ = os.Stdout.WriteString(watchdogReady)
	os.Exit(runWatchdog(os.Stdin, syscall.Kill))
}

// runWatchdog reads "+PGID" and "-PGID" lines, a command started in group
// PGID and one that ended, until the worker's end of the pipe closes; then
// it kills the groups with a command still listed. A group is counted, not
// set: a command's late "-" after its PID went to the next command must not
// unlist the next one.
func runWatchdog(r io.Reader, kill func(pid int, sig syscall.Signal) error) int {
	groups := map[int]int{}
	lines := bufio.NewScanner(r)
	for lines.Scan() {
		line := lines.Text()
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue // kill(-1) would be every process
		}
		switch line[0] {
		case '+':
			groups[pgid]++
		case '-':
			if groups[pgid]--; groups[pgid] <= 0 {
				delete(groups, pgid)
			}
		}
	}
	for pgid := range groups {
		_ = kill(-pgid, syscall.SIGKILL)
	}
	return 0
}

// watchdogWriteTimeout bounds a line's write to the watchdog: one that
// stopped reading (SIGSTOP, a debugger) would otherwise fill the pipe, and
// every command start would wait on it. Past it, that watchdog is killed
// (it kills nothing then) and a new one is told every group.
const watchdogWriteTimeout = time.Second

// watchdogStartTimeout bounds the wait for a new watchdog to say it runs.
const watchdogStartTimeout = 10 * time.Second

// watchdog is the worker's side: the groups that run commands, and the
// pipe to the watchdog process, started with the first command and again
// should it die or stop reading.
type watchdog struct {
	mu     sync.Mutex
	exe    string      // the binary to run as the watchdog; "" for this one
	groups map[int]int // commands running, by process group
	pipe   *os.File    // nil: no watchdog running
	proc   *os.Process
	// failed: the watchdog could not be started; said once, not tried
	// again.
	failed error
}

// commandsWatchdog is the one watchdog of this process.
var commandsWatchdog = &watchdog{groups: map[int]int{}}

// ensure starts the watchdog if none runs, before a command starts: a
// command is listed the moment it started, not after the watchdog's start
// (a fork and a handshake), within which a worker killed left it unlisted.
func (d *watchdog) ensure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pipe != nil || d.failed != nil {
		return nil
	}
	if err := d.start(); err != nil {
		d.failed = err
		return err
	}
	return nil
}

// watch lists a command in group pgid until the returned func is called.
// An error says that no watchdog runs (it is returned once): the group is
// then killed only with the command, when the worker dies.
func (d *watchdog) watch(pgid int) (unwatch func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.groups[pgid]++
	err = d.tell(fmt.Sprintf("+%d\n", pgid))
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.groups[pgid]--; d.groups[pgid] <= 0 {
			delete(d.groups, pgid)
		}
		_ = d.tell(fmt.Sprintf("-%d\n", pgid))
	}, err
}

// tell writes line to the watchdog, starting one first when none runs; mu
// is held.
func (d *watchdog) tell(line string) error {
	if d.pipe != nil {
		_ = d.pipe.SetWriteDeadline(time.Now().Add(watchdogWriteTimeout))
		if _, err := d.pipe.WriteString(line); err == nil {
			return nil
		}
		// It died (someone killed it), or stopped reading: a new one is
		// told every group.
		d.drop()
	}
	if d.failed != nil {
		return nil
	}
	if err := d.start(); err != nil {
		d.failed = err
		return err
	}
	return nil
}

// drop kills the watchdog, so that it never kills the groups it was told
// of, and closes its pipe; mu is held.
func (d *watchdog) drop() {
	_ = d.proc.Kill()
	_ = d.pipe.Close()
	d.pipe, d.proc = nil, nil
}

// restartWhenGone reaps the watchdog cmd and, unless it was dropped on
// purpose, starts another at once, told of every group: one killed while a
// long command ran left the worker unwatched until its next command, and a
// worker dying then left that command's children running.
func (d *watchdog) restartWhenGone(cmd *exec.Cmd) {
	_ = cmd.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != cmd.Process {
		return // dropped, and replaced if need be
	}
	_ = d.pipe.Close()
	d.pipe, d.proc = nil, nil
	if len(d.groups) == 0 || d.failed != nil {
		return // the next command starts one
	}
	if err := d.start(); err != nil {
		d.failed = err
	}
}

// start starts the watchdog and tells it every group listed; mu is held.
func (d *watchdog) start() error {
	exe := cmp.Or(d.exe, "/proc/self/exe") // this binary, even when replaced on disk since
	if d.exe == "" && runtime.GOOS != "linux" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("start the commands' watchdog: %w", err)
		}
	}
	r, w, err := os.Pipe() // close-on-exec: no command holds w open
	if err != nil {
		return fmt.Errorf("start the commands' watchdog: %w", err)
	}
	defer func() { _ = r.Close() }()
	ready, said, err := os.Pipe()
	if err != nil {
		_ = w.Close()
		return fmt.Errorf("start the commands' watchdog: %w", err)
	}
	defer func() { _ = ready.Close() }()
	cmd := exec.Command(exe)
	// ps shows this command line (its name, from /proc/self/exe, is exe).
	cmd.Args = []string{os.Args[0], "(jetjob exec watchdog)"}
	cmd.Env = append(os.Environ(), watchdogEnv+"=1")
	cmd.Stdin, cmd.Stdout = r, said
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = said.Close()
	if err != nil {
		_ = w.Close()
		return fmt.Errorf("start the commands' watchdog: %w", err)
	}
	go d.restartWhenGone(cmd)
	d.pipe, d.proc = w, cmd.Process
	_ = ready.SetReadDeadline(time.Now().Add(watchdogStartTimeout))
	got := make([]byte, len(watchdogReady))
	if _, err := io.ReadFull(ready, got); err != nil || string(got) != watchdogReady {
		d.drop()
		return fmt.Errorf("start the commands' watchdog: %s did not run as one (is it the binary that imports jetjob's workers package?)", exe)
	}
	for pgid, n := range d.groups {
		for range n {
			_ = w.SetWriteDeadline(time.Now().Add(watchdogWriteTimeout))
			if _, err := fmt.Fprintf(w, "+%d\n", pgid); err != nil {
				d.drop()
				return fmt.Errorf("tell the commands' watchdog: %w", err)
			}
		}
	}
	return nil
}
