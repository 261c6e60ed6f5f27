// Package bench measures jetjob against the targets of its benchmark issue
// and against the raw JetStream ceiling of the same machine in the same run,
// the way `nats bench` and River's riverbench measure their systems:
// throughput, start latency, backlog and tag set scaling, operations, and
// memory.
package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// Scenario names.
const (
	ScenarioCeiling = "ceiling"
	ScenarioE2E     = "e2e"
	ScenarioLatency = "latency"
	ScenarioBacklog = "backlog"
	ScenarioTags    = "tags"
	ScenarioOps     = "ops"
	ScenarioMemory  = "memory"
)

// Scenarios lists every scenario in run order.
var Scenarios = []string{ScenarioCeiling, ScenarioE2E, ScenarioLatency, ScenarioBacklog, ScenarioTags, ScenarioOps, ScenarioMemory}

// Defaults for Config, as in the benchmark issue.
const (
	JobsDefault         = 20_000
	ProducersDefault    = 8
	WorkersDefault      = 100
	RateDefault         = 500
	LatencyJobsDefault  = 2_000
	CancelJobsDefault   = 50
	BacklogSmallDefault = 1_000
	BacklogLargeDefault = 100_000
	BacklogHuge         = 1_000_000
	TagSetsDefault      = 1_000
	TagPools            = 32
	OpsJobsDefault      = 10_000
	HangJobsDefault     = 1_000
	// StallDefault: a run in which no job finishes for this long is broken,
	// not slow, and fails instead of waiting out a long timeout.
	StallDefault = time.Minute
	// SubmitBatch is the batch size of batch submits (River's InsertMany
	// calls in the peers' runs).
	SubmitBatch = 1_000
)

// Config configures a run. Zero values take the defaults.
type Config struct {
	// Jobs per e2e run.
	Jobs int
	// Producers submitting one at a time.
	Producers int
	// Workers: concurrent handlers running no-op jobs.
	Workers int
	// Processes: the workers of the e2e runs and of the start latency
	// split over this many pools, each with its own NATS connection and
	// log, as so many `jetjob worker` processes have. Default 1: one pool
	// on the server's own.
	Processes int
	// Rate of the latency scenario, jobs/s, and how many jobs it submits.
	Rate, LatencyJobs int
	// CancelJobs: running jobs canceled for the cancel latency.
	CancelJobs int
	// BacklogSmall and BacklogLarge are the pending jobs drained.
	BacklogSmall, BacklogLarge int
	// TagSets: the many-tag-sets case, served by TagPools overlapping pools.
	TagSets int
	// OpsJobs: pending jobs bulk canceled; HangJobs: dead jobs for hang detection.
	OpsJobs, HangJobs int
	// Stall fails a scenario in which no job finished for this long.
	Stall time.Duration
	// Scenarios to run, in Scenarios order; empty means all.
	Scenarios []string
	// NATSURL runs against an external NATS instead of fresh embedded servers.
	NATSURL string
	// NATSOptions are added to every connection to the NATS at NATSURL:
	// its credentials and TLS.
	NATSOptions []nats.Option
	// JSDomain is the JetStream domain of the NATS at NATSURL (its API
	// $JS.<domain>.API., as through a leaf node); empty for the plain API.
	JSDomain string
	// Fsyncs: the durability settings compared on embedded servers; default
	// both, the default (always) first. Scenarios that measure one setting
	// use the first.
	Fsyncs []string
	// NoTargets prints the figures without the targets, which are
	// for the default sizes: a smoke run's figures would read as misses.
	NoTargets bool
	// JSON prints one JSON object per figure and no table.
	JSON bool
	// Cleanup is the context of the cleanup of an external server after
	// the run (the run's own may have ended it): the CLI ends it on a
	// second Ctrl-C. Default one that only a timeout ends.
	Cleanup context.Context
	// Progress, when set, gets a line as each run starts (the CLI's stderr).
	Progress io.Writer
	Logger   *zap.Logger
	// NATSErrors, when set, hears the asynchronous errors of the
	// connections to an external NATS (the CLI's ends the run at a subject
	// that NATS refuses its user, which nats.go hears as a request nobody
	// answered).
	NATSErrors nats.ErrHandler
}

