package workers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/logging"
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
)

// CheckCommand reports whether command[0] can be run: a name without a slash
// must be an executable file on $PATH, a path (absolute or relative to the
// working directory) an executable regular file. Its error is one line
// saying what was wrong and what is expected. A worker checks its command
// once before taking jobs; a command that stops being runnable later fails
// attempts with ErrorCodeStart.
func CheckCommand(command []string) error {
	if len(command) == 0 || command[0] == "" {
		return errors.New("no command given, expected a command name on $PATH or a path to an executable file")
	}
	name := command[0]
	if !strings.Contains(name, "/") {
		_, err := exec.LookPath(name)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, exec.ErrNotFound):
			return fmt.Errorf("command %q is not on $PATH, expected a command name on $PATH or a path to an executable file", name)
		case errors.Is(err, exec.ErrDot):
			return fmt.Errorf("command %q is found on $PATH only relative to the current directory, expected it given as ./%s", name, name)
		}
		return fmt.Errorf("command %q cannot be looked up on $PATH (%v), expected a command name on $PATH or a path to an executable file", name, err)
	}
	fi, err := os.Stat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("command %q does not exist, expected a path to an executable file", name)
	case err != nil:
		return fmt.Errorf("command %q cannot be checked (%v), expected a path to an executable file", name, err)
	case fi.IsDir():
		return fmt.Errorf("command %q is a directory, expected a path to an executable file", name)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("command %q is not a regular file, expected a path to an executable file", name)
	case fi.Mode().Perm()&0o111 == 0, syscall.Access(name, accessExecute) != nil:
		return fmt.Errorf("command %q is not executable (mode %s), expected a path to an executable file", name, fi.Mode().Perm())
	}
	return nil
}

// accessExecute is X_OK for access(2).
const accessExecute = 0x1

// ExecConfig configures ExecHandler.
type ExecConfig struct {
	// Command and its arguments. Required.
	Command []string
	// Grace: after a cancel's SIGTERM, SIGKILL the process group after this.
	Grace  time.Duration
	Logger *zap.Logger
}

// ExecHandler runs a command once per job: the payload on its stdin,
// JETJOB_JOB_ID, JETJOB_TYPE and JETJOB_ATTEMPT in its environment, every
// line of its stdout and stderr in the job's log. Exit 0 succeeds the job;
// ExitNoRetry fails it for good; any other exit fails the attempt with
// "exit status N" (ErrorCodeExit). A command that cannot be started fails
// the attempt with ErrorCodeStart, retried while attempts remain. A cancel
// sends SIGTERM to the command's process group and SIGKILL after the grace
// period.
func ExecHandler(cfg ExecConfig) Handler {
	if cfg.Grace <= 0 {
		cfg.Grace = ExecGraceDefault
	}
	logger := logging.OrNop(cfg.Logger, "exec")
	return func(ctx context.Context, job *Job) error {
		if len(cfg.Command) == 0 {
			return NoRetry(errors.New("no command to run"))
		}
		cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
		cmd.Stdin = bytes.NewReader(job.Payload)
		cmd.Env = append(os.Environ(),
			"JETJOB_JOB_ID="+job.ID, "JETJOB_TYPE="+job.Type, "JETJOB_ATTEMPT="+strconv.Itoa(job.Attempt))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		startFailed := func(err error) error {
			job.logStream(StreamSystem, fmt.Sprintf("cannot start %q: %v", cfg.Command[0], err))
			logger.Warn("cannot start the command; the attempt fails and is retried while attempts remain",
				zap.String("job", job.ID), zap.Int("attempt", job.Attempt), zap.Error(err))
			// Not NoRetry: the command never ran, and what kept it from
			// starting (a binary being redeployed, no processes or file
			// descriptors left) may be gone by the next attempt.
			return &CodedError{Code: ErrorCodeStart, Err: fmt.Errorf("start command: %w", err)}
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return startFailed(err)
		}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			_ = stdout.Close()
			return startFailed(err)
		}
		if err := cmd.Start(); err != nil {
			return startFailed(err)
		}
		var lines sync.WaitGroup
		lines.Add(2)
		go copyLines(&lines, stdout, func(l string) { job.logStream(StreamStdout, l) })
		go copyLines(&lines, stderr, func(l string) { job.logStream(StreamStderr, l) })
		exited := make(chan error, 1)
		go func() {
			lines.Wait()
			exited <- cmd.Wait()
		}()
		var waitErr error
		select {
		case waitErr = <-exited:
		case <-ctx.Done():
			pgid := cmd.Process.Pid
			job.logStream(StreamSystem, fmt.Sprintf("stopping the command: %v; SIGTERM to its process group, SIGKILL in %s", context.Cause(ctx), cfg.Grace))
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case waitErr = <-exited:
			case <-time.After(cfg.Grace):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				waitErr = <-exited
			}
			logger.Debug("command stopped", zap.String("job", job.ID), zap.Error(waitErr))
			return context.Cause(ctx)
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
			err := &CodedError{Code: ErrorCodeExit, Err: fmt.Errorf("exit status %d", code)}
			if code == ExitNoRetry {
				return NoRetry(err)
			}
			return err
		}
		return waitErr
	}
}

func copyLines(wg *sync.WaitGroup, r io.Reader, emit func(string)) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		emit(sc.Text())
	}
	// Drain anything past an over-long line so the command never blocks.
	_, _ = io.Copy(io.Discard, r)
}
