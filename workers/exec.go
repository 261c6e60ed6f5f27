package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/statemachine"
)

// Exec handler defaults and conventions.
const (
	ExecGraceDefault = 10 * time.Second
	// ExitNoRetry: a command that exits with this code (EX_DATAERR) fails
	// its job for good, without retrying it.
	ExitNoRetry = 65
	// ErrorCodeExit is the error code of an attempt whose command failed.
	ErrorCodeExit = "exit"
	// ErrorCodeStart is the error code of an attempt whose command could not
	// be started (not found, not executable, no resources to fork). The
	// command never ran, so the attempt is retried while attempts remain.
	ErrorCodeStart = "start"
	// execOutputDelay bounds how long a command's output is still read
	// after it exited, once what it wrote itself has been: what a process
	// it left in the background holds or writes is given up on then.
	execOutputDelay = time.Second
	// pipeBacklogMax is the most a pipe holds on Linux unless its owner
	// raises /proc/sys/fs/pipe-max-size: what is known to be in a pipe
	// when its size cannot be asked.
	pipeBacklogMax = 1 << 20
)

// CheckCommand reports whether command[0] can be run: a name without a slash
// must be an executable file on $PATH, a path (absolute or relative to the
// working directory) an executable regular file, and either one a script
// whose #! line names an interpreter that can run (on Linux, a program
// binary if not a script, which the kernel would refuse with "exec format
// error" at every attempt). Its error is one line
// saying what was wrong and what is expected. A worker checks its command
// once before taking jobs; a command that stops being runnable later fails
// attempts with ErrorCodeStart.
func CheckCommand(command []string) error {
	if len(command) == 0 || command[0] == "" {
		return errors.New("no command given, expected a command name on $PATH or a path to an executable file")
	}
	name := command[0]
	// Shortened: a command name pasted wrong may be a whole file.
	shown := statemachine.QuoteShort(name)
	if !strings.Contains(name, "/") {
		path, err := exec.LookPath(name)
		switch {
		case err == nil:
			return checkProgram(path, shown)
		case errors.Is(err, exec.ErrNotFound):
			return fmt.Errorf("command %s is not on $PATH, expected a command name on $PATH or a path to an executable file", shown)
		case errors.Is(err, exec.ErrDot):
			return fmt.Errorf("command %s is found on $PATH only relative to the current directory, expected it given as ./%s", shown, name)
		}
		return fmt.Errorf("command %s cannot be looked up on $PATH (%v), expected a command name on $PATH or a path to an executable file", shown, errors.Unwrap(err))
	}
	fi, err := os.Stat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("command %s does not exist, expected a path to an executable file", shown)
	case err != nil:
		return fmt.Errorf("command %s cannot be checked (%v), expected a path to an executable file", shown, errors.Unwrap(err))
	case fi.IsDir():
		return fmt.Errorf("command %s is a directory, expected a path to an executable file", shown)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("command %s is not a regular file, expected a path to an executable file", shown)
	case fi.Mode().Perm()&0o111 == 0, syscall.Access(name, accessExecute) != nil:
		return fmt.Errorf("command %s is not executable (mode %s), expected a path to an executable file", shown, fi.Mode().Perm())
	}
	return checkProgram(name, shown)
}

