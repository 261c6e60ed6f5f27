package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/statemachine"
)

// errUsage marks bad usage or invalid input (exit 2).
var errUsage = errors.New("bad usage")

// errHelp: -h was asked for; the usage was printed.
var errHelp = errors.New("help")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func exitCode(err error) int {
	var illegal *statemachine.IllegalTransitionError
	switch {
	case errors.Is(err, errUsage), errors.Is(err, statemachine.ErrInvalid), errors.Is(err, events.ErrInvalidJobID):
		return exitUsage
	case errors.Is(err, events.ErrNotFound):
		return exitNotFound
	case errors.Is(err, statemachine.ErrConflict), errors.As(err, &illegal), errors.Is(err, statemachine.ErrLeaseLost):
		return exitRefused
	}
	return exitFailure
}

// labels is a repeatable k=v flag.
type labels map[string]string

func (l labels) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + l[k])
	}
	return b.String()
}

func (l labels) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		// plainFlagError names the value: not said here a second time.
		return errors.New("not k=v, expected a key, '=' and a value")
	}
	if _, dup := l[k]; dup {
		return fmt.Errorf("key %s given twice, expected each key once", quoteShort(k))
	}
	l[k] = v
	return nil
}

// decimal is an int flag read in base 10 only: the flag package's own reads
// 010 as octal 8.
type decimal int

func (d *decimal) String() string { return strconv.Itoa(int(*d)) }

func (d *decimal) Set(v string) error {
	n, err := strconv.Atoi(v)
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("value out of range")
	}
	if err != nil {
		return errors.New("parse error")
	}
	*d = decimal(n)
	return nil
}

// Int defines a decimal int flag.
func (fs *flagSet) Int(name string, value int, usage string) *int {
	p := new(int)
	fs.IntVar(p, name, value, usage)
	return p
}

// IntVar defines a decimal int flag stored in p.
func (fs *flagSet) IntVar(p *int, name string, value int, usage string) {
	*p = value
	fs.Var((*decimal)(p), name, usage)
}

// strs is a repeatable string flag.
type strs []string

func (s *strs) String() string     { return strings.Join(*s, ",") }
func (s *strs) Set(v string) error { *s = append(*s, v); return nil }

// once refuses a second value for a flag that holds one: the flag package
// would keep the last, and a --key or --file given twice is more likely a
// mistake than a change of mind.
type once struct {
	flag.Value
	set bool
}

func (o *once) Set(v string) error {
	if o.set {
		return errors.New("given twice, expected it once")
	}
	o.set = true
	return o.Value.Set(v)
}

// IsBoolFlag keeps a bool flag usable without a value.
func (o *once) IsBoolFlag() bool {
	b, ok := o.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// flagSet builds a command's flags with the common client flags.
type flagSet struct {
	*flag.FlagSet
	server string
	output string
	// auth: the credential and TLS flags of a command that connects to
	// a NATS; natsOpts, what they ask of nats.go once parse checked them.
	auth      *natsAuth
	natsOpts  []nats.Option
	hasOutput bool // the command takes -o
	usageLine string
	// flagsEndAtCommand: the first positional argument and all after it
	// are a command to run, verbatim, as after a "--": the command's own
	// flags (echo -v, printf --id=x) are not this command's.
	flagsEndAtCommand bool
	// emptyOK names the string flags for which an empty value means
	// something; parse refuses an empty value given to any other.
	emptyOK map[string]bool
	// notes, printed after the flags by -h, say what no single flag's
	// line can (bench: what each scenario measures).
	notes string
}

func newFlags(name, usageLine string, client bool) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError)}
	fs.SetOutput(io.Discard)
	if client {
		def := os.Getenv("JETJOB_SERVER")
		if def == "" {
			def = "nats://127.0.0.1:4222"
		}
		fs.StringVar(&fs.server, "server", def, "NATS URL of the jetjob server (env JETJOB_SERVER)")
		fs.StringVar(&fs.output, "o", "text", "output format: text or json")
		fs.hasOutput = true
		fs.auth = authFlags(fs, "the NATS")
	}
	fs.usageLine = usageLine
	// Parse calls Usage on every error: a bad flag gets one error line,
	// and the usage is printed only when asked for.
	fs.Usage = func() {}
	return fs
}

