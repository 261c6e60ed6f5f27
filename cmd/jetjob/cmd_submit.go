package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

func runSubmit(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("submit", "--type T [--tag k=v]... [--meta k=v]... [--payload JSON | --payload-file F] [--priority N] [--max-attempts N] [--run-at RFC3339 | --delay D] [--key K] [--backoff-base D] [--backoff-cap D] | --file jobs.ndjson", true)
	tags, meta := labels{}, labels{}
	typ := fs.String("type", "", "job type (required)")
	fs.Var(tags, "tag", "tag k=v the worker must have (repeatable)")
	fs.Var(meta, "meta", "metadata k=v for filtering (repeatable)")
	payload := fs.String("payload", "", "payload as JSON")
	payloadFile := fs.String("payload-file", "", "read the JSON payload from a file ('-' for stdin), its bytes as they are (a trailing newline too)")
	priority := fs.Int("priority", statemachine.PriorityDefault, fmt.Sprintf("priority %d-%d, higher runs first", statemachine.PriorityMin, statemachine.PriorityMax))
	maxAttempts := fs.Int("max-attempts", statemachine.MaxAttemptsDefault, "how many times the job may run")
	runAt := fs.String("run-at", "", "run not before this RFC 3339 time")
	delay := fs.String("delay", "", "run not before this long from now, e.g. 30s")
	key := fs.String("key", "", "idempotency key: every submit with it returns the first job")
	backoffBase := fs.String("backoff-base", "", "retry backoff base (default 1s)")
	backoffCap := fs.String("backoff-cap", "", "retry backoff cap (default 10m)")
	file := fs.String("file", "", "submit one job per line of an NDJSON file ('-' for stdin)")
	err := fs.parseFlagsOnly(args)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	var perJob []string // the flags given that a --file line replaces
	fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		if f.Name != "file" && f.Name != "server" && f.Name != "o" {
			perJob = append(perJob, "--"+f.Name)
		}
	})
	var params []statemachine.SubmitParams
	// lines[i] is the file line of params[i], for errors.
	var lines []int
	if *file != "" {
		if len(perJob) > 0 {
			return usageErr("--file takes every job's fields from the file; do not combine it with %s", strings.Join(perJob, ", "))
		}
		if params, lines, err = readJobsFile(ctx, *file, (*statemachine.SubmitParams).Validate); err != nil {
			return err
		}
	} else {
		if set["max-attempts"] && *maxAttempts < 1 {
			return usageErr("--max-attempts %d, expected 1-%d", *maxAttempts, statemachine.MaxAttemptsLimit)
		}
		if *typ == "" {
			return usageErr("--type is required")
		}
		p := statemachine.SubmitParams{Type: *typ, Tags: tags, Meta: meta, Priority: *priority, MaxAttempts: *maxAttempts, Key: *key}
		switch {
		case *payload != "" && *payloadFile != "":
			return usageErr("give --payload or --payload-file, not both")
		case *payload != "":
			if !json.Valid([]byte(*payload)) || !utf8.ValidString(*payload) {
				return usageErr("--payload is not valid JSON (UTF-8 text)")
			}
			p.Payload = []byte(*payload)
		case *payloadFile != "":
			if p.Payload, err = readPayloadFile(ctx, *payloadFile); err != nil {
				return err
			}
			if !json.Valid(p.Payload) || !utf8.Valid(p.Payload) {
				return usageErr("--payload-file %s does not hold valid JSON", displayName(*payloadFile))
			}
		}
		if p.RunAt, err = parseRunAt(*runAt, *delay); err != nil {
			return err
		}
		if *backoffBase != "" {
			if p.Backoff.Base, err = parseDurationFlag("backoff-base", *backoffBase); err != nil {
				return err
			}
		}
		if *backoffCap != "" {
			if p.Backoff.Cap, err = parseDurationFlag("backoff-cap", *backoffCap); err != nil {
				return err
			}
		}
		// Checked before connecting: bad input is said as such even when
		// no server answers.
		if err := p.Validate(); err != nil {
			return err
		}
		params = []statemachine.SubmitParams{p}
	}
	c, err := dial(ctx, fs)
	if err != nil {
		return err
	}
	defer c.close()
	if *file != "" {
		if err := checkServerFits(c.m, *file, params, lines); err != nil {
			return err
		}
	}
	if len(params) == 1 && *file == "" {
		job, existed, err := c.m.Submit(ctx, params[0])
		if err != nil {
			return err
		}
		if existed {
			// The ID alone on stdout, as for a new job, so scripts work
			// either way; the difference is said where people look.
			fmt.Fprintf(os.Stderr, "jetjob submit: key %q already names job %s (%s); nothing was submitted\n", job.Key, job.ID, job.State)
		}
		if fs.json() {
			err = writeJSON(out, projector.ViewOf(job, nil))
		} else {
			_, err = fmt.Fprintln(out, job.ID)
		}
		if err != nil {
			what := "was submitted"
			if existed {
				what = "exists (its key named it)"
			}
			return fmt.Errorf("job %s %s, but printing it failed: %w", job.ID, what, err)
		}
		return nil
	}
	results := c.m.SubmitMany(ctx, params)
	views := make([]projector.View, 0, len(results))
	var existed, unknown, failed []int
	var unknownErr, failedErr error
	for i, r := range results {
		switch {
		case errors.Is(r.Err, statemachine.ErrOutcomeUnknown):
			unknown = append(unknown, lines[i])
			unknownErr = cmp.Or(unknownErr, r.Err)
			continue
		case r.Err != nil:
			failed = append(failed, lines[i])
			failedErr = cmp.Or(failedErr, r.Err)
			continue
		case r.Existed:
			existed = append(existed, lines[i])
		}
		views = append(views, projector.ViewOf(r.Job, nil))
	}
	// Said where people look; stdout keeps the stored jobs' IDs, in order.
	if len(existed) > 0 {
		fmt.Fprintf(os.Stderr, "jetjob submit: key already names a job, nothing submitted for it: line %s (the job's ID is printed)\n", lineRanges(existed))
	}
	if len(unknown) > 0 {
		fmt.Fprintf(os.Stderr, "jetjob submit: outcome unknown, the job may exist: line %s (%v)\n", lineRanges(unknown), errors.Unwrap(unknownErr))
	}
	if len(failed) > 0 {
		fmt.Fprintf(os.Stderr, "jetjob submit: not submitted: line %s (%v)\n", lineRanges(failed), failedErr)
	}
	var firstErr error
	if len(unknown)+len(failed) > 0 {
		again := "submitting those lines again may make a second job of an unknown one: check them first"
		switch {
		case allKeyed(params):
			again = "every line has a key, so submitting the file again is safe"
		case len(unknown) == 0:
			again = "only the lines not submitted need submitting again"
		}
		firstErr = fmt.Errorf("%d of %d jobs stored, %d may be, %d not; %s", len(views), len(params), len(unknown), len(failed), again)
	}
	var werr error
	if fs.json() {
		werr = writeJSON(out, views)
	} else {
		w := bufio.NewWriter(out)
		for _, v := range views {
			fmt.Fprintln(w, v.ID)
		}
		werr = w.Flush()
	}
	if werr != nil {
		return errors.Join(firstErr, fmt.Errorf("%d jobs were stored, but printing their IDs failed (ls --type lists them): %w", len(views), werr))
	}
	return firstErr
}