// checkProgram refuses an executable file that the kernel would not start
// all the same, whatever its mode says: a script whose #! line names an
// interpreter that is missing or cannot run (the start fails with "no
// such file or directory" of a file that is there), or, on Linux, a file
// that is neither a script nor a program binary (a script without its #!
// line: "exec format error"). Taken, such a command failed every attempt
// of every job with ErrorCodeStart.
func checkProgram(file, shown string) error {
	f, err := os.Open(file)
	if err != nil {
		return nil // executable but not readable: a binary may run all the same
	}
	defer func() { _ = f.Close() }()
	// The kernel reads a #! line from the file's first 256 bytes.
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	interp, ok := bytes.CutPrefix(head, []byte("#!"))
	if !ok {
		return checkBinary(head, shown)
	}
	if end := bytes.IndexByte(interp, '\n'); end >= 0 {
		interp = interp[:end]
	}
	// Read as the kernel reads it: the name ends at a space or a tab, so
	// the \r of a Windows line ending is part of it, and no such file is.
	interpreter, _, _ := strings.Cut(strings.TrimLeft(string(interp), " \t"), " ")
	interpreter, _, _ = strings.Cut(interpreter, "\t")
	if interpreter == "" {
		return fmt.Errorf("command %s: its #! line names no interpreter, expected one such as #!/bin/sh", shown)
	}
	name := statemachine.QuoteShort(interpreter)
	fi, err := os.Stat(interpreter)
	switch {
	case errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(interpreter, "\r"):
		return fmt.Errorf("command %s: its #! line names %s, which does not exist: the file has Windows line endings (\\r\\n), expected Unix ones (dos2unix converts it)", shown, name)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("command %s: its #! line names %s, which does not exist, expected the path of an installed interpreter", shown, name)
	case err != nil:
		return nil // the kernel may see it where this process cannot
	case fi.IsDir():
		return fmt.Errorf("command %s: its #! line names %s, which is a directory, expected the path of an interpreter", shown, name)
	case fi.Mode().Perm()&0o111 == 0, syscall.Access(interpreter, accessExecute) != nil:
		return fmt.Errorf("command %s: its #! line names %s, which is not executable (mode %s), expected the path of an interpreter", shown, name, fi.Mode().Perm())
	}
	if strings.HasSuffix(strings.TrimRight(string(interp), " \t"), "\r") {
		// The \r of a Windows line ending ends the argument instead, which
		// the interpreter refuses at every start: env finds no "sh\r", sh
		// has no option "-\r".
		return fmt.Errorf("command %s: its #! line ends in \\r: the file has Windows line endings (\\r\\n), expected Unix ones (dos2unix converts it)", shown)
	}
	return nil
}

// errNoProgram says what to do with a file the kernel cannot start.
func errNoProgram(shown string) error {
	return fmt.Errorf("command %s has no #! line and is no program binary, so it cannot be started (exec format error), expected a script that begins with its interpreter, as #!/bin/sh, or the interpreter as the command, as -- sh %s", shown, shown)
}

// accessExecute is X_OK for access(2).
const accessExecute = 0x1

// ExecConfig configures ExecHandler, which refuses one that cannot run
// with ErrInvalidConfig.
type ExecConfig struct {
	// Command and its arguments. Required.
	Command []string
	// Grace: after a cancel's SIGTERM, SIGKILL the process group after this.
	// Default ExecGraceDefault: 0 takes it, and is not "none". A negative
	// grace is refused: meant as "SIGKILL at once", it was read as the
	// default and gave the command 10 s.
	Grace time.Duration
	// Logger; nil means no logging.
	Logger *zap.Logger
}

func (c *ExecConfig) validate() error {
	// An empty name is no command either, as CheckCommand says: taken, it
	// failed every attempt as a command that could not start.
	if len(c.Command) == 0 || c.Command[0] == "" {
		return fmt.Errorf("%w: no command", ErrInvalidConfig)
	}
	return config.Default(ErrInvalidConfig, "exec grace", &c.Grace, ExecGraceDefault)
}

