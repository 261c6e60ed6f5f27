// Command jetjob runs a jetjob server, workers and benchmarks, and is the
// client for submitting, inspecting and canceling jobs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Exit codes, documented in the README.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
	exitRefused  = 4
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
	// changesJobs: a success it returns stands though a refusal was heard
	// (see natsErrors); a caller told it failed would do it again.
	changesJobs bool
}

func commands() []command {
	return []command{
		{"server", "run the embedded NATS server (or connect to --nats) with the projector and maintenance services", runServer, false},
		{"dev", "start a local server with a demo worker and demo jobs", runDev, false},
		{"submit", "submit a job (or many with --file)", runSubmit, true},
		{"get", "show a job's current view", runGet, false},
		{"ls", "list jobs", runList, false},
		{"watch", "print every change of matching jobs", runWatch, false},
		{"history", "show a job's events", runHistory, false},
		{"cancel", "cancel a job, or every matching pending job with --pending", runCancel, true},
		{"logs", "print a job's log lines", runLogs, false},
		{"worker", "run a command once per job", runWorker, false},
		{"purge", "delete finished jobs older than an age", runPurge, true},
		{"admin", "administration: rebuild", runAdmin, true},
		{"bench", "measure throughput and latency", runBench, false},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: jetjob COMMAND [flags]")
	fmt.Fprintln(w)
	cmds := commands()
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'jetjob COMMAND -h' for a command's flags.")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 failure, 2 bad usage or input, 3 job not found, 4 transition refused.")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		// No command is bad usage: the usage goes where errors go, and
		// stdout stays empty for whatever reads it.
		usage(stderr)
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals()...)
	defer stop()
	ctx, deny := withDenial(ctx)
	defer deny(nil)
	for _, c := range commands() {
		if c.name == args[0] {
			// A command that printed as it went may not have checked each
			// write: output lost (a full disk) is a failure all the same.
			w := &checkedWriter{w: stdout}
			err := c.run(ctx, args[1:], w)
			if denied, ok := denial(ctx); ok && (err != nil || !c.changesJobs) {
				// What failed after the refusal failed for it ("context
				// canceled" says nothing), and a server, worker or watch
				// that stopped for it did not succeed.
				err = denied
			}
			if err == nil && w.err != nil {
				err = fmt.Errorf("write output: %w", w.err)
			}
			if err == nil {
				return exitOK
			}
			if errors.Is(err, errHelp) {
				return exitOK
			}
			err = leafHint(err)
			fmt.Fprintf(stderr, "jetjob %s: %s\n", c.name, oneLine(err))
			return exitCode(err)
		}
	}
	fmt.Fprintf(stderr, "jetjob: unknown command %s, expected one of %s\n", quoteShort(args[0]), commandNames())
	return exitUsage
}

func commandNames() string {
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}

// longWord is the length past which a word of an error line is cut: the
// values jetjob echoes are cut already, but an error of another library
// (NATS's dial error names its host) may hold a user's value whole.
const longWord = 96

func oneLine(err error) string {
	words := strings.Fields(err.Error())
	for i, w := range words {
		if len(w) > longWord {
			// Its middle: a path's file name, and the colon after it,
			// are at its end.
			words[i] = cutMiddle(w, 40, 40)
		}
	}
	line := strings.Join(words, " ")
	if strings.Contains(line, "insufficient resources") {
		// nats-server's words for its storage full; the server's log says
		// more, and what to do.
		line += " (the NATS server is out of storage: see the jetjob server's log)"
	}
	return line
}

// checkedWriter remembers the first write error.
type checkedWriter struct {
	w   io.Writer
	err error
}

func (c *checkedWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// stopSignals end a command as Ctrl-C does. A hangup (its terminal closed)
// too, so that a worker hands its jobs back and a server stops cleanly,
// unless the command was started to ignore it (nohup).
func stopSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// leafHint adds to an error of a JetStream that did not answer at all what
// a NATS reached through a leaf node needs: there the plain API goes
// unanswered, and JetStream answers only by its domain's, which no error
// of nats.go's names.
func leafHint(err error) error {
	if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return err
	}
	return fmt.Errorf("%w (a JetStream reached through a leaf node answers only by its domain: check --js-domain or JETJOB_JS_DOMAIN)", err)
}