// Smoke is small enough for CI: every scenario, each for a few hundred jobs,
// in well under a minute on 2 cores. Its figures say that the harness works,
// not how fast jetjob is.
func Smoke() Config {
	return Config{Jobs: 300, Producers: 4, Workers: 20, Rate: 200, LatencyJobs: 100, CancelJobs: 10,
		BacklogSmall: 100, BacklogLarge: 400, TagSets: 20, OpsJobs: 200, HangJobs: 50, NoTargets: true}
}

func (c *Config) validate() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Jobs, JobsDefault)
	def(&c.Producers, ProducersDefault)
	def(&c.Workers, WorkersDefault)
	def(&c.Processes, 1)
	def(&c.Rate, RateDefault)
	def(&c.LatencyJobs, LatencyJobsDefault)
	def(&c.CancelJobs, CancelJobsDefault)
	def(&c.BacklogSmall, BacklogSmallDefault)
	def(&c.BacklogLarge, BacklogLargeDefault)
	def(&c.TagSets, TagSetsDefault)
	def(&c.OpsJobs, OpsJobsDefault)
	def(&c.HangJobs, HangJobsDefault)
	if c.Stall == 0 {
		c.Stall = StallDefault
	}
	for _, v := range []int{c.Jobs, c.Producers, c.Workers, c.Processes, c.Rate, c.LatencyJobs, c.CancelJobs,
		c.BacklogSmall, c.BacklogLarge, c.TagSets, c.OpsJobs, c.HangJobs} {
		if v < 0 {
			return fmt.Errorf("bench config: negative size %d", v)
		}
	}
	if c.HangJobs > c.OpsJobs {
		c.HangJobs = c.OpsJobs
	}
	for _, s := range c.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return fmt.Errorf("bench config: unknown scenario %q, expected one of %s", s, strings.Join(Scenarios, ", "))
		}
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = Scenarios
	}
	// Run order is Scenarios order: the ceiling first, so that the figures
	// after it can be compared with it.
	var ordered []string
	for _, s := range Scenarios {
		if slices.Contains(c.Scenarios, s) {
			ordered = append(ordered, s)
		}
	}
	c.Scenarios = ordered
	for _, f := range c.Fsyncs {
		if f != natsserver.FsyncAlways && f != natsserver.FsyncInterval {
			return fmt.Errorf("bench config: fsync %q, expected %s or %s", f, natsserver.FsyncAlways, natsserver.FsyncInterval)
		}
	}
	if len(c.Fsyncs) == 0 {
		c.Fsyncs = []string{natsserver.FsyncAlways, natsserver.FsyncInterval}
	}
	if c.JSDomain != "" && c.NATSURL == "" {
		return fmt.Errorf("bench config: JetStream domain %q without a NATS URL: the embedded servers have none", c.JSDomain)
	}
	if c.NATSURL != "" {
		// The external server's own setting decides.
		c.Fsyncs = []string{FsyncExternal}
	}
	return nil
}

// FsyncExternal labels figures measured on an external server.
const FsyncExternal = "external"

// Figure is one measured number.
type Figure struct {
	Scenario string
	Fsync    string
	Metric   string
	Value    float64
	Unit     string
	// Target, when set, is the goal; Higher says which way is better.
	Target float64
	Higher bool
	// CeilingMetric names the ceiling figure of the same durability this one
	// is compared with; Ceiling is its value when the ceiling ran.
	CeilingMetric string
	Ceiling       float64
	Note          string
}

// Gap is how far the figure is from its target, in percent: value over
// target less one when higher is better, target over value less one when
// lower is (so that a figure twice the target is +100% either way).
// Negative when the target is missed.
func (f Figure) Gap() (float64, bool) {
	if f.Target == 0 || f.Value == 0 && !f.Higher {
		return 0, false
	}
	if f.Higher {
		return (f.Value/f.Target - 1) * 100, true
	}
	return (f.Target/f.Value - 1) * 100, true
}

// Ratio is the figure over its ceiling.
func (f Figure) Ratio() (float64, bool) {
	if f.Ceiling == 0 {
		return 0, false
	}
	return f.Value / f.Ceiling, true
}

func (f Figure) targetOp() string {
	if f.Higher {
		return ">="
	}
	return "<="
}