// ExecHandler runs a command once per job: the payload on its stdin,
// JETJOB_JOB_ID, JETJOB_TYPE and JETJOB_ATTEMPT in its environment, every
// line of its stdout and stderr in the job's log. Exit 0 succeeds the job;
// ExitNoRetry fails it for good; any other exit fails the attempt with
// "exit status N" (ErrorCodeExit). A command that cannot be started fails
// the attempt with ErrorCodeStart, retried while attempts remain. A cancel
// sends SIGTERM to the command's process group and, after the grace
// period, SIGKILL to whatever of the group is left, also once the command
// itself exited. A job that ends on its own ends when the command exits
// and what it wrote is logged, whatever it left running in the background.
// When the worker dies, even by SIGKILL, while a command runs, the
// command's process group is killed (see watchdog.go): a job retried
// elsewhere does not run beside what its earlier attempt started. A config
// without a command, or with a negative Grace, is refused with
// ErrInvalidConfig.
func ExecHandler(cfg ExecConfig) (Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := logging.OrNop(cfg.Logger, "exec")
	return func(ctx context.Context, job *Job) error {
		cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
		cmd.Stdin = bytes.NewReader(job.Payload)
		cmd.Env = append(os.Environ(),
			"JETJOB_JOB_ID="+job.ID, "JETJOB_TYPE="+job.Type, "JETJOB_ATTEMPT="+strconv.Itoa(job.Attempt))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		dieWithWorker(cmd.SysProcAttr)
		// Our own pipes, not exec's copies of the output: exec stops reading
		// WaitDelay after the command exits, however much is left in the
		// pipe, and a worker slow to log the lines (a loaded machine, a
		// server slow to store them) lost the end of the output.
		outputs, err := openOutputs(job)
		if err != nil {
			return startFailed(job, logger, cfg.Command[0], err)
		}
		cmd.Stdout, cmd.Stderr = outputs[0].w, outputs[1].w
		// Only the payload's copy to stdin is left to exec: once the
		// command exits, a process it left in the background and that holds
		// stdin unread does not keep the job running.
		cmd.WaitDelay = execOutputDelay
		if err := commandsWatchdog.ensure(); err != nil {
			logger.Warn("no watchdog: should this worker die, what its commands started runs on", zap.Error(err))
		}
		startErr := make(chan error, 1)
		exited := make(chan commandExit, 1)
		var unwatch func()
		var reaped atomic.Bool // cmd.Wait returned: the command exited
		go func() {
			// Linux sends the death signal when the thread that started the
			// command ends, not the process: the thread stays with this
			// goroutine until the command is reaped, so Go never retires it
			// while the command runs.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			err := cmd.Start()
			for _, o := range outputs {
				_ = o.w.Close() // the command's now: the pipe ends when its holders close it
			}
			if err != nil {
				for _, o := range outputs {
					_ = o.r.Close()
				}
				startErr <- err
				return
			}
			// Listed before it is reaped: until then its PID cannot name
			// another process's group.
			if unwatch, err = commandsWatchdog.watch(cmd.Process.Pid); err != nil {
				logger.Warn("no watchdog: should this worker die, what its commands started runs on", zap.Error(err))
			}
			startErr <- nil
			exited <- outputs.readWhile(func() error {
				err := cmd.Wait()
				reaped.Store(true)
				return err
			}, ctx.Done())
		}()
		if err := <-startErr; err != nil {
			return startFailed(job, logger, cfg.Command[0], err)
		}
		defer unwatch()
		var ended commandExit
		select {
		case ended = <-exited:
		case <-ctx.Done():
			if reaped.Load() || commandExited(cmd.Process.Pid) {
				// The command exited on its own before it was told to stop:
				// its exit says how the attempt ended. A worker paused
				// (SIGSTOP) while its command ran woke with the command gone
				// and its beats silent past the fence, which stopped the
				// handler before the exit was read; a command that had
				// exited 0 had its attempt failed as lost_contact and ran
				// again.
				ended = <-exited
				// What it started may still run: a stop stops it, as any
				// stop does, so that a retry never runs next to it.
				if pgid := cmd.Process.Pid; groupRunning(pgid) {
					job.logStream(StreamSystem, fmt.Sprintf("the command exited before the stop (%v), but processes it started still run: SIGTERM to its process group, SIGKILL in %s", context.Cause(ctx), cfg.Grace))
					_ = syscall.Kill(-pgid, syscall.SIGTERM)
					graceOver := time.NewTimer(cfg.Grace)
					defer graceOver.Stop()
					if !groupGone(pgid, graceOver.C) {
						_ = syscall.Kill(-pgid, syscall.SIGKILL)
					}
				}
				break
			}
			pgid := cmd.Process.Pid
			job.logStream(StreamSystem, fmt.Sprintf("stopping the command: %v; SIGTERM to its process group, SIGKILL in %s", context.Cause(ctx), cfg.Grace))
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			graceOver := time.NewTimer(cfg.Grace)
			defer graceOver.Stop()
			select {
			case ended = <-exited:
				// The command is gone, but what it started may not be: a
				// canceled job's retry must not run next to it.
				if !groupGone(pgid, graceOver.C) {
					job.logStream(StreamSystem, fmt.Sprintf("the command exited, but processes it started outlived its grace of %s after SIGTERM: SIGKILL to its process group", cfg.Grace))
					_ = syscall.Kill(-pgid, syscall.SIGKILL)
				}
			case <-graceOver.C:
				job.logStream(StreamSystem, fmt.Sprintf("the command outlived its grace of %s after SIGTERM: SIGKILL to its process group", cfg.Grace))
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				ended = <-exited
			}
			logger.Debug("command stopped", zap.String("job", job.ID), zap.Error(ended.err))
			return context.Cause(ctx)
		}
		waitErr := ended.err
		if ended.held {
			job.logStream(StreamSystem, fmt.Sprintf("the command exited, but a process it started still held its output %s after: no longer reading it", execOutputDelay))
		}
		if errors.Is(waitErr, exec.ErrWaitDelay) {
			job.logStream(StreamSystem, fmt.Sprintf("the command exited 0, but a process it started still held its stdin %s after: no longer writing the payload to it", execOutputDelay))
			return nil
		}
		var exitErr *exec.ExitError
		switch {
		case waitErr == nil:
			return nil
		case errors.As(waitErr, &exitErr):
			code := exitErr.ExitCode()
			if code < 0 {
				err := &CodedError{Code: ErrorCodeExit, Err: fmt.Errorf("%s", exitErr.String())}
				return err
			}
			if code == ExitNoRetry {
				// Said in the error: the view shows the attempts left unused.
				return NoRetry(&CodedError{Code: ErrorCodeExit, Err: fmt.Errorf("exit status %d (no retry)", code)})
			}
			return &CodedError{Code: ErrorCodeExit, Err: fmt.Errorf("exit status %d", code)}
		}
		return waitErr
	}, nil
}

