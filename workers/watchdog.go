package workers

import (
	"bufio"
	"cmp"
	"errors"
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

// watchdogStartTimeout bounds the wait for a new watchdog to say it runs,
// with the lock held: a Go binary says so within milliseconds.
const watchdogStartTimeout = 3 * time.Second

// Starts of a watchdog that failed for a passing cause (no file
// descriptors or processes left, a start too slow), or that exited soon
// after it started, are spaced from watchdogRetryMin, doubling to
// watchdogRetryMax: one killed as soon as it starts must not be started
// again in a tight loop.
const (
	watchdogRetryMin = time.Second
	watchdogRetryMax = time.Minute
)

// errNotAWatchdog: the binary did not say it runs as a watchdog; it is not
// started again.
var errNotAWatchdog = errors.New("did not run as one (is it the binary that imports jetjob's workers package?)")

// watchdog is the worker's side: the groups that run commands, and the
// pipe to the watchdog process, started before the first command and again
// should it die or stop reading.
type watchdog struct {
	mu     sync.Mutex
	exe    string      // the binary to run as the watchdog; "" for this one
	groups map[int]int // commands running, by process group
	pipe   *os.File    // nil: no watchdog running
	proc   *os.Process
	// started is when the last start began; retryAt, when a start may be
	// tried after one that failed or did not last; backoff, the pause
	// before that.
	started, retryAt time.Time
	backoff          time.Duration
	// unsaid is a failure to start that no caller was told of yet (a
	// restart's): the next one logs it.
	unsaid error
	// never: the binary is no watchdog; not started again.
	never bool
}

// commandsWatchdog is the one watchdog of this process.
var commandsWatchdog = &watchdog{groups: map[int]int{}}

// ensure starts the watchdog if none runs, before a command starts: a
// command is listed the moment it started, not after the watchdog's start
// (a fork and a handshake), within which a worker killed left it unlisted.
// An error says that no watchdog runs, each failure once.
func (d *watchdog) ensure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.startIfNone()
}

// watch lists a command in group pgid until the returned func is called.
// An error says that no watchdog runs (each failure once): the group is
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
	return d.startIfNone()
}

// startIfNone starts a watchdog when none runs and one may be tried now,
// and returns the failure no caller was told of yet; mu is held.
func (d *watchdog) startIfNone() error {
	if d.pipe == nil && !d.never && !time.Now().Before(d.retryAt) {
		d.unsaid = d.start()
	}
	err := d.unsaid
	d.unsaid = nil
	return err
}

// drop kills the watchdog, so that it never kills the groups it was told
// of, and closes its pipe; mu is held.
func (d *watchdog) drop() {
	_ = d.proc.Kill()
	_ = d.pipe.Close()
	d.pipe, d.proc = nil, nil
}

// restartWhenGone reaps the watchdog cmd and, unless it was dropped on
// purpose, starts another, told of every group: one killed while a long
// command ran left the worker unwatched until its next command, and a
// worker dying then left that command's children running. One that did
// not last is started again only after a pause.
func (d *watchdog) restartWhenGone(cmd *exec.Cmd) {
	_ = cmd.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != cmd.Process {
		return // dropped, and replaced if need be
	}
	_ = d.pipe.Close()
	d.pipe, d.proc = nil, nil
	if time.Since(d.started) < watchdogRetryMin {
		d.delayRetry()
	} else {
		d.backoff = 0
	}
	d.restartSoon()
}

// restartSoon starts a watchdog at once, or when the pause after a failed
// one ends, while commands run; mu is held.
func (d *watchdog) restartSoon() {
	if len(d.groups) == 0 || d.never || d.pipe != nil {
		return // the next command starts one
	}
	if wait := time.Until(d.retryAt); wait > 0 {
		time.AfterFunc(wait, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.restartSoon()
		})
		return
	}
	if err := d.start(); err != nil {
		d.unsaid = err
		d.restartSoon()
	}
}

// delayRetry pauses the next start, longer after each failure; mu is held.
func (d *watchdog) delayRetry() {
	d.backoff = min(max(2*d.backoff, watchdogRetryMin), watchdogRetryMax)
	d.retryAt = time.Now().Add(d.backoff)
}

// start starts the watchdog and tells it every group listed; mu is held.
func (d *watchdog) start() (err error) {
	d.started = time.Now()
	defer func() {
		switch {
		case errors.Is(err, errNotAWatchdog):
			d.never = true
		case err != nil:
			d.delayRetry()
		}
	}()
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
	// ps shows this command line: the worker's name as it was started,
	// then what this is (on Linux its name, from /proc/self/exe, is exe).
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
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("start the commands' watchdog: %s did not say it runs within %s", exe, watchdogStartTimeout)
		}
		return fmt.Errorf("start the commands' watchdog: %s %w", exe, errNotAWatchdog)
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