// MarshalJSON gives the machine-readable form, with the gap and the ratio
// worked out.
func (f Figure) MarshalJSON() ([]byte, error) {
	type out struct {
		Scenario      string   `json:"scenario"`
		Fsync         string   `json:"fsync,omitempty"`
		Metric        string   `json:"metric"`
		Value         float64  `json:"value"`
		Unit          string   `json:"unit,omitempty"`
		Target        *float64 `json:"target,omitempty"`
		TargetOp      string   `json:"target_op,omitempty"`
		GapPct        *float64 `json:"gap_pct,omitempty"`
		Met           *bool    `json:"met,omitempty"`
		CeilingMetric string   `json:"ceiling_metric,omitempty"`
		Ratio         *float64 `json:"ratio_to_ceiling,omitempty"`
		Note          string   `json:"note,omitempty"`
	}
	o := out{Scenario: f.Scenario, Fsync: f.Fsync, Metric: f.Metric, Value: round(f.Value), Unit: f.Unit, Note: f.Note}
	if gap, ok := f.Gap(); ok {
		t, g, met := f.Target, round(gap), gap >= 0
		o.Target, o.TargetOp, o.GapPct, o.Met = &t, f.targetOp(), &g, &met
	}
	if ratio, ok := f.Ratio(); ok {
		r := round(ratio)
		o.CeilingMetric, o.Ratio = f.CeilingMetric, &r
	}
	// Plain ">=", not "\u003e=": this is read by scripts, not pasted in HTML.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(o); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

func round(v float64) float64 {
	if v >= 100 || v <= -100 {
		return float64(int64(v + 0.5))
	}
	f, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', 3, 64), 64)
	return f
}

// Runner runs scenarios and prints figures as they come.
type Runner struct {
	cfg Config
	// run names this run's job types, so that on a shared server its
	// workers take, and its bulk cancel touches, none but its own jobs.
	run     string
	out     io.Writer
	logger  *zap.Logger
	figures []Figure
	// ceiling holds the ceiling figures by fsync and metric.
	ceiling map[string]float64
	// reached says that a scenario reached the external server.
	reached bool
	// unscored lists the scenarios whose targets were left out, since
	// their sizes were not the defaults.
	unscored []string
	// noRSS says that the scenarios' peak resident sets were left out:
	// this system does not give them.
	noRSS bool
}

// Run runs the configured scenarios, each on fresh servers, printing each
// figure as it is measured and a table at the end.
func Run(ctx context.Context, cfg Config, out io.Writer) (_ []Figure, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Runner{cfg: cfg, run: uuid.NewString()[:8], out: out, logger: logging.OrNop(cfg.Logger, "bench"), ceiling: map[string]float64{}}
	if cfg.NATSURL != "" {
		// Said at once: a server's start waits 30 s for a NATS that
		// does not answer (a cluster electing a leader), silently here,
		// and nothing listening at the URL is no election.
		// Not err: the deferred cleanup below reads the run's.
		nc, connectErr := nats.Connect(cfg.NATSURL, append([]nats.Option{nats.Name("jetjob-bench"), nats.Timeout(3 * time.Second), r.natsErrors()}, cfg.NATSOptions...)...)
		if connectErr != nil {
			// %w: the CLI tells a refusal (credentials, TLS) by its cause.
			return nil, fmt.Errorf("cannot reach NATS at %s (is it running?): %w", server.RedactURL(cfg.NATSURL), connectErr)
		}
		state, lookErr := eventLogState(ctx, nc, cfg.JSDomain)
		nc.Close()
		if lookErr != nil {
			return nil, fmt.Errorf("NATS at %s: %w", server.RedactURL(cfg.NATSURL), lookErr)
		}
		switch state {
		case logAbsent:
			// What a run leaves there is said before it is made.
			r.progress("no jetjob event log on the NATS at %s: this run makes jetjob's streams and buckets there (JJ_*, KV_jj_*), and they stay, with the jobs it ran, until removed",
				server.RedactURL(cfg.NATSURL))
		case logPresent:
			// Perhaps a deployment's: its jobs and this run's share the
			// views (jetjob ls) from now on.
			r.progress("the NATS at %s holds a jetjob event log: this run's jobs (types bench_<scenario>_%s) stay in it and in the views until purged; it runs, counts and cancels none of the others",
				server.RedactURL(cfg.NATSURL), r.run)
		}
		finished := false
		defer func() {
			if r.reached { // else there is nothing of this run's to clean up
				r.cleanUpServer(ctx, !finished)
			}
		}()
		defer func() { finished = err == nil }()
	}
	for _, s := range cfg.Scenarios {
		if err := ctx.Err(); err != nil {
			return r.figures, err
		}
		if s == ScenarioMemory && cfg.NATSURL != "" {
			// It would leave its backlog pending on that server, and this
			// process's memory does not include that server's.
			r.progress("memory: skipped on an external server; it measures the embedded server holding the backlog")
			continue
		}
		if s == ScenarioMemory && !rssReadable() {
			// Its figures would be zeros, after holding 100,000 jobs.
			r.progress("memory: skipped: %s", noRSS)
			r.noRSS = true
			continue
		}
		resetPeakRSS()
		var err error
		switch s {
		case ScenarioCeiling:
			err = r.ceilingScenario(ctx)
		case ScenarioE2E:
			err = r.e2eScenario(ctx)
		case ScenarioLatency:
			err = r.latencyScenario(ctx)
		case ScenarioBacklog:
			err = r.backlogScenario(ctx)
		case ScenarioTags:
			err = r.tagsScenario(ctx)
		case ScenarioOps:
			err = r.opsScenario(ctx)
		case ScenarioMemory:
			err = r.memoryScenario(ctx)
		}
		if err != nil {
			return r.figures, fmt.Errorf("scenario %s: %w", s, err)
		}
		if !rssReadable() {
			// A peak of 0 MiB read as a measurement.
			r.noRSS = true
			continue
		}
		// The embedded server shares the process: this is server, clients
		// and workers together.
		note := r.processNote()
		// The kernel's peak can lag a part's own reading by a page or two.
		peak := peakRSS()
		for _, f := range r.figures {
			if f.Scenario == s && f.Unit == "MiB" {
				peak = max(peak, f.Value)
			}
		}
		r.add(Figure{Scenario: s, Metric: "peak_rss_mib", Value: peak, Unit: "MiB", Note: note})
	}
	if !cfg.JSON {
		r.table()
	}
	return r.figures, nil
}

// What a NATS holds of jetjob's event log, as far as it answered.
type logState int

const (
	// logUnknown: it did not answer in time (a cluster electing a leader);
	// the server's start waits it out, and says what it found.
	logUnknown logState = iota
	logAbsent
	logPresent
)

// eventLogState says whether jetjob's event log is on the NATS. A NATS, or
// an account of it, without JetStream is an error.
func eventLogState(ctx context.Context, nc *nats.Conn, jsDomain string) (logState, error) {
	js, err := jetStream(nc, jsDomain)
	if err != nil {
		return logUnknown, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = js.Stream(ctx, events.StreamDefault)
	switch {
	case err == nil:
		return logPresent, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return logAbsent, nil
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return logUnknown, fmt.Errorf("no JetStream there, which jetjob needs (nats-server -js): %w", err)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		// The server has it, for other accounts: this connection's
		// credentials (or no_auth_user) chose one without.
		return logUnknown, fmt.Errorf("no JetStream for this connection's account there, which jetjob needs (jetstream: enabled in the account's configuration, or the credentials of an account that has it): %w", err)
	}
	return logUnknown, nil
}

// natsErrors is the error handler of the run's connections to an external
// NATS.
func (r *Runner) natsErrors() nats.Option {
	if r.cfg.NATSErrors != nil {
		return nats.ErrorHandler(r.cfg.NATSErrors)
	}
	return logging.NATSErrors(r.logger)
}

// jobType is this run's job type for a scenario's jobs.
func (r *Runner) jobType(scenario string) string { return "bench_" + scenario + "_" + r.run }

// isJobType says whether a job type is one of this run's.
func (r *Runner) isJobType(t string) bool {
	return strings.HasPrefix(t, "bench_") && strings.HasSuffix(t, "_"+r.run)
}

func (r *Runner) progress(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "bench: "+format+"\n", args...)
	}
}