// startFailed fails an attempt whose command could not be started.
func startFailed(job *Job, logger *zap.Logger, name string, err error) error {
	job.logStream(StreamSystem, fmt.Sprintf("cannot start %q: %v", name, err))
	logger.Warn("cannot start the command; the attempt fails and is retried while attempts remain",
		zap.String("job", job.ID), zap.Int("attempt", job.Attempt), zap.Error(err))
	// Not NoRetry: the command never ran, and what kept it from starting (a
	// binary being redeployed, no processes or file descriptors left) may
	// be gone by the next attempt.
	return &CodedError{Code: ErrorCodeStart, Err: fmt.Errorf("start command: %w", err)}
}

// commandExit is how a command ended: Wait's error, and whether a process
// it started still held its output once it exited (see commandOutput.read).
type commandExit struct {
	err  error
	held bool
}

// commandOutput is one output stream of a command: a pipe whose write end
// the command gets, and the lines read from it.
type commandOutput struct {
	r, w  *os.File
	lines *lineWriter
}

// commandOutputs are a command's stdout and stderr.
type commandOutputs [2]commandOutput

// openOutputs opens the pipes of a command's stdout and stderr, their
// lines logged to job.
func openOutputs(job *Job) (commandOutputs, error) {
	var outs commandOutputs
	for i, stream := range []string{StreamStdout, StreamStderr} {
		r, w, err := os.Pipe()
		if err != nil {
			for _, o := range outs[:i] {
				_ = o.r.Close()
				_ = o.w.Close()
			}
			return outs, fmt.Errorf("open a pipe for its %s: %w", stream, err)
		}
		outs[i] = commandOutput{r: r, w: w, lines: &lineWriter{emit: func(l string) { job.logStream(stream, l) }}}
	}
	return outs, nil
}

// readWhile reads the outputs while wait waits for the command, and after
// it exited as long as read does, then closes them.
func (outs commandOutputs) readWhile(wait func() error, hurry <-chan struct{}) commandExit {
	exit := make(chan struct{})
	var exitedAt time.Time
	helds := make(chan bool, len(outs))
	for _, o := range outs {
		go func() { helds <- o.read(exit, &exitedAt, hurry) }()
	}
	err := wait()
	exitedAt = time.Now()
	for _, o := range outs {
		// Wakes a read waiting on a pipe a background process holds; set
		// before exit is closed, so that the reads know whose it is.
		_ = o.r.SetReadDeadline(exitedAt.Add(execOutputDelay))
	}
	close(exit)
	held := false
	for range outs {
		held = <-helds || held
	}
	for _, o := range outs {
		_ = o.r.Close()
	}
	return commandExit{err: err, held: held}
}

