// Package bench measures jetjob the way `nats bench` and River's riverbench
// measure their systems: throughput, start latency, backlog and tag set
// scaling, operations, and memory, next to the raw JetStream ceiling of the
// same machine in the same run.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/server"
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

// Defaults for Config.
const (
	JobsDefault      = 20_000
	ProducersDefault = 8
	WorkersDefault   = 100
	RateDefault      = 500
)

// Config configures a run.
type Config struct {
	// Jobs per e2e run. Default JobsDefault.
	Jobs int
	// Producers submitting one at a time. Default ProducersDefault.
	Producers int
	// Workers: concurrent handlers running no-op jobs. Default WorkersDefault.
	Workers int
	// Rate of the latency scenario, jobs/s. Default RateDefault.
	Rate int
	// Backlog sizes: the small and the large one.
	BacklogSmall, BacklogLarge int
	// TagSets: the many-tag-sets case. Default 1,000.
	TagSets int
	// OpsJobs: bulk cancel size; HangJobs: dead jobs for hang detection.
	OpsJobs, HangJobs int
	// Scenarios to run; empty means all.
	Scenarios []string
	// NATSURL runs against an external NATS instead of fresh embedded servers.
	NATSURL string
	// Fsyncs: the durability settings to compare on embedded servers.
	Fsyncs []string
	// JSON prints one JSON object per figure instead of the text lines.
	JSON   bool
	Logger *zap.Logger
}

// Smoke is a configuration small enough for CI: every scenario, in seconds.
func Smoke() Config {
	return Config{Jobs: 300, Producers: 4, Workers: 20, Rate: 200, BacklogSmall: 100, BacklogLarge: 400,
		TagSets: 20, OpsJobs: 200, HangJobs: 50}
}

func (c *Config) validate() error {
	if c.Jobs == 0 {
		c.Jobs = JobsDefault
	}
	if c.Producers == 0 {
		c.Producers = ProducersDefault
	}
	if c.Workers == 0 {
		c.Workers = WorkersDefault
	}
	if c.Rate == 0 {
		c.Rate = RateDefault
	}
	if c.BacklogSmall == 0 {
		c.BacklogSmall = 1_000
	}
	if c.BacklogLarge == 0 {
		c.BacklogLarge = 100_000
	}
	if c.TagSets == 0 {
		c.TagSets = 1_000
	}
	if c.OpsJobs == 0 {
		c.OpsJobs = 10_000
	}
	if c.HangJobs == 0 {
		c.HangJobs = 1_000
	}
	if c.Jobs < 0 || c.Producers < 0 || c.Workers < 0 || c.Rate < 0 || c.BacklogSmall < 0 || c.BacklogLarge < 0 {
		return fmt.Errorf("bench: negative size")
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = Scenarios
	}
	for _, s := range c.Scenarios {
		known := false
		for _, k := range Scenarios {
			known = known || k == s
		}
		if !known {
			return fmt.Errorf("bench: unknown scenario %q, expected one of %s", s, strings.Join(Scenarios, ", "))
		}
	}
	if len(c.Fsyncs) == 0 {
		c.Fsyncs = []string{natsserver.FsyncAlways, natsserver.FsyncInterval}
	}
	if c.NATSURL != "" {
		c.Fsyncs = []string{"external"}
	}
	return nil
}

// Figure is one measured number.
type Figure struct {
	Scenario string  `json:"scenario"`
	Fsync    string  `json:"fsync,omitempty"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit,omitempty"`
	// Target, when set, is the goal; Higher says which way is better.
	Target float64 `json:"target,omitempty"`
	Higher bool    `json:"higher_is_better,omitempty"`
	// Ceiling is the raw JetStream figure this one is compared with.
	Ceiling float64 `json:"ceiling,omitempty"`
	Note    string  `json:"note,omitempty"`
}

// Gap is how far the figure is from its target, in percent (negative: missed).
func (f Figure) Gap() (float64, bool) {
	if f.Target == 0 {
		return 0, false
	}
	if f.Higher {
		return (f.Value/f.Target - 1) * 100, true
	}
	return (f.Target/f.Value - 1) * 100, true
}