// add records a figure and prints its line.
func (r *Runner) add(f Figure) {
	if r.cfg.NoTargets || !r.defaultSizes(f.Scenario) {
		if f.Target != 0 {
			r.unscored = append(r.unscored, f.Scenario)
		}
		f.Target = 0
	}
	if f.CeilingMetric != "" && f.Ceiling == 0 {
		f.Ceiling = r.ceiling[f.Fsync+"/"+f.CeilingMetric]
	}
	r.figures = append(r.figures, f)
	if r.cfg.JSON {
		enc := json.NewEncoder(r.out)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(f)
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "bench scenario=%s", f.Scenario)
	if f.Fsync != "" {
		fmt.Fprintf(&b, " fsync=%s", f.Fsync)
	}
	fmt.Fprintf(&b, " metric=%s value=%s", f.Metric, num(f.Value))
	if gap, ok := f.Gap(); ok {
		fmt.Fprintf(&b, " target=%s target_op=%s gap=%+.0f%%", num(f.Target), f.targetOp(), gap)
	}
	if ratio, ok := f.Ratio(); ok {
		fmt.Fprintf(&b, " ceiling=%s ratio_to_ceiling=%.2f", f.CeilingMetric, ratio)
	}
	fmt.Fprintln(r.out, b.String())
}