// read logs the pipe's lines until every process holding its write end
// closed it. Once the command exited (exit closed, at exitedAt), what it
// left in the pipe is read however long logging it takes, as the pipe holds
// no more than it wrote; what a process it left running writes is read
// until execOutputDelay after the exit: such a process may hold the pipe,
// or write to it, for hours, and the job ends when its command does. It
// reports whether such a process still held the pipe when it gave up. Once
// hurry is closed (the job canceled, or its worker stopping), what is left
// is read only until execOutputDelay after the exit: the handler has a
// grace to keep.
func (o commandOutput) read(exit <-chan struct{}, exitedAt *time.Time, hurry <-chan struct{}) bool {
	defer o.lines.flush()
	buf := make([]byte, 32<<10)
	for exited := false; !exited; {
		n, err := o.r.Read(buf)
		_, _ = o.lines.Write(buf[:n])
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			<-exit // set at the exit, just before exit closed
			exited = true
		case err != nil:
			return false // io.EOF: no process holds the pipe any more
		default:
			select {
			case <-exit:
				exited = true
			default:
			}
		}
	}
	// The command exited: what it left in the pipe is read, however long
	// logging it takes (with what a process it started wrote before the
	// exit was seen here: no more than the pipe holds).
	for left := pipeBacklog(o.r); left > 0; {
		select {
		case <-hurry:
			left = 0
			continue
		default:
		}
		_ = o.r.SetReadDeadline(time.Now().Add(execOutputDelay))
		n, err := o.r.Read(buf[:min(left, len(buf))])
		_, _ = o.lines.Write(buf[:n])
		left -= n
		if err != nil {
			return errors.Is(err, os.ErrDeadlineExceeded)
		}
	}
	// What a process it started writes after, until execOutputDelay after
	// the exit.
	if until := exitedAt.Add(execOutputDelay); time.Now().Before(until) {
		_ = o.r.SetReadDeadline(until)
		for {
			n, err := o.r.Read(buf)
			_, _ = o.lines.Write(buf[:n])
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return false
			}
		}
	}
	// A last look, without waiting, tells a pipe that ended (no process
	// holds it) from one still held: a read past its deadline does not
	// look.
	_ = o.r.SetReadDeadline(time.Time{})
	n, ended := readNow(o.r, buf)
	_, _ = o.lines.Write(buf[:n])
	return !ended
}

// readNow reads what f holds without waiting; ended reports that no process
// holds its write end any more and nothing is left to read.
func readNow(f *os.File, buf []byte) (n int, ended bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false
	}
	_ = rc.Read(func(fd uintptr) bool {
		var rerr error
		n, rerr = syscall.Read(int(fd), buf)
		ended = n == 0 && rerr == nil
		n = max(n, 0)
		return true // whatever it read, or EAGAIN: no wait
	})
	return n, ended
}

// groupPoll is how often groupGone looks for the processes of a group.
const groupPoll = 20 * time.Millisecond

// groupGone reports whether every process of group pgid exited before
// deadline fired.
func groupGone(pgid int, deadline <-chan time.Time) bool {
	poll := time.NewTicker(groupPoll)
	defer poll.Stop()
	for {
		if !groupRunning(pgid) {
			return true
		}
		select {
		case <-deadline:
			return false
		case <-poll.C:
		}
	}
}

// lineWriter turns one output stream of a command into log lines: it splits
// at newlines, keeps a partial line until its end arrives, and cuts a line
// longer than a log line may be, dropping the rest of that line only.
type lineWriter struct {
	emit func(string)
	buf  []byte
	cut  bool // the current line was cut: the rest of it is dropped
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		end := bytes.IndexByte(p, '\n')
		part := p
		if end >= 0 {
			part = p[:end]
		}
		if !w.cut {
			if room := maxLineBytes - len(w.buf); len(part) > room {
				// One byte past the limit, so that cutLine sees whether the
				// cut falls in a character, also one a previous write began.
				w.emit(cutLine(string(append(w.buf, part[:room+1]...))))
				w.buf, w.cut = w.buf[:0], true
			} else {
				w.buf = append(w.buf, part...)
			}
		}
		if end < 0 {
			break
		}
		if !w.cut {
			w.emit(string(bytes.TrimSuffix(w.buf, []byte("\r"))))
		}
		w.buf, w.cut = w.buf[:0], false
		p = p[end+1:]
	}
	return n, nil
}

// flush emits a last line that ended without a newline.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 && !w.cut {
		w.emit(string(bytes.TrimSuffix(w.buf, []byte("\r"))))
	}
	w.buf, w.cut = nil, false
}