func (fs *flagSet) printUsage() {
	// The flag package names a flag's argument, and finds its default,
	// by the type of its Value: show the flags as they were defined.
	fs.VisitAll(func(f *flag.Flag) {
		if o, ok := f.Value.(*once); ok {
			f.Value = o.Value
		}
	})
	fmt.Fprintf(os.Stdout, "usage: jetjob %s %s\n", fs.Name(), fs.usageLine)
	fs.SetOutput(os.Stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	if fs.notes != "" {
		fmt.Fprintf(os.Stdout, "\n%s", fs.notes)
	}
}

// parseFlagsOnly parses a command's flags and refuses any other argument.
func (fs *flagSet) parseFlagsOnly(args []string) error {
	pos, err := fs.parse(args)
	if err == nil && len(pos) > 0 {
		err = usageErr("unexpected argument %s", quoteShort(pos[0]))
	}
	return err
}

// parse parses flags that may come before or after positional arguments
// (unless flagsEndAtCommand); everything after a "--" is positional,
// verbatim.
func (fs *flagSet) parse(args []string) ([]string, error) {
	var tail []string
	if !fs.flagsEndAtCommand {
		for i, a := range args {
			if a == "--" {
				args, tail = args[:i], args[i+1:]
				break
			}
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		switch f.Value.(type) {
		case *strs, labels, *once:
		default:
			f.Value = &once{Value: f.Value}
		}
	})
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.printUsage()
				return nil, errHelp
			}
			return nil, usageErr("%v", plainFlagError(err))
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if fs.flagsEndAtCommand {
			// The flag package stopped at the command, or consumed the "--"
			// before it; a "--" after the command is the command's own.
			pos = rest
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if err := fs.refuseEmpty(); err != nil {
		return nil, err
	}
	if fs.hasOutput && fs.output != "text" && fs.output != "json" {
		return nil, usageErr("-o %s, expected text or json", quoteShort(fs.output))
	}
	if fs.hasOutput && os.Getenv("JETJOB_SERVER") != "" {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "server" })
		if !given {
			// Name where the bad URL came from: no --server was given.
			if err := checkNATSURL("JETJOB_SERVER", fs.server); err != nil {
				return nil, err
			}
		}
	}
	if fs.hasOutput {
		// Checked before connecting, as the URL is: a file that cannot be
		// read is bad input, not a NATS that refused the connection.
		var err error
		if fs.natsOpts, err = fs.auth.options(); err != nil {
			return nil, err
		}
	}
	pos = append(pos, tail...)
	return pos, nil
}

func (fs *flagSet) json() bool { return fs.output == "json" }

// emptyExpected says what a flag expects instead of an empty value, where
// more than its default can be said.
var emptyExpected = map[string]string{
	"after":        "a job ID, or no --after for the first page",
	"backoff-base": "a duration such as 1s, or no --backoff-base for the default",
	"backoff-cap":  "a duration such as 10m, or no --backoff-cap for the default",
	"cpuprofile":   "a file name, or no --cpuprofile for no profile",
	"creds":        "a creds file name, or no --creds",
	"delay":        "a duration such as 30s, or no --delay to run the job now",
	"file":         "a file name ('-' for stdin)",
	"id":           "a worker ID, or no --id for one made of host, pid and a random part",
	"js-domain":    "a JetStream domain such as hub, or no --js-domain for the plain JetStream API",
	"key":          "a key, or no --key for a job without one",
	"nkey":         "a file name holding an NKey seed, or no --nkey",
	"nats":         "a NATS URL such as nats://127.0.0.1:4222, or no --nats for the embedded server",
	"o":            "text or json",
	"older-than":   "a duration such as 720h",
	"payload":      `JSON such as {"n":1}, or no --payload for a job without one`,
	"payload-file": "a file name ('-' for stdin), or no --payload-file for a job without a payload",
	"run-at":       "an RFC 3339 time such as 2026-01-02T15:04:05Z, or no --run-at to run the job now",
	"server":       "a NATS URL such as nats://127.0.0.1:4222 (several: comma-separated)",
	"tls-ca":       "a PEM file name, or no --tls-ca to trust the system's CAs",
	"tls-cert":     "a PEM file name, or no --tls-cert for no client certificate",
	"tls-key":      "a PEM file name, or no --tls-key for no client certificate",
	"type":         "a job type",
}