func num(v float64) string {
	if v >= 100 || v == float64(int64(v)) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func (r *Runner) table() {
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSCENARIO\tFSYNC\tMETRIC\tVALUE\tUNIT\tTARGET\tGAP\tVS CEILING")
	for _, f := range r.figures {
		target, gap, ratio := "", "", ""
		if g, ok := f.Gap(); ok {
			target = f.targetOp() + num(f.Target)
			gap = fmt.Sprintf("%+.0f%%", g)
			if g >= 0 {
				gap += " met"
			} else {
				gap += " MISSED"
			}
		}
		if x, ok := f.Ratio(); ok {
			ratio = fmt.Sprintf("%.2f x %s", x, f.CeilingMetric)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Scenario, f.Fsync, f.Metric, num(f.Value), f.Unit, target, gap, ratio)
	}
	_ = tw.Flush()
	// What each figure measured, once per run of rows that share it.
	fmt.Fprintln(r.out, "\nNOTES")
	if r.cfg.NoTargets {
		fmt.Fprintln(r.out, "no targets: they are for the default sizes, and this run's are smaller")
	} else if len(r.unscored) > 0 {
		fmt.Fprintf(r.out, "no targets for %s: they are for the default sizes (--n, --workers, --producers, --rate, no --huge), and this run's differ\n",
			strings.Join(slices.Compact(r.unscored), ", "))
	}
	if r.noRSS {
		fmt.Fprintf(r.out, "no memory figures: %s\n", noRSS)
	}
	// An empty VS CEILING column read as a fault: the ratios need the
	// ceiling measured in the same run.
	if !slices.Contains(r.cfg.Scenarios, ScenarioCeiling) && slices.ContainsFunc(r.figures, func(f Figure) bool { return f.CeilingMetric != "" && f.Ceiling == 0 }) {
		fmt.Fprintln(r.out, "no ratios to the ceiling: the ceiling scenario was not in this run (add --scenario ceiling)")
	}
	for i := 0; i < len(r.figures); {
		f, metrics := r.figures[i], []string{r.figures[i].Metric}
		j := i + 1
		for ; j < len(r.figures); j++ {
			g := r.figures[j]
			if g.Scenario != f.Scenario || g.Fsync != f.Fsync || g.Note != f.Note {
				break
			}
			metrics = append(metrics, g.Metric)
		}
		i = j
		if f.Note == "" {
			continue
		}
		fsync := ""
		if f.Fsync != "" {
			fsync = " " + f.Fsync
		}
		fmt.Fprintf(r.out, "%s%s %s: %s\n", f.Scenario, fsync, strings.Join(metrics, ", "), f.Note)
	}
}

// defaultSizes says whether a scenario runs at the sizes its targets are
// set for: a target met or missed with 333 jobs or 7 workers says nothing.
func (r *Runner) defaultSizes(scenario string) bool {
	c := r.cfg
	switch scenario {
	case ScenarioE2E:
		return c.Jobs == JobsDefault && c.Workers == WorkersDefault && c.Producers == ProducersDefault
	case ScenarioLatency:
		return c.Rate == RateDefault && c.Workers == WorkersDefault && c.LatencyJobs == LatencyJobsDefault
	case ScenarioBacklog:
		return c.Workers == WorkersDefault && c.BacklogSmall == BacklogSmallDefault && c.BacklogLarge == BacklogLargeDefault
	case ScenarioTags:
		return c.Jobs == JobsDefault && c.Workers == WorkersDefault && c.TagSets == TagSetsDefault
	}
	return true
}

// withServer runs fn against a fresh jetjob server with the given fsync
// setting: embedded, in a temporary data directory removed afterwards, or on
// the external NATS.
func (r *Runner) withServer(ctx context.Context, fsync string, opts server.Options, fn func(*server.Server) error) error {
	if r.cfg.NATSURL != "" {
		// A guest there: that deployment's own servers detect hung jobs
		// and purge finished ones, by their settings; the bench's defaults
		// (a hang-after of a second in the ops scenario, a week's
		// retention) would fail and delete its jobs.
		opts.NATSURL, opts.NATSOptions, opts.NoMaintenance, opts.NATSErrors = r.cfg.NATSURL, r.cfg.NATSOptions, true, r.cfg.NATSErrors
		opts.JSDomain = r.cfg.JSDomain
	} else {
		dir, err := os.MkdirTemp("", "jetjob-bench-")
		if err != nil {
			// The path named is a random one under TMPDIR, or TMPDIR itself:
			// say which setting decides.
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Errorf("cannot make a data directory for the embedded server in %s (TMPDIR): %w; set TMPDIR to a writable directory, or measure on a running server with --server",
				os.TempDir(), err)
		}
		defer func() {
			_ = os.RemoveAll(dir)
			// Write back what this run left dirty now, so that it does not
			// land in the next run's fsyncs: a run with fsync interval leaves
			// hundreds of MiB for the kernel to write.
			syscall.Sync()
		}()
		opts.DataDir, opts.Listen, opts.Fsync = dir, "127.0.0.1:0", fsync
	}
	opts.Logger = r.logger
	s, err := server.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	r.reached = true
	defer s.Stop()
	return fn(s)
}

// cleanUpTimeout bounds the cleanup of an external server after a run.
const cleanUpTimeout = time.Minute

// cleanUpStall: the cleanup stops waiting for the log's consumers once they
// have not moved for this long. A jetjob server there moves them within a
// second; none there, they stay as the run's own server left them.
const cleanUpStall = 3 * time.Second

// cleanUpServer removes this run's queues from the external server once every
// scenario ran: their consumers, the messages of jobs canceled while
// pending, and their tag set registrations, which would otherwise stay for
// good. Its jobs stay in the log and the views until purged. Not sooner:
// the enqueuer of another server on that NATS remembers the queues it made,
// and would put a later job of this run in a queue nobody consumes. A run
// cut short (interrupted, or a scenario failed) first cancels its jobs left
// unfinished, which no worker of that server would ever take.
func (r *Runner) cleanUpServer(ctx context.Context, cutShort bool) {
	if cutShort {
		r.progress("canceling this run's unfinished jobs and removing its queues from the server (up to %s; Ctrl-C again leaves them)", cleanUpTimeout)
	}
	// Also after an interrupt; and only once the enqueuers have caught up,
	// since one would make a queue again for a late job.
	ctx, cancel := context.WithTimeout(cmp.Or(r.cfg.Cleanup, context.Background()), cleanUpTimeout)
	defer cancel()
	err := func() error {
		nc, err := nats.Connect(r.cfg.NATSURL, append([]nats.Option{nats.Name("jetjob-bench"), r.natsErrors()}, r.cfg.NATSOptions...)...)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetStream(nc, r.cfg.JSDomain)
		if err != nil {
			return err
		}
		// Each step is tried whatever the one before gave: queues left
		// behind stay for good.
		var errs []error
		if cutShort {
			errs = append(errs, r.cancelUnfinished(ctx, js))
		}
		// Best effort: on a busy server the enqueuers may never be idle.
		_ = waitCaughtUp(ctx, js, events.StreamDefault, cleanUpTimeout/4, cleanUpStall)
		_, err = workers.RemoveQueues(ctx, js, r.isJobType)
		return errors.Join(append(errs, err)...)
	}()
	switch {
	case err != nil:
		r.progress("could not clean up all of this run's jobs and queues on the server: %v (its job types end in _%s)", oneLine(err), r.run)
	case cutShort:
		r.progress("this run's jobs left unfinished are canceled, and its queues removed")
	}
}

// oneLine joins a joined error's lines.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// cancelUnfinished cancels this run's jobs that did not finish, once the
// views show them: pending ones at once, running ones (their worker gone
// with this process) once the server's cancel grace is over.
func (r *Runner) cancelUnfinished(ctx context.Context, js jetstream.JetStream) error {
	// Best effort: the views a moment behind miss a job or two at most.
	_ = waitCaughtUp(ctx, js, events.StreamDefault, cleanUpTimeout/4, cleanUpStall)
	lg, err := events.Attach(js, events.Config{})
	if err != nil {
		return err
	}
	defer lg.Close()
	m, err := statemachine.New(lg, statemachine.Config{})
	if err != nil {
		return err
	}
	reader, err := projector.NewReader(ctx, js)
	if err != nil {
		return err
	}
	// One pass over the views, whatever this run's job types.
	page, err := reader.List(ctx, projector.Filter{States: []statemachine.State{
		statemachine.StatePending, statemachine.StateScheduled, statemachine.StateRunning}})
	if err != nil {
		return err
	}
	ids := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 256 { // in flight at once, so the log commits them in batches
		wg.Go(func() {
			for id := range ids {
				_, err := m.Cancel(ctx, id, "bench run cut short")
				// Finished, or purged, since the listing: nothing to cancel.
				if err != nil && !errors.As(err, new(*statemachine.IllegalTransitionError)) && !errors.Is(err, events.ErrNotFound) {
					failed.Add(1)
				}
			}
		})
	}
	for _, v := range page.Views {
		if r.isJobType(v.Type) {
			ids <- v.ID
		}
	}
	close(ids)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of this run's jobs could not be canceled", n)
	}
	return nil
}

