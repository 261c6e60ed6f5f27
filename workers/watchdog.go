package workers

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
)

// watchdogEnv, set in its environment, makes a binary that imports this
// package the watchdog of the worker that started it (see init).
const watchdogEnv = "JETJOB_EXEC_WATCHDOG"

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
	os.Exit(runWatchdog(os.Stdin, syscall.Kill))
}

// runWatchdog reads "+PGID" and "-PGID" lines, the groups that run commands
// and those that no longer do, until the worker's end of the pipe closes;
// then it kills the groups still listed.
func runWatchdog(r io.Reader, kill func(pid int, sig syscall.Signal) error) int {
	groups := map[int]bool{}
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
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		_ = kill(-pgid, syscall.SIGKILL)
	}
	return 0
}

// watchdog is the worker's side: the groups that run commands, and the
// pipe to the watchdog process, started with the first command and again
// should it die.
type watchdog struct {
	mu     sync.Mutex
	groups map[int]bool
	pipe   *os.File // nil: no watchdog running
	proc   *os.Process
	// failed: the watchdog could not be started; said once, not tried
	// again.
	failed error
}

// commandsWatchdog is the one watchdog of this process.
var commandsWatchdog = &watchdog{groups: map[int]bool{}}

// watch lists group pgid until the returned func is called. An error says
// that no watchdog runs (it is returned once): the group is then killed
// only with the command, when the worker dies.
func (d *watchdog) watch(pgid int) (unwatch func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.groups[pgid] = true
	err = d.tell(fmt.Sprintf("+%d\n", pgid))
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.groups, pgid)
		_ = d.tell(fmt.Sprintf("-%d\n", pgid))
	}, err
}

// tell writes line to the watchdog, starting it first when none runs; mu
// is held.
func (d *watchdog) tell(line string) error {
	if d.pipe != nil {
		if _, err := d.pipe.WriteString(line); err == nil {
			return nil
		}
		// It died (someone killed it): a new one is told every group.
		_ = d.pipe.Close()
		d.pipe = nil
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

// start starts the watchdog and tells it every group listed; mu is held.
func (d *watchdog) start() error {
	exe := "/proc/self/exe" // this binary, even when replaced on disk since
	if runtime.GOOS != "linux" {
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
	cmd := exec.Command(exe)
	cmd.Args = []string{os.Args[0], "(jetjob exec watchdog)"} // as ps shows it
	cmd.Env = append(os.Environ(), watchdogEnv+"=1")
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = w.Close()
		return fmt.Errorf("start the commands' watchdog: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reaped when it exits
	d.pipe, d.proc = w, cmd.Process
	for pgid := range d.groups {
		if _, err := fmt.Fprintf(w, "+%d\n", pgid); err != nil {
			_ = w.Close()
			d.pipe = nil
			return fmt.Errorf("tell the commands' watchdog: %w", err)
		}
	}
	return nil
}
