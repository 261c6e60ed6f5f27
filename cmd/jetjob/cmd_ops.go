package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

const (
	// viewsWait bounds how long a bulk cancel or a purge waits for the
	// views to show what the log held when it started.
	viewsWait = 10 * time.Second
	// listViewsWait is ls's: a listing decides nothing, and a server down
	// should not hold it long.
	listViewsWait = 2 * time.Second
)

// waitForViews waits until the views show every event the log held, so
// that a decision taken on them misses no job submitted, or finished, just
// before; past wait it goes on, and says so.
func waitForViews(ctx context.Context, c *client, command string, wait time.Duration) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ok, err := projector.CaughtUp(wctx, c.js, c.lg.Stream())
	if err == nil && !ok && ctx.Err() == nil {
		viewsBehind(command, wait)
	}
}

func viewsBehind(command string, wait time.Duration) {
	fmt.Fprintf(os.Stderr, "jetjob %s: the views are still behind the event log after %s (is a jetjob server running? a NATS cluster electing a leader also holds them back); going on with them\n", command, wait)
}

// bulkCancelJSON is what cancel --pending -o json prints: the result, and
// the error that cut it short, if one did.
type bulkCancelJSON struct {
	maintenance.BulkCancelResult
	Error string `json:"error,omitempty"`
}

func bulkCancel(ctx context.Context, fs *flagSet, f projector.Filter, reason string, dryRun bool, out io.Writer) error {
	res, err := cancelPending(ctx, fs, f, reason, dryRun)
	// Bad input found only on the way (a --server that is no NATS URL,
	// refused by the dial) is refused as bad flags are: exit 2, nothing
	// on stdout.
	refused := exitCode(err) == exitUsage && len(res.Canceled)+len(res.Skipped)+res.NotTried == 0
	if fs.json() && !refused {
		// Once the input was taken, a script reading stdout gets a result
		// whatever happened, as when some cancels failed: what was done
		// (perhaps nothing: the server not reached, the jobs not listed),
		// and the error, which exits 1 as stderr says.
		if res.Canceled == nil {
			res.Canceled = []string{}
		}
		if res.Skipped == nil {
			res.Skipped = []maintenance.Skipped{}
		}
		doc := bulkCancelJSON{BulkCancelResult: res}
		if err != nil {
			doc.Error = oneLine(err)
		}
		return errors.Join(writeJSON(out, doc), err)
	}
	// A cancel cut short, or some cancels failed: what was done is printed
	// all the same, and the error (exit 1) says the rest is not done.
	if err != nil && len(res.Canceled)+len(res.Skipped)+res.NotTried == 0 {
		return err
	}
	verb := "canceled"
	if dryRun {
		verb = "would cancel"
	}
	for _, id := range res.Canceled {
		fmt.Fprintf(out, "%s %s\n", verb, id)
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(out, "skipped %s: %s\n", s.ID, s.Reason)
	}
	_, werr := fmt.Fprintf(out, "%d %s, %d skipped\n", len(res.Canceled), verb, len(res.Skipped))
	return errors.Join(werr, err)
}

func cancelPending(ctx context.Context, fs *flagSet, f projector.Filter, reason string, dryRun bool) (maintenance.BulkCancelResult, error) {
	c, err := dial(ctx, fs)
	if err != nil {
		return maintenance.BulkCancelResult{}, err
	}
	defer c.close()
	r, err := projector.NewReader(ctx, c.js)
	if err != nil {
		return maintenance.BulkCancelResult{}, err
	}
	res, err := maintenance.CancelPending(ctx, r, c.m, f, maintenance.BulkCancelOptions{Reason: reason, DryRun: dryRun, ViewsWait: viewsWait})
	if res.ViewsBehind {
		viewsBehind("cancel", viewsWait)
	}
	return res, err
}