// openArg opens a file argument, '-' being stdin.
func openArg(name string) (io.ReadCloser, error) {
	if name == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, usageErr("cannot read %s: %v", displayName(name), pathless(err))
	}
	return f, nil
}

// readPayloadFile reads at most one byte past the payload limit: the file
// may be a device or a pipe that never ends.
func readPayloadFile(ctx context.Context, name string) ([]byte, error) {
	limit := statemachine.MaxPayloadDefault
	return interruptible(ctx, name, func() ([]byte, error) {
		r, err := openArg(name)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
		switch {
		case err != nil:
			return nil, usageErr("cannot read %s: %v", displayName(name), pathless(err))
		case len(b) > limit:
			return nil, fmt.Errorf("--payload-file %s: %w: over %d bytes, expected at most %d", displayName(name), statemachine.ErrPayloadTooLarge, limit, limit)
		}
		return b, nil
	})
}

// interruptible runs read, a read of the named input that may block (a
// terminal, a pipe), until it returns or ctx ends (Ctrl-C).
func interruptible[T any](ctx context.Context, name string, read func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := read()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("interrupted while reading %s; nothing was submitted", displayName(name))
	}
}

func displayName(name string) string {
	if name == "-" {
		return "stdin"
	}
	return clipPath(name)
}