// refuseEmpty refuses a string flag given an empty value: the flag package
// cannot tell it from a flag not given, and it is most likely "$VAR" with
// VAR unset, which read as not given would do something else than asked
// (--delay "$D" ran the job now, --nats "$URL" started a standalone server).
func (fs *flagSet) refuseEmpty() (err error) {
	fs.Visit(func(f *flag.Flag) {
		v := f.Value
		if o, ok := v.(*once); ok {
			v = o.Value
		}
		g, ok := v.(flag.Getter)
		if !ok || err != nil || fs.emptyOK[f.Name] {
			return
		}
		if s, isString := g.Get().(string); !isString || s != "" {
			return
		}
		expected := emptyExpected[f.Name]
		switch {
		case expected != "":
		case f.DefValue != "":
			expected = fmt.Sprintf("a value, or no %s for its default, %s", flagName(f.Name), f.DefValue)
		default:
			expected = fmt.Sprintf("a value, or no %s", flagName(f.Name))
		}
		err = usageErr("%s is empty, expected %s", flagName(f.Name), expected)
	})
	return err
}

func parseStates(in []string) ([]statemachine.State, error) {
	var out []statemachine.State
	for _, s := range in {
		st, err := statemachine.ParseState(s)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// wellFormedDuration is time.ParseDuration's grammar.
var wellFormedDuration = regexp.MustCompile(`^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$`)

// durationProblem says what is wrong with a duration time.ParseDuration
// refused, and what is expected, in the words of a flag's user rather than
// Go's.
func durationProblem(v string, err error, example string) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "missing unit"):
		return fmt.Sprintf("%s has a number without a unit, expected a duration such as %s", quoteShort(v), example)
	case strings.Contains(msg, "unknown unit"):
		return fmt.Sprintf("%s has an unknown unit, expected one of ns, us, ms, s, m, h, as in %s", quoteShort(v), example)
	case wellFormedDuration.MatchString(v):
		// Numbers and units as time.ParseDuration reads them: too large.
		return fmt.Sprintf("%s is too long, expected at most %dh (about 292 years) such as %s", quoteShort(v), math.MaxInt64/int64(time.Hour), example)
	}
	return fmt.Sprintf("%s, expected a duration such as %s", quoteShort(v), example)
}

func parseDurationFlag(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, usageErr("--%s %s", name, durationProblem(v, err, "30s or 5m"))
	case d < 0:
		return 0, usageErr("--%s %s is negative, expected a duration of 0 or more such as 30s or 5m", name, quoteShort(v))
	}
	return d, nil
}

// parseDurationAtLeast reads a duration flag that must be at least least.
func parseDurationAtLeast(name, v string, least time.Duration, example string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, usageErr("--%s %s", name, durationProblem(v, err, example))
	case d < least:
		return 0, usageErr("--%s %s, expected a duration of at least %s such as %s", name, clip(v), least, example)
	}
	return d, nil
}