func runLogs(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("logs", "ID [-f] [--raw]", true)
	follow := fs.Bool("f", false, "follow until the job ends")
	raw := fs.Bool("raw", false, "print control characters (terminal escapes) as the command wrote them")
	following := func() string {
		if *follow {
			return "logs"
		}
		return ""
	}
	return jobCommandFollowing(ctx, fs, args, following, func(c *client, id string) error {
		if _, err := c.m.Load(ctx, id); err != nil {
			return err
		}
		logs, err := attachLogs(ctx, c)
		if err != nil {
			return err
		}
		shown, numbered := 0, false
		gaps := workers.NewLineGaps(nil)
		runs := leaseRuns{load: func() ([]events.Record, error) { return c.lg.Load(ctx, id) }, run: map[uint64]int{}}
		// On stderr, so that the lines themselves stay parseable.
		defer func() {
			if shown >= workers.LogLinesPerJob && !numbered {
				fmt.Fprintf(os.Stderr, "jetjob logs: a job keeps its last %d lines; the earliest lines of this job may have been dropped\n", workers.LogLinesPerJob)
			}
		}()
		print := func(l workers.LogLine) {
			if n := gaps.Before(l); n > 0 {
				lines := "lines"
				if n == 1 {
					lines = "line"
				}
				fmt.Fprintf(os.Stderr, "jetjob logs: %d %s of attempt %d missing here: a job keeps its last %d lines, "+
					"and a worker cut off from the server may lose lines\n", n, lines, l.Attempt, workers.LogLinesPerJob)
			}
			numbered = numbered || l.Number > 0
			shown++
			if fs.json() {
				_ = writeJSONLine(out, l)
				return
			}
			if *raw {
				// The command's own bytes, escapes and all, as asked.
				fmt.Fprintln(rawOut(out), logLineText(l, true, runs.of(l)))
				return
			}
			fmt.Fprintln(out, logLineText(l, false, runs.of(l)))
		}
		if !*follow {
			lines, err := logs.Read(ctx, id)
			gaps = workers.NewLineGaps(lines)
			for _, l := range lines {
				print(l)
			}
			return err
		}
		finished := func(ctx context.Context) bool {
			// A job that is gone has no more lines to come; a server that
			// does not answer is waited for (Follow bounds the wait).
			j, err := c.m.Load(ctx, id)
			return errors.Is(err, events.ErrNotFound) || err == nil && j.State.Finished()
		}
		err = logs.Follow(ctx, id, finished, print)
		if ctx.Err() != nil {
			// Ctrl-C ends a follow as asked, as it ends watch.
			return nil
		}
		if err != nil && !c.nc.IsConnected() {
			// Said as watch says it: what NATS said matters less than that
			// the server is gone.
			return fmt.Errorf("logs ended: lost the connection to the jetjob server at %s (%w)", clip(server.RedactURL(fs.server)), err)
		}
		return err
	})
}

func runPurge(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("purge", "--older-than D [--state S]... [--dry-run]", true)
	olderThan := fs.String("older-than", "", "purge finished jobs that completed longer ago than this (required), e.g. 720h")
	var states strs
	fs.Var(&states, "state", "only jobs in this finished state (repeatable; default succeeded, failed and canceled)")
	dryRun := fs.Bool("dry-run", false, "list what would be purged, purge nothing")
	if err := fs.parseFlagsOnly(args); err != nil {
		return err
	}
	if *olderThan == "" {
		return usageErr("--older-than is required")
	}
	age, err := parseDurationFlag("older-than", *olderThan)
	if err != nil {
		return err
	}
	var st []statemachine.State
	for _, name := range states {
		one, err := parseStates([]string{name})
		if err != nil || !one[0].Finished() {
			return usageErr("--state %s: only finished jobs are purged, expected succeeded, failed or canceled", quoteShort(name))
		}
		st = append(st, one[0])
	}
	c, err := dial(ctx, fs)
	if err != nil {
		return err
	}
	defer c.close()
	r, err := projector.NewReader(ctx, c.js)
	if err != nil {
		return err
	}
	hb, err := events.OpenHeartbeats(ctx, c.js)
	if err != nil {
		return err
	}
	logs, err := attachLogs(ctx, c)
	if err != nil {
		return err
	}
	leftovers, err := workers.AttachLeftovers(ctx, c.js)
	if err != nil {
		return err
	}
	p, err := maintenance.NewPurger(r, c.m, hb, logs, leftovers, nil, maintenance.PurgerConfig{})
	if err != nil {
		return err
	}
	waitForViews(ctx, c, "purge", viewsWait)
	purge, verb := p.Purge, "purged"
	if *dryRun {
		purge, verb = p.WouldPurge, "would purge"
	}
	res, err := purge(ctx, age, st)
	if fs.json() {
		if werr := writeJSON(out, res); werr != nil {
			return werr
		}
	} else {
		for _, id := range res.Purged {
			fmt.Fprintf(out, "%s %s\n", verb, id)
		}
		fmt.Fprintf(out, "%d %s\n", len(res.Purged), verb)
	}
	return err
}

