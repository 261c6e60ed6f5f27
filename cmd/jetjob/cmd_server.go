package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/maintenance"
)

func serverFlags(fs *flagSet, o *serverOptions, defaultData string) func() error {
	fs.StringVar(&o.dataDir, "data", defaultData, "data directory of the embedded NATS server")
	fs.StringVar(&o.listen, "listen", natsserver.ListenDefault, "HOST:PORT the embedded NATS server listens on")
	fs.StringVar(&o.natsURL, "nats", "", "use the NATS server at this URL instead of an embedded one")
	fs.StringVar(&o.fsync, "fsync", natsserver.FsyncAlways, "embedded server's event log durability: always (fsync before every ack) or interval (every 2 minutes)")
	hang := fs.String("hang-after", maintenance.HangAfterDefault.String(), "a running job with no heartbeat for this long is failed as hung")
	grace := fs.String("cancel-grace", maintenance.CancelGraceDefault.String(), "a cancel no worker acknowledges within this is finished by the server")
	retain := fs.String("retain", maintenance.RetainFinishedDefault.String(), "finished jobs older than this are purged")
	every := fs.String("purge-every", maintenance.PurgeEveryDefault.String(), "pause between background purges")
	return func() (err error) {
		if o.hangAfter, err = parseDurationFlag("hang-after", *hang); err != nil {
			return err
		}
		if o.cancelGrace, err = parseDurationFlag("cancel-grace", *grace); err != nil {
			return err
		}
		if o.retainFinished, err = parseDurationFlag("retain", *retain); err != nil {
			return err
		}
		if o.purgeEvery, err = parseDurationFlag("purge-every", *every); err != nil {
			return err
		}
		if o.fsync != natsserver.FsyncAlways && o.fsync != natsserver.FsyncInterval {
			return usageErr("--fsync %q, expected always or interval", o.fsync)
		}
		if o.hangAfter == 0 || o.cancelGrace == 0 {
			return usageErr("--hang-after and --cancel-grace must be positive")
		}
		return nil
	}
}

func runServer(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("server", "[--data DIR] [--listen HOST:PORT] [--nats URL] [--fsync always|interval] [--hang-after D]", false)
	var o serverOptions
	finish := serverFlags(fs, &o, "jetjob-data")
	verbose := fs.Bool("v", false, "debug logging")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if err := finish(); err != nil {
		return err
	}
	o.logger = logging.New(*verbose)
	defer func() { _ = o.logger.Sync() }()
	s, err := startServer(ctx, o)
	if err != nil {
		return err
	}
	o.logger.Info(fmt.Sprintf("jetjob server ready on %s (data %s, fsync %s); Ctrl-C stops it", s.url, o.dataDir, o.fsync))
	<-ctx.Done()
	o.logger.Info("shutting down")
	s.stop()
	o.logger.Info("stopped")
	return nil
}