// pathless drops the path an os error repeats: the message names the file
// already, shortened.
func pathless(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// parseRFC3339 reads an RFC 3339 time, its "T" and "Z" in either case, as
// the RFC allows (section 5.6); Go's layout takes only upper case.
func parseRFC3339(s string) (time.Time, error) {
	return time.Parse(time.RFC3339, strings.ToUpper(s))
}

func parseRunAt(runAt, delay string) (*time.Time, error) {
	switch {
	case runAt != "" && delay != "":
		return nil, usageErr("give --run-at or --delay, not both")
	case runAt != "":
		t, err := parseRFC3339(runAt)
		if err != nil {
			return nil, usageErr("--run-at %s, expected an RFC 3339 time such as 2026-01-02T15:04:05Z", quoteShort(runAt))
		}
		return &t, nil
	case delay != "":
		d, err := parseDurationFlag("delay", delay)
		if err != nil {
			return nil, err
		}
		t, err := runAtAfter(d, "--delay "+clip(delay))
		if err != nil {
			return nil, usageErr("%v", err)
		}
		return &t, nil
	}
	return nil, nil
}

// runAtAfter is the run-at a delay makes, refused past what NATS timers
// hold, and said as the delay given (what), not as the run-at it makes.
func runAtAfter(d time.Duration, what string) (time.Time, error) {
	t := time.Now().Add(d)
	if !t.Before(statemachine.RunAtLimit) {
		return t, fmt.Errorf("%s runs the job after %s, expected a shorter delay: NATS timers hold no later time",
			what, statemachine.RunAtLimit.Format("2006-01-02"))
	}
	return t, nil
}

// jobLine is one line of a --file NDJSON.
type jobLine struct {
	Type        string            `json:"type"`
	Tags        map[string]string `json:"tags"`
	Meta        map[string]string `json:"meta"`
	Payload     json.RawMessage   `json:"payload"`
	Priority    int               `json:"priority"`
	MaxAttempts *int              `json:"max_attempts"`
	RunAt       string            `json:"run_at"`
	Delay       string            `json:"delay"`
	Key         *string           `json:"key"`
	BackoffBase string            `json:"backoff_base"`
	BackoffCap  string            `json:"backoff_cap"`
}

const jobLineFields = "type, tags, meta, payload, priority, max_attempts, run_at, delay, key, backoff_base, backoff_cap"

// badLinesShown caps the bad lines a refused file lists.
const badLinesShown = 20

// badLinesMax bad lines make a file evidently not NDJSON (/dev/urandom, a
// binary): reading it stops there rather than running on to its end,
// which a device may not have.
const badLinesMax = 1000

// badLines counts a file's bad lines and keeps what is wrong with the
// first badLinesShown, all that is shown.
type badLines struct {
	shown []string
	n     int
}

func (b *badLines) add(name string, line int, err error) {
	b.n++
	if len(b.shown) < badLinesShown {
		b.shown = append(b.shown, badLine(name, line, err))
	}
}

// Bounds of a --file, whose jobs are all held and checked before the first
// is sent: a line holds at most a payload at its limit and the job's other
// fields.
const (
	maxJobsPerFile = 1_000_000
	maxJobLine     = 4 << 20
)

type jobsFile struct {
	params []statemachine.SubmitParams
	lines  []int
}

// readJobsFile reads and checks every line before anything is submitted, so
// that a bad line submits nothing; every bad line is said, one per line.
func readJobsFile(ctx context.Context, name string, validate func(*statemachine.SubmitParams) error) ([]statemachine.SubmitParams, []int, error) {
	f, err := interruptible(ctx, name, func() (jobsFile, error) {
		r, err := openArg(name)
		if err != nil {
			return jobsFile{}, err
		}
		defer r.Close()
		return scanJobs(name, r, validate, os.Stderr)
	})
	return f.params, f.lines, err
}

// scanJobs reads the jobs of the file name from r; the bad lines shown go
// to errOut.
func scanJobs(name string, r io.Reader, validate func(*statemachine.SubmitParams) error, errOut io.Writer) (jobsFile, error) {
	var out []statemachine.SubmitParams
	var lines []int
	var bad badLines
	stoppedAt := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxJobLine)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\ufeff")) // a byte order mark some editors write
		}
		if len(line) == 0 {
			continue
		}
		if len(out) == maxJobsPerFile {
			return jobsFile{}, usageErr("%s holds more than %d jobs, expected at most %d per file: split it", displayName(name), maxJobsPerFile, maxJobsPerFile)
		}
		p, err := parseJobLine(line)
		if err == nil {
			err = validate(&p)
		}
		if err != nil {
			bad.add(name, n, err)
			if bad.n == badLinesMax {
				stoppedAt = n
				break
			}
			continue
		}
		if bad.n > 0 {
			continue // nothing is submitted: the jobs need not be kept
		}
		out = append(out, p)
		lines = append(lines, n)
	}
	switch err := sc.Err(); {
	case errors.Is(err, bufio.ErrTooLong):
		return jobsFile{}, usageErr("%s line %d is over %d bytes, expected one job per line of at most %d; nothing was submitted", displayName(name), n+1, maxJobLine, maxJobLine)
	case err != nil:
		return jobsFile{}, usageErr("cannot read %s: %v", displayName(name), err)
	}
	if err := refuseBadLines(name, bad, stoppedAt, errOut); err != nil {
		return jobsFile{}, err
	}
	if len(out) == 0 {
		return jobsFile{}, usageErr("%s holds no jobs", displayName(name))
	}
	return jobsFile{params: out, lines: lines}, nil
}