// plainFlagError rewords the flag package's errors ("invalid value ...
// parse error") as what was expected, a value or a flag name that the user
// gave shown shortened: it may be a whole file.
func plainFlagError(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("%s needs a value", flagName(name))
	}
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag %s; -h lists the flags", shownFlag(strings.TrimLeft(name, "-")))
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return fmt.Errorf("bad flag syntax %s, expected -name or --name", quoteShort(arg))
	}
	// The rest name the flag after the value: a value holding " for -"
	// would cut the text in the wrong place, so the quoted value is read
	// as Go reads it.
	var value, rest string
	var bad error
	switch {
	case strings.HasPrefix(msg, "invalid boolean value "):
		value, rest, bad = unquotePrefix(strings.TrimPrefix(msg, "invalid boolean value "))
		if bad == nil {
			name, why, _ := strings.Cut(strings.TrimPrefix(rest, " for -"), ": ")
			if strings.HasPrefix(why, "given twice") {
				return fmt.Errorf("%s: %s", flagName(name), why)
			}
			return fmt.Errorf("%s=%s, expected true or false (or the flag alone)", flagName(name), quoteShort(value))
		}
	case strings.HasPrefix(msg, "invalid boolean flag "):
		// A bool flag's own error, e.g. given twice.
		name, why, _ := strings.Cut(strings.TrimPrefix(msg, "invalid boolean flag "), ": ")
		return fmt.Errorf("%s: %s", flagName(name), why)
	case strings.HasPrefix(msg, "invalid value "):
		value, rest, bad = unquotePrefix(strings.TrimPrefix(msg, "invalid value "))
		if bad == nil {
			name, why, _ := strings.Cut(strings.TrimPrefix(rest, " for flag -"), ": ")
			name = flagName(name)
			switch why {
			case "value out of range":
				return fmt.Errorf("%s %s is out of range, expected a smaller whole number", name, quoteShort(value))
			case "parse error":
				return fmt.Errorf("%s %s, expected a whole number", name, quoteShort(value))
			}
			return fmt.Errorf("%s %s: %s", name, quoteShort(value), why)
		}
	}
	return err
}

// unquotePrefix reads the Go-quoted string s begins with, and what follows.
func unquotePrefix(s string) (value, rest string, err error) {
	q, err := strconv.QuotedPrefix(s)
	if err != nil {
		return "", "", err
	}
	value, err = strconv.Unquote(q)
	return value, s[len(q):], err
}

// quoteShort quotes a user's value for an error line, shortened: an error
// stays one short line whatever was given.
func quoteShort(s string) string { return statemachine.QuoteShort(s) }

// clip shortens a user's text for an error line as quoteShort does, for
// text shown unquoted (a file name, a duration read well).
func clip(s string) string { return clipAt(s, 64) }

// clipPath shortens a long file name in its middle: the message must still
// name the file, at its end. At most longWord bytes, which oneLine would
// cut again.
func clipPath(s string) string {
	if len(s) <= longWord {
		return s
	}
	return cutMiddle(s, 30, 48)
}

// cutMiddle shows about head bytes of s, its length, and about its last
// tail bytes, cut at rune starts.
func cutMiddle(s string, head, tail int) string {
	from := len(s) - tail
	for from < len(s) && !utf8.RuneStart(s[from]) {
		from++
	}
	return fmt.Sprintf("%s…(%d bytes)…%s", s[:runeCut(s, head)], len(s), s[from:])
}

func clipAt(s string, shown int) string {
	if len(s) <= shown {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:runeCut(s, shown)], len(s))
}

// runeCut is the largest index at most n (n < len(s)) where s can be cut
// without splitting a rune.
func runeCut(s string, n int) int {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return n
}

// shownFlag writes an unknown flag's name as flagName does, quoted and
// shortened when it is long or not plain.
func shownFlag(name string) string {
	if len(name) <= 64 && !strings.ContainsFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) {
		return flagName(name)
	}
	return quoteShort(flagName(name))
}

// flagName writes a flag as the usage lines do: -o, --server.
func flagName(name string) string {
	if len(name) == 1 && name != "n" { // bench's --n JOBS, as its usage line spells it
		return "-" + name
	}
	return "--" + name
}