// percentiles of durations, in milliseconds (nearest rank).
func percentiles(ds []time.Duration) (p50, p90, p99, top float64) {
	if len(ds) == 0 {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(ds))+0.5) - 1
		return ms(ds[min(max(i, 0), len(ds)-1)])
	}
	return at(0.50), at(0.90), at(0.99), ms(ds[len(ds)-1])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// resetPeakRSS returns what the Go heap no longer uses to the system and
// resets the kernel's peak resident set, so that the next peak is the next
// scenario's own.
func resetPeakRSS() {
	settle()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// settle collects garbage and returns the freed heap to the system.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// processCPU is the CPU time the process has used so far, user and system,
// over all its threads.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processNote says what this process's figures (its CPU time, its memory)
// cover.
func (r *Runner) processNote() string {
	if r.cfg.NATSURL != "" {
		return "this process: projector, enqueuer, clients and workers; not the external server"
	}
	return "whole process: embedded server, projector, enqueuer, clients and workers"
}

// peakRSS is the process's peak resident set since the last reset, in MiB.
func peakRSS() float64 { return procStatus("VmHWM:") }

// rss is the process's resident set now, in MiB.
func rss() float64 { return procStatus("VmRSS:") }

// procSelfStatus is where Linux gives the process's resident set; a
// variable for the tests of a system without it.
var procSelfStatus = "/proc/self/status"

// noRSS says why a run has no memory figures.
const noRSS = "the process's resident set is read from /proc/self/status (Linux), which this system does not have"

// rssReadable says whether this system gives the process's resident set
// (macOS and the BSDs have no /proc/self/status).
func rssReadable() bool {
	_, err := os.Stat(procSelfStatus)
	return err == nil
}

func procStatus(field string) float64 {
	b, err := os.ReadFile(procSelfStatus)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// jetStream is the JetStream handle of a connection to the NATS, by the
// domain's API prefix when the run is given one.
func jetStream(nc *nats.Conn, domain string) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain)
	}
	return jetstream.New(nc)
}
