package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

// jobCommand parses a command that takes one job ID, connects, and runs fn.
func jobCommand(ctx context.Context, fs *flagSet, args []string, fn func(c *client, id string) error) error {
	return jobCommandFollowing(ctx, fs, args, nil, fn)
}

// jobCommandFollowing is jobCommand for a command that may follow the job
// until stopped: following, asked once the flags are parsed, names it for
// dialFollowing, or is empty for a one-shot command.
func jobCommandFollowing(ctx context.Context, fs *flagSet, args []string, following func() string, fn func(c *client, id string) error) error {
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(pos)
	if err != nil {
		return err
	}
	name := ""
	if following != nil {
		name = following()
	}
	c, err := dialAs(ctx, fs, name)
	if err != nil {
		return err
	}
	defer c.close()
	return fn(c, id)
}

func oneID(pos []string) (string, error) {
	if len(pos) != 1 {
		return "", usageErr("expected exactly one job ID, got %d arguments", len(pos))
	}
	if err := events.ValidateJobID(pos[0]); err != nil {
		return "", err
	}
	return pos[0], nil
}

func runGet(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("get", "ID", true)
	return jobCommand(ctx, fs, args, func(c *client, id string) error {
		view, err := getView(ctx, c, id)
		if err != nil {
			return err
		}
		if fs.json() {
			return writeJSON(out, view)
		}
		return printView(out, view)
	})
}

// getView reads the projected view; a job whose view is not projected yet,
// or trails its history (get right after a cancel), is folded from its
// history, so that get shows what the commands before it did, as is every
// job while the views bucket is missing (the server makes it again and
// projects every view anew). What a view left out for its size (a result;
// tags, meta and texts) is read from the history.
func getView(ctx context.Context, c *client, id string) (projector.View, error) {
	if r, err := projector.NewReader(ctx, c.js); err == nil {
		if view, err := r.Get(ctx, id); err == nil {
			job, err := c.m.Load(ctx, id)
			if err != nil {
				return projector.View{}, err
			}
			if job.Version == view.Version && !view.ResultOmitted && !view.Truncated {
				return view, nil
			}
			whole := projector.ViewOf(job, nil)
			if whole.Version == view.Version {
				// The heartbeat is the view's: the history has none.
				whole.HeartbeatAt, whole.UpdatedAt = view.HeartbeatAt, view.UpdatedAt
			}
			return whole, nil
		}
	}
	job, lerr := c.m.Load(ctx, id)
	if lerr != nil {
		return projector.View{}, lerr
	}
	return projector.ViewOf(job, nil), nil
}

func printView(out io.Writer, v projector.View) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	// Values that came from outside this CLI (errors, a key written
	// before keys were checked) must not break the rows or reach the
	// terminal as escapes.
	row := func(k string, val any) { fmt.Fprintf(tw, "%s:\t%s\n", k, escapeControls(fmt.Sprint(val))) }
	row("id", v.ID)
	row("type", v.Type)
	row("state", v.State)
	if len(v.Tags) > 0 {
		row("tags", labels(v.Tags).String())
	}
	if len(v.Meta) > 0 {
		row("meta", labels(v.Meta).String())
	}
	row("priority", v.Priority)
	row("attempt", fmt.Sprintf("%d of %d", v.Attempt, v.MaxAttempts))
	if v.WorkerID != "" {
		row("worker", v.WorkerID)
	}
	if v.Key != "" {
		row("key", v.Key)
	}
	if v.RunAt != nil {
		row("run at", v.RunAt.Format(time.RFC3339))
	}
	if v.Error != "" {
		row("error", v.Error+parenthesized(v.ErrorCode))
	}
	if len(v.Result) > 0 {
		row("result", resultText(v.Result))
	}
	for _, e := range v.Errors {
		by := ""
		if e.WorkerID != "" {
			by = "on " + e.WorkerID
		}
		row(fmt.Sprintf("attempt %d", e.Attempt), fmt.Sprintf("%s: %s", e.At.Format(time.RFC3339), e.Error)+parenthesized(e.Code, by))
	}
	if v.CancelReason != "" {
		row("cancel reason", v.CancelReason)
	}
	if v.CanceledBy != "" {
		row("canceled by", v.CanceledBy)
	}
	row("created", v.CreatedAt.Format(time.RFC3339))
	if v.StartedAt != nil {
		row("started", v.StartedAt.Format(time.RFC3339))
	}
	row("updated", v.UpdatedAt.Format(time.RFC3339))
	if v.CompletedAt != nil {
		row("completed", v.CompletedAt.Format(time.RFC3339))
	}
	row("version", v.Version)
	return tw.Flush()
}

