package main

import (
	"context"
	"io"

	"github.com/jetjob/jetjob/internal/bench"
	"github.com/jetjob/jetjob/internal/natsserver"
)

func runBench(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("bench", "[--server URL] [--n JOBS] [--scenario NAME]... [-o json] [--smoke] [--huge]", false)
	server := fs.String("server", "", "run against this NATS instead of fresh embedded servers")
	output := fs.String("o", "text", "output format: text or json")
	n := fs.Int("n", bench.JobsDefault, "jobs per e2e run")
	producers := fs.Int("producers", bench.ProducersDefault, "producers submitting one at a time")
	workers := fs.Int("workers", bench.WorkersDefault, "concurrent no-op handlers")
	var scenarios strs
	fs.Var(&scenarios, "scenario", "scenario to run (repeatable): ceiling, e2e, latency, backlog, tags, ops, memory")
	var fsyncs strs
	fs.Var(&fsyncs, "fsync", "durability setting to measure (repeatable): always, interval; default both")
	smoke := fs.Bool("smoke", false, "every scenario with a few hundred jobs: that it works, not how fast")
	huge := fs.Bool("huge", false, "backlog scenario with 1,000,000 pending jobs")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *output != "text" && *output != "json" {
		return usageErr("-o %q, expected text or json", *output)
	}
	cfg := bench.Config{Jobs: *n, Producers: *producers, Workers: *workers}
	if *smoke {
		cfg = bench.Smoke()
	}
	if *huge {
		cfg.BacklogLarge = 1_000_000
	}
	if *n <= 0 || *producers <= 0 || *workers <= 0 {
		return usageErr("--n, --producers and --workers must be positive")
	}
	for _, f := range fsyncs {
		if f != natsserver.FsyncAlways && f != natsserver.FsyncInterval {
			return usageErr("--fsync %q, expected always or interval", f)
		}
	}
	for _, s := range scenarios {
		known := false
		for _, k := range bench.Scenarios {
			known = known || s == k
		}
		if !known {
			return usageErr("unknown scenario %q, expected one of ceiling, e2e, latency, backlog, tags, ops, memory", s)
		}
	}
	cfg.Scenarios, cfg.Fsyncs, cfg.NATSURL, cfg.JSON = scenarios, fsyncs, *server, *output == "json"
	_, err = bench.Run(ctx, cfg, out)
	return err
}