func runAdmin(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(out, "usage: jetjob admin rebuild   # rebuild the job views from the event log, in place, while everything runs")
		return errHelp
	}
	if len(args) == 0 || args[0] != "rebuild" {
		return usageErr("expected 'jetjob admin rebuild'")
	}
	fs := newFlags("admin rebuild", "", true)
	if err := fs.parseFlagsOnly(args[1:]); err != nil {
		return err
	}
	c, err := dial(ctx, fs)
	if err != nil {
		return err
	}
	defer c.close()
	// A missing bucket is the server's to make (with its replicas): it
	// rebuilds one it finds missing by itself.
	if _, err := projector.NewReader(ctx, c.js); err != nil {
		return err
	}
	hb, err := events.OpenHeartbeats(ctx, c.js)
	if err != nil {
		return err
	}
	proj, err := projector.New(c.js, c.lg, hb, projector.Config{})
	if err != nil {
		return err
	}
	start := time.Now()
	stats, err := proj.Rebuild(ctx)
	if err != nil {
		return err
	}
	if fs.json() {
		return writeJSON(out, stats)
	}
	_, err = fmt.Fprintf(out, "rebuilt %d job views from %d events of the log in %s (%.0f events/s); %d differed and were written, %d of jobs the log no longer has were removed\n",
		stats.Jobs, stats.Events, time.Since(start).Round(time.Millisecond), stats.EventsPerSec, stats.Written, stats.Removed)
	return err
}

// leaseRuns numbers the runs of each attempt, for logs' text: a job
// handed back (its worker stopping) runs again under the same attempt
// number, and the lines of both runs showed as one run's. They are told
// from the job's history, read when a line names a lease not read of it
// yet (a follow sees the job acquired again).
type leaseRuns struct {
	load func() ([]events.Record, error)
	run  map[uint64]int // by lease: 1 for an attempt's first run, 0 none of this job's
}

// of is the run of its attempt that wrote l: 0 for a line of no lease (the
// server's, a worker's from before leases were written) or one whose
// lease the history does not hold (the job purged meanwhile).
func (r *leaseRuns) of(l workers.LogLine) int {
	if l.Lease == 0 {
		return 0
	}
	if n, ok := r.run[l.Lease]; ok {
		return n
	}
	if recs, err := r.load(); err == nil {
		// Folded as the state machine folds it: an acquire it refused
		// leased nothing.
		job, runs := statemachine.Job{State: statemachine.StateNew}, map[int]int{}
		for _, rec := range recs {
			if job.Apply(rec) == nil && rec.Type == events.TypeAcquired {
				runs[job.Attempt]++
				r.run[job.Lease] = runs[job.Attempt]
			}
		}
		if _, ok := r.run[l.Lease]; !ok && len(recs) > 0 && recs[len(recs)-1].Seq >= l.Lease {
			// The history holds the lease's sequence and no acquire
			// there: it never will, so it is not asked of the history
			// again. One it does not reach yet (a read from a replica
			// behind, the line faster than the read) is asked again at
			// the next line.
			r.run[l.Lease] = 0
		}
	}
	return r.run[l.Lease]
}

// logLineText is a job's log line as logs prints it: a progress line
// shows how far the job is (its fraction as a percentage) before its
// message, which may be empty, since the fraction is what it is for. A
// line of an attempt's second run or later (run, from leaseRuns) says so,
// as [1 run 2 stdout]; an attempt's only run is shown as [1 stdout].
func logLineText(l workers.LogLine, raw bool, run int) string {
	line := l.Line
	if !raw {
		line = escapeControls(line)
	}
	if l.Progress != nil {
		pct := strconv.FormatFloat(math.Round(*l.Progress*1000)/10, 'f', -1, 64) + "%"
		line = strings.TrimSuffix(pct+" "+line, " ")
	}
	attempt := strconv.Itoa(l.Attempt)
	if run > 1 {
		attempt += " run " + strconv.Itoa(run)
	}
	return fmt.Sprintf("%s [%s %s] %s", l.Time.Local().Format("15:04:05.000"), attempt, l.Stream, line)
}

// escapeControls writes a value, or a job's output line, with its control
// characters (but tab) and bidirectional overrides as Go escapes: a
// command's output is not the operator's, and an escape sequence in it
// could move the cursor, retitle the terminal or hide the lines around it.
// Lines are stored as valid UTF-8. textOut escapes them in all text
// output; escaped here too, a value's newline does not break its row, and
// a table's columns are sized for what is shown.
func escapeControls(line string) string {
	if !strings.ContainsFunc(line, isEscaped) && utf8.ValidString(line) {
		return line
	}
	return string(escapeText([]byte(line), false))
}

// isEscaped tells the characters text output shows escaped: the C0 and C1
// controls and DEL but tab, and the bidirectional embeddings, overrides
// and isolates (U+202A-U+202E, U+2066-U+2069), which reorder what follows
// them on screen.
func isEscaped(r rune) bool {
	return r != '\t' && unicode.IsControl(r) || r >= '\u202a' && r <= '\u202e' || r >= '\u2066' && r <= '\u2069'
}