// badLine says what is wrong with line n; the refusal already says the
// input is bad.
func badLine(name string, n int, err error) string {
	return fmt.Sprintf("%s line %d: %s", displayName(name), n, strings.TrimPrefix(err.Error(), statemachine.ErrInvalid.Error()+": "))
}

// refuseBadLines says the bad lines of a --file, each as "NAME line N:
// problem", the first few one per line on errOut, and refuses the file;
// stoppedAt is the line reading stopped at, if it did.
func refuseBadLines(name string, bad badLines, stoppedAt int, errOut io.Writer) error {
	switch {
	case bad.n == 1:
		return usageErr("%s; nothing was submitted", bad.shown[0])
	case bad.n > 1:
		for _, b := range bad.shown {
			fmt.Fprintf(errOut, "jetjob submit: %s\n", b)
		}
		shown := "listed above"
		if bad.n > len(bad.shown) {
			shown = fmt.Sprintf("the first %d above", len(bad.shown))
		}
		if stoppedAt > 0 {
			return usageErr("%s: %d bad lines of the first %d (%s), where reading stopped: expected one JSON job object per line; nothing was submitted",
				displayName(name), bad.n, stoppedAt, shown)
		}
		return usageErr("%s: %d bad lines (%s); nothing was submitted", displayName(name), bad.n, shown)
	}
	return nil
}