// Runner runs scenarios and prints figures as they come.
type Runner struct {
	cfg     Config
	out     io.Writer
	logger  *zap.Logger
	figures []Figure
	ceiling map[string]float64
}

// Run runs the configured scenarios, printing each figure as a line and a
// table at the end.
func Run(ctx context.Context, cfg Config, out io.Writer) ([]Figure, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Runner{cfg: cfg, out: out, logger: logging.OrNop(cfg.Logger, "bench"), ceiling: map[string]float64{}}
	for _, s := range cfg.Scenarios {
		if err := ctx.Err(); err != nil {
			return r.figures, err
		}
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
			r.memoryScenario()
		}
		if err != nil {
			return r.figures, fmt.Errorf("scenario %s: %w", s, err)
		}
	}
	if !cfg.JSON {
		r.table()
	}
	return r.figures, nil
}

func (r *Runner) add(f Figure) {
	if c, ok := r.ceiling[f.Fsync+"/"+f.Note]; ok && f.Ceiling == 0 && f.Note != "" {
		f.Ceiling = c
	}
	r.figures = append(r.figures, f)
	if r.cfg.JSON {
		_ = json.NewEncoder(r.out).Encode(f)
		return
	}
	line := fmt.Sprintf("bench scenario=%s", f.Scenario)
	if f.Fsync != "" {
		line += " fsync=" + f.Fsync
	}
	line += fmt.Sprintf(" metric=%s value=%s", f.Metric, num(f.Value))
	if f.Target != 0 {
		gap, _ := f.Gap()
		cmp := ">="
		if !f.Higher {
			cmp = "<="
		}
		line += fmt.Sprintf(" target%s%s gap=%+.0f%%", cmp, num(f.Target), gap)
	}
	if f.Ceiling != 0 {
		line += fmt.Sprintf(" ratio_to_ceiling=%.2f", f.Value/f.Ceiling)
	}
	fmt.Fprintln(r.out, line)
}

func num(v float64) string {
	if v >= 100 || v == float64(int64(v)) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func (r *Runner) table() {
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSCENARIO\tFSYNC\tMETRIC\tVALUE\tUNIT\tTARGET\tGAP")
	for _, f := range r.figures {
		target, gap := "", ""
		if g, ok := f.Gap(); ok {
			target = num(f.Target)
			gap = fmt.Sprintf("%+.0f%%", g)
			if g >= 0 {
				gap += " met"
			} else {
				gap += " MISSED"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Scenario, f.Fsync, f.Metric, num(f.Value), f.Unit, target, gap)
	}
	_ = tw.Flush()
}

// withServer runs fn against a fresh server with the given fsync setting
// (embedded, in a temporary directory removed afterwards), or against the
// external NATS.
func (r *Runner) withServer(ctx context.Context, fsync string, opts server.Options, fn func(*server.Server) error) error {
	if r.cfg.NATSURL != "" {
		opts.NATSURL = r.cfg.NATSURL
	} else {
		dir, err := os.MkdirTemp("", "jetjob-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		opts.DataDir, opts.Listen, opts.Fsync = dir, "127.0.0.1:0", fsync
	}
	opts.Logger = r.logger
	s, err := server.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer s.Stop()
	return fn(s)
}

// percentiles of durations, in milliseconds.
func percentiles(ds []time.Duration) (p50, p90, p99, max float64) {
	if len(ds) == 0 {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(ds)-1))
		return float64(ds[i]) / float64(time.Millisecond)
	}
	return at(0.50), at(0.90), at(0.99), float64(ds[len(ds)-1]) / float64(time.Millisecond)
}

// peakRSS reads the process's peak resident set, in MiB, and resets it so
// that the next scenario measures its own peak.
func peakRSS(reset bool) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	var kb float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ = strconv.ParseFloat(f[1], 64)
			}
		}
	}
	if reset {
		_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	}
	return kb / 1024
}

func (r *Runner) rss(scenario string) {
	r.add(Figure{Scenario: scenario, Metric: "peak_rss_mib", Value: peakRSS(true), Unit: "MiB"})
}