// parenthesized is " (a, b)" of the parts given, or "" when none is: an
// error a handler returned plainly has no code.
func parenthesized(parts ...string) string {
	parts = slices.DeleteFunc(parts, func(p string) bool { return p == "" })
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// resultTextMax is how much of a result get prints as text: a line, not a
// screenful; -o json has all of it.
const resultTextMax = 200

// resultText is a job's result on one line, cut at resultTextMax bytes.
func resultText(result json.RawMessage) string {
	var compact bytes.Buffer
	if json.Compact(&compact, result) != nil {
		compact.Reset()
		compact.Write(result)
	}
	text := compact.String()
	if len(text) <= resultTextMax {
		return text
	}
	return fmt.Sprintf("%s… (%d bytes; -o json prints all of it)", text[:runeCut(text, resultTextMax)], len(text))
}

// filterFlags adds the job filter flags: --state only when withStates, and
// --limit only when limitDefault is 0 or more.
func filterFlags(fs *flagSet, withStates bool, limitDefault int) func() (projector.Filter, error) {
	var states strs
	tags, meta, metaNot := labels{}, labels{}, labels{}
	if withStates {
		fs.Var(&states, "state", "only jobs in this state (repeatable: any of them)")
	}
	typ := fs.String("type", "", "only jobs of this type")
	fs.Var(tags, "tag", "only jobs with this tag k=v (repeatable: all of them)")
	fs.Var(meta, "meta", "only jobs with this metadata k=v (repeatable: all of them)")
	fs.Var(metaNot, "meta-not", "only jobs that have metadata k with a value other than v (repeatable)")
	limit := new(int)
	if limitDefault >= 0 {
		fs.IntVar(limit, "limit", limitDefault, "at most this many jobs; 0 means no limit")
	}
	return func() (projector.Filter, error) {
		st, err := parseStates(states)
		if err != nil {
			return projector.Filter{}, err
		}
		if *limit < 0 {
			return projector.Filter{}, usageErr("--limit %d, expected 0 or more", *limit)
		}
		// A filter no job can match is a typo, not an empty answer; and an
		// empty --type (from "$T" with T unset) is no filter at all, which
		// for a bulk cancel would be every pending job.
		typeGiven := false
		fs.Visit(func(f *flag.Flag) { typeGiven = typeGiven || f.Name == "type" })
		if typeGiven || *typ != "" {
			if err := statemachine.ValidateToken("--type", *typ); err != nil {
				return projector.Filter{}, err
			}
		}
		for what, m := range map[string]labels{"--tag": tags, "--meta": meta, "--meta-not": metaNot} {
			for k := range m {
				if err := statemachine.ValidateToken(what+" key", k); err != nil {
					return projector.Filter{}, err
				}
			}
		}
		f := projector.Filter{States: st, Type: *typ, Tags: tags, Meta: meta, MetaNot: metaNot, Limit: *limit}
		if err := f.Validate(); err != nil { // the values
			return projector.Filter{}, err
		}
		return f, nil
	}
}

func runList(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("ls", "[--state S]... [--type T] [--tag k=v]... [--meta k=v]... [--meta-not k=v]... [--limit N] [--after ID]", true)
	filter := filterFlags(fs, true, 100)
	after := fs.String("after", "", "only jobs after this job ID (job IDs sort in submit order): the next page")
	if err := fs.parseFlagsOnly(args); err != nil {
		return err
	}
	f, err := filter()
	if err != nil {
		return err
	}
	if *after != "" {
		if err := events.ValidateJobID(*after); err != nil {
			return usageErr("--after: %v", err)
		}
		f.After = *after
	}
	c, err := dial(ctx, fs)
	if err != nil {
		return err
	}
	defer c.close()
	// The views trail the log: wait, briefly, for them to show what the
	// commands before this one did (ls right after a bulk cancel).
	waitForViews(ctx, c, "ls", listViewsWait)
	r, err := projector.NewReader(ctx, c.js)
	if err != nil {
		return err
	}
	page, err := r.List(ctx, f)
	if err != nil {
		return err
	}
	if page.Next != "" {
		// On stderr, so that the listing itself stays parseable.
		fmt.Fprintf(os.Stderr, "jetjob ls: the first %d matching jobs; more with --after %s (or --limit 0 for all)\n", len(page.Views), page.Next)
	}
	if page.Unreadable > 0 {
		fmt.Fprintf(os.Stderr, "jetjob ls: skipped %d stored views that are not readable views (written by something else); 'jetjob admin rebuild' writes them again from the log, or removes those of no job\n", page.Unreadable)
	}
	if fs.json() {
		if page.Views == nil {
			page.Views = []projector.View{}
		}
		return writeJSON(out, page.Views)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tSTATE\tATTEMPT\tTAGS\tUPDATED")
	for _, v := range page.Views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", v.ID, v.Type, v.State, v.Attempt, v.MaxAttempts,
			labels(v.Tags).String(), v.UpdatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func runWatch(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("watch", "[--state S]... [--type T] [--tag k=v]... [--meta k=v]... [--meta-not k=v]...", true)
	filter := filterFlags(fs, true, -1)
	if err := fs.parseFlagsOnly(args); err != nil {
		return err
	}
	f, err := filter()
	if err != nil {
		return err
	}
	c, err := dialFollowing(ctx, fs, "watch")
	if err != nil {
		return err
	}
	defer c.close()
	// Said on stderr, so that a dashboard knows a quiet watch may be a
	// lost one, and stdout keeps one line per change.
	at := clip(server.RedactURL(fs.server))
	c.nc.SetDisconnectErrHandler(func(nc *nats.Conn, err error) {
		if err == nil || nc.IsClosed() {
			return // closed on purpose: the watch is ending
		}
		fmt.Fprintf(os.Stderr, "jetjob watch: lost the connection to the jetjob server at %s; reconnecting\n", at)
	})
	c.nc.SetReconnectHandler(func(*nats.Conn) {
		fmt.Fprintf(os.Stderr, "jetjob watch: reconnected to %s; catching up\n", at)
	})
	r, err := projector.NewReader(ctx, c.js)
	if err != nil {
		return err
	}
	ch, err := r.Watch(ctx, f)
	if err != nil {
		return err
	}
	lines := watchLines{filter: f, shown: map[string]string{}}
	for v := range ch {
		if fs.json() {
			err = writeJSONLine(out, v)
		} else {
			err = lines.write(out, v)
		}
		if err != nil {
			return err
		}
	}
	if ctx.Err() == nil {
		return fmt.Errorf("watch ended: lost the connection to the jetjob server at %s", clip(server.RedactURL(fs.server)))
	}
	return nil
}

// watchLines writes watch's text lines: one for a job when what the line
// shows changed. A running job's view is rewritten at each of its worker's
// heartbeats (every 10 s), which changes only its updated_at, and a line
// for each would bury the changes among them (-o json prints every view).
type watchLines struct {
	filter projector.Filter
	shown  map[string]string // the last line's fields after the time, by job
}

func (w watchLines) write(out io.Writer, v projector.View) error {
	shown := fmt.Sprintf("%s %s attempt=%d/%d version=%d", v.ID, v.State, v.Attempt, v.MaxAttempts, v.Version)
	if w.shown[v.ID] == shown {
		return nil
	}
	if v.State.Finished() || !w.filter.Matches(v) {
		// A finished job's view changes no more, and the watch sends no
		// more of a job that stopped matching.
		delete(w.shown, v.ID)
	} else {
		w.shown[v.ID] = shown
	}
	_, err := fmt.Fprintf(out, "%s %s\n", v.UpdatedAt.Format(time.RFC3339Nano), shown)
	return err
}

// historyEvent is one event as `jetjob history -o json` prints it.
type historyEvent struct {
	Seq uint64 `json:"seq"`
	ID  string `json:"id,omitempty"`
	// Type and Time are absent for a quarantined message that had none.
	Type string          `json:"type,omitempty"`
	Time *time.Time      `json:"time,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
	Err  string          `json:"quarantined,omitempty"`
}

func runHistory(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("history", "ID", true)
	return jobCommand(ctx, fs, args, func(c *client, id string) error {
		recs, err := c.lg.Load(ctx, id)
		if err != nil {
			return err
		}
		// Marked as the fold skips them: unreadable, or a transition the
		// job's state did not allow when it was appended.
		job, skipped := statemachine.Fold(recs)
		why := map[uint64]string{}
		for _, q := range skipped {
			why[q.Record.Seq] = q.Reason.Error()
		}
		hist := make([]historyEvent, 0, len(recs))
		for _, r := range recs {
			h := historyEvent{Seq: r.Seq, ID: r.ID, Type: r.Type, Data: r.Data, Err: why[r.Seq]}
			if !r.Time.IsZero() {
				h.Time = &r.Time
			}
			hist = append(hist, h)
		}
		// Messages with no valid submit among them name no job, as get
		// says (exit 3); they are shown all the same, since history is
		// where an operator sees what was put on the subject.
		var none error
		if job.State == statemachine.StateNew {
			none = &statemachine.NoSubmitError{JobID: id, Messages: len(recs)}
		}
		if fs.json() {
			if err := writeJSON(out, hist); err != nil {
				return err
			}
			return none
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tDATA")
		for _, h := range hist {
			data := readableData(h.Type, h.Data)
			if h.Err != "" {
				data = "quarantined: " + h.Err
			}
			at := "-" // a quarantined event may carry no time
			if h.Time != nil {
				at = h.Time.Format(time.RFC3339Nano)
			}
			// A quarantined event's type and data are whatever was published.
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", h.Seq, at, escapeControls(h.Type), escapeControls(data))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return none
	})
}

// readableData renders an event's data for people. A submitted job's
// payload is bytes, stored as base64; when those bytes are JSON, as the CLI
// requires, they are shown as JSON. -o json keeps the data as stored.
func readableData(eventType string, data json.RawMessage) string {
	text := strings.TrimSpace(string(data))
	if eventType != events.TypeSubmitted {
		return text
	}
	var fields struct {
		Payload json.RawMessage `json:"payload"`
	}
	var payload []byte
	if json.Unmarshal(data, &fields) != nil || fields.Payload == nil || json.Unmarshal(fields.Payload, &payload) != nil {
		return text
	}
	var compact bytes.Buffer
	if json.Compact(&compact, payload) != nil {
		return text
	}
	return strings.Replace(text, `"payload":`+string(fields.Payload), `"payload":`+compact.String(), 1)
}