// checkServerFits checks a --file's jobs against what only the server
// knows, its max_payload, so that one too large submits nothing, as it
// does alone.
func checkServerFits(m *statemachine.Machine, name string, params []statemachine.SubmitParams, lines []int) error {
	var bad badLines
	for i := range params {
		if err := m.Validate(&params[i]); err != nil {
			bad.add(name, lines[i], err)
		}
	}
	return refuseBadLines(name, bad, 0, os.Stderr)
}

// parseJobLine reads one line of a --file, saying in plain words what is
// wrong with a bad one.
func parseJobLine(line []byte) (statemachine.SubmitParams, error) {
	if !utf8.Valid(line) {
		// encoding/json would store U+FFFD in its place: two different
		// keys would name one job.
		return statemachine.SubmitParams{}, errors.New("not valid UTF-8, expected UTF-8 text")
	}
	if string(line) == "null" {
		// encoding/json decodes it into an empty job, said as a missing type.
		return statemachine.SubmitParams{}, fmt.Errorf("JSON null, expected a JSON object with %s", jobLineFields)
	}
	var jl jobLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&jl); err != nil {
		return statemachine.SubmitParams{}, jobLineError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return statemachine.SubmitParams{}, errors.New("text after the job's JSON object, expected one object per line")
	}
	if err := checkJobLineNames(line); err != nil {
		return statemachine.SubmitParams{}, err
	}
	if jl.Type == "" {
		return statemachine.SubmitParams{}, errors.New("type is required")
	}
	p := statemachine.SubmitParams{Type: jl.Type, Tags: jl.Tags, Meta: jl.Meta, Priority: jl.Priority}
	if jl.Key != nil {
		if *jl.Key == "" {
			// Most likely a generator's unset variable: without a key the
			// line would be submitted again as a second job.
			return p, errors.New("key is empty, expected a key, or no key field for a job without one")
		}
		p.Key = *jl.Key
	}
	if jl.MaxAttempts != nil {
		if *jl.MaxAttempts < 1 {
			return p, fmt.Errorf("max_attempts %d, expected 1-%d (leave it out for %d)", *jl.MaxAttempts, statemachine.MaxAttemptsLimit, statemachine.MaxAttemptsDefault)
		}
		p.MaxAttempts = *jl.MaxAttempts
	}
	if len(jl.Payload) > 0 && string(jl.Payload) != "null" {
		p.Payload = jl.Payload
	}
	switch {
	case jl.RunAt != "" && jl.Delay != "":
		return p, errors.New("give run_at or delay, not both")
	case jl.RunAt != "":
		t, err := parseRFC3339(jl.RunAt)
		if err != nil {
			return p, fmt.Errorf("run_at %s, expected an RFC 3339 time such as 2026-01-02T15:04:05Z", quoteShort(jl.RunAt))
		}
		p.RunAt = &t
	case jl.Delay != "":
		d, err := time.ParseDuration(jl.Delay)
		if err != nil {
			return p, fmt.Errorf("delay %s", durationProblem(jl.Delay, err, "30s or 5m"))
		}
		if d < 0 {
			return p, fmt.Errorf("delay %s is negative, expected a duration of 0 or more such as 30s or 5m", quoteShort(jl.Delay))
		}
		t, err := runAtAfter(d, "delay "+quoteShort(jl.Delay))
		if err != nil {
			return p, err
		}
		p.RunAt = &t
	}
	for _, b := range []struct {
		field, v string
		to       *time.Duration
	}{{"backoff_base", jl.BackoffBase, &p.Backoff.Base}, {"backoff_cap", jl.BackoffCap, &p.Backoff.Cap}} {
		if b.v == "" {
			continue
		}
		d, err := time.ParseDuration(b.v)
		if err != nil {
			return p, fmt.Errorf("%s %s", b.field, durationProblem(b.v, err, "1s or 10m (0 for the default)"))
		}
		if d < 0 {
			return p, fmt.Errorf("%s %s is negative, expected a duration such as 1s or 10m (0 for the default)", b.field, quoteShort(b.v))
		}
		*b.to = d
	}
	return p, nil
}

