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
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

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
	if args[0] == "help" && len(args) == 2 {
		// As `go help build`: the command's own help.
		return run([]string{args[1], "-h"}, stdout, stderr)
	}
	if args[0] == "help" && len(args) > 2 {
		fmt.Fprintf(stderr, "jetjob: help takes one command, as in jetjob help submit; got %d\n", len(args)-1)
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
			text := &textOut{w: w}
			err := c.run(ctx, args[1:], text)
			_ = text.flush() // its error is w's
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

// textOut is every command's standard output, the one place text output
// is made safe for a terminal: a value it shows (a tag, meta, a type, a
// cancel reason, an attempt's error, a line of a job's output) comes from
// whoever wrote the job, and a control character in it (an escape
// sequence, a carriage return) or a bidirectional override (U+202E turns
// the rest of its line around) could rewrite what an operator sees. Those
// (isEscaped, but for the newline, which ends the commands' own lines) are
// written as Go escapes them, \x1b or \u202e, and a byte that is not UTF-8
// as \xff; all else is written as it is, byte for byte. JSON (writeJSON)
// and logs --raw are written past it (rawOut).
type textOut struct {
	w io.Writer
	// held is the start of a character the last write cut: written with
	// the next write, or escaped by flush.
	held []byte
}

func (t *textOut) Write(p []byte) (int, error) {
	n := len(p)
	if len(t.held) > 0 {
		p = append(t.held, p...)
		t.held = nil
	}
	// A character cut at the end is held for the next write to finish.
	if start := lastRuneStart(p); start >= 0 && !utf8.FullRune(p[start:]) {
		t.held = append([]byte(nil), p[start:]...)
		p = p[:start]
	}
	if len(p) == 0 {
		return n, nil
	}
	if _, err := t.w.Write(escapeText(p, true)); err != nil {
		return 0, err
	}
	return n, nil
}

// flush writes a character cut and never finished, escaped.
func (t *textOut) flush() error {
	if len(t.held) == 0 {
		return nil
	}
	held := t.held
	t.held = nil
	_, err := t.w.Write(escapeText(held, true))
	return err
}

// lastRuneStart is where the last character of p starts, -1 for none.
func lastRuneStart(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			return i
		}
	}
	return -1
}

// escapeText is p with what isEscaped names, and bytes that are not
// UTF-8, escaped (newlines too unless newline); p itself when there is
// nothing to escape.
func escapeText(p []byte, newline bool) []byte {
	var out []byte // nil until there is something to escape
	for i := 0; i < len(p); {
		r, size := rune(p[i]), 1
		if r >= utf8.RuneSelf {
			r, size = utf8.DecodeRune(p[i:])
		}
		bad := r == utf8.RuneError && size == 1
		if !bad && (r == '\n' && newline || !isEscaped(r)) {
			if out != nil {
				out = append(out, p[i:i+size]...)
			}
			i += size
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(p)+16), p[:i]...)
		}
		if bad {
			out = fmt.Appendf(out, `\x%02x`, p[i])
		} else {
			q := strconv.QuoteRune(r) // '\x1b', '\r', '\u202e'
			out = append(out, q[1:len(q)-1]...)
		}
		i += size
	}
	if out == nil {
		return p
	}
	return out
}

// rawOut is the writer past textOut, for what is written as it is.
func rawOut(w io.Writer) io.Writer {
	if t, ok := w.(*textOut); ok {
		return t.w
	}
	return w
}

// outliveItsLog keeps a long-running command (a server, a worker) running
// when nobody reads its log any more, its stderr piped into head or into a
// log shipper that died: Go kills a process that writes to a broken pipe
// on fd 1 or 2, and it died at its next log line. Its lines are lost
// instead (the writes fail with EPIPE). SIGPIPE is caught, not ignored: an
// ignored signal stays ignored in the commands a worker starts, where a
// shell pipeline expects the default. The func returned stops catching it.
func outliveItsLog() (stop func()) {
	brokenPipe := make(chan os.Signal, 1)
	signal.Notify(brokenPipe, syscall.SIGPIPE)
	return func() { signal.Stop(brokenPipe) }
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