// checkJobLineNames refuses what encoding/json lets pass in a line it
// decoded: a field named twice, or in other case than its name ("Type",
// "PRIORITY"), of which it silently keeps one; and a tag or meta key named
// twice, of which it keeps the last.
func checkJobLineNames(line []byte) error {
	fields, err := objectKeys(line)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range fields {
		if !slices.Contains(jobLineFieldNames, f.name) {
			// DisallowUnknownFields let it pass: it differs from one only in case.
			for _, known := range jobLineFieldNames {
				if strings.EqualFold(f.name, known) {
					return fmt.Errorf("field %q, expected %q: field names are lower case", f.name, known)
				}
			}
		}
		if seen[f.name] {
			return fmt.Errorf("field %s given twice, expected each field once", quoteShort(f.name))
		}
		seen[f.name] = true
		if (f.name == "tags" || f.name == "meta") && bytes.HasPrefix(f.value, []byte("{")) {
			keys, err := objectKeys(f.value)
			if err != nil {
				return err
			}
			inner := map[string]bool{}
			for _, k := range keys {
				if inner[k.name] {
					return fmt.Errorf("%s key %s given twice, expected each key once", f.name, quoteShort(k.name))
				}
				if string(k.value) == "null" {
					// encoding/json would store it as "".
					return fmt.Errorf("%s key %s is null, expected a string", f.name, quoteShort(k.name))
				}
				inner[k.name] = true
			}
		}
	}
	return nil
}

var jobLineFieldNames = strings.Split(jobLineFields, ", ")

type jsonMember struct {
	name  string
	value json.RawMessage
}

// objectKeys returns the members of a JSON object in order, duplicates kept.
func objectKeys(obj []byte) ([]jsonMember, error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if _, err := dec.Token(); err != nil {
		return nil, jobLineError(err)
	}
	var out []jsonMember
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, jobLineError(err)
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, jobLineError(err)
		}
		out = append(out, jsonMember{name: name, value: v})
	}
	return out, nil
}

// jobLineError says what encoding/json found wrong, without Go's type names.
func jobLineError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return fmt.Errorf("a JSON %s, expected a JSON object with %s", typeErr.Value, jobLineFields)
	case errors.As(err, &typeErr) && (typeErr.Field == "tags" || typeErr.Field == "meta") && typeErr.Type.Kind() == reflect.String:
		// encoding/json names the map, not the key whose value is wrong.
		return fmt.Errorf("a %s value is a JSON %s, expected a string", typeErr.Field, typeErr.Value)
	case errors.As(err, &typeErr):
		return fmt.Errorf("%s is a JSON %s, expected %s", typeErr.Field, typeErr.Value, jsonKind(typeErr.Type.String()))
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("not valid JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the JSON object is cut short")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, uerr := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		if uerr != nil {
			name = strings.TrimPrefix(err.Error(), "json: unknown field ")
		}
		return fmt.Errorf("unknown field %s, expected only %s", quoteShort(name), jobLineFields)
	}
	return fmt.Errorf("%v, expected a JSON object with %s", err, jobLineFields)
}

func jsonKind(goType string) string {
	switch {
	case strings.Contains(goType, "int"):
		return "a whole number"
	case strings.HasPrefix(goType, "map["):
		return "an object of string values"
	case goType == "string":
		return "a string"
	}
	return "another JSON value"
}

// lineRanges writes ascending line numbers as "3, 7-9, 12".
func lineRanges(lines []int) string {
	var b strings.Builder
	for i := 0; i < len(lines); {
		j := i
		for j+1 < len(lines) && lines[j+1] == lines[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(lines[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(lines[j]))
		}
		i = j + 1
	}
	return b.String()
}

func allKeyed(params []statemachine.SubmitParams) bool {
	for _, p := range params {
		if p.Key == "" {
			return false
		}
	}
	return true
}
