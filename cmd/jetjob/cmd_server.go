package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/workers"
)

// serverFlags defines a server's flags on fs; the auth it returns holds
// the credential and TLS settings for the NATS of --nats.
func serverFlags(fs *flagSet, o *server.Options, defaultData string) (func() error, *natsAuth) {
	fs.StringVar(&o.DataDir, "data", defaultData, "data directory of the embedded NATS server")
	fs.StringVar(&o.Listen, "listen", natsserver.ListenDefault, "HOST:PORT the embedded NATS server listens on")
	fs.StringVar(&o.NATSURL, "nats", "", "use the NATS server at this URL instead of an embedded one")
	fs.StringVar(&o.Fsync, "fsync", natsserver.FsyncAlways, "embedded server's event log durability: always (fsync before every ack) or interval (every 2 minutes)")
	fs.StringVar(&o.BatchStaging, "batch-staging", natsserver.BatchStagingDefault, "where the embedded server stages the event log's atomic batches before committing them: memory (a memory file system where the machine has one; the log is still fsync'd before every ack) or disk")
	hang := fs.String("hang-after", maintenance.HangAfterDefault.String(), "a running job with no heartbeat for this long is failed as hung; workers beat at least six times per hang-after, and stop a job of theirs cut off from NATS for half of it")
	grace := fs.String("cancel-grace", maintenance.CancelGraceDefault.String(), "a cancel no worker acknowledges within this is finished by the server")
	retain := fs.String("retain", maintenance.RetainFinishedDefault.String(), "finished jobs older than this are purged")
	every := fs.String("purge-every", maintenance.PurgeEveryDefault.String(), "pause between background purges")
	idle := fs.String("queue-idle-after", workers.QueueIdleAfterDefault.String(), "remove a queue (one per job type, tag set and priority) that holds no job and has not been used for this long; the next job for it makes it again; 0 keeps every queue")
	auth := authFlags(fs, "the NATS of --nats")
	fs.IntVar(&o.Replicas, "replicas", 0, "with --nats, on a NATS cluster: make every jetjob stream with this many replicas (1-5), and raise those with fewer (one with more keeps them); 0 keeps what each has, one for a new stream")
	return func() (err error) {
		// Below a second, these turn a server into a busy loop (purges),
		// or fail every job faster than a heartbeat can cross the network.
		for _, d := range []struct {
			name, value, example string
			to                   *time.Duration
		}{
			{"hang-after", *hang, "5m", &o.HangAfter},
			{"cancel-grace", *grace, "1m", &o.CancelGrace},
			{"retain", *retain, "168h", &o.RetainFinished},
			{"purge-every", *every, "1m", &o.PurgeEvery},
		} {
			if *d.to, err = parseDurationAtLeast(d.name, d.value, time.Second, d.example); err != nil {
				return err
			}
		}
		if d, perr := time.ParseDuration(*idle); perr == nil && d == 0 {
			o.QueueIdleAfter = -1
		} else if o.QueueIdleAfter, err = parseDurationAtLeast("queue-idle-after", *idle, time.Second, "1h, or 0"); err != nil {
			return err
		}
		if o.Fsync != natsserver.FsyncAlways && o.Fsync != natsserver.FsyncInterval {
			return usageErr("--fsync %s, expected always or interval", quoteShort(o.Fsync))
		}
		if o.BatchStaging != natsserver.BatchStagingMemory && o.BatchStaging != natsserver.BatchStagingDisk {
			return usageErr("--batch-staging %s, expected memory or disk", quoteShort(o.BatchStaging))
		}
		if o.Replicas < 0 || o.Replicas > provision.ReplicasMax {
			return usageErr("--replicas %d, expected 1-%d (or 0: keep what each stream has)", o.Replicas, provision.ReplicasMax)
		}
		if o.NATSURL == "" {
			// Their variables, set for the CLI's commands, are no
			// reason to refuse a server that needs none.
			if given := auth.onCommandLine(); len(given) > 0 {
				return usageErr("%s: for the NATS of --nats only; the embedded server takes no credentials, TLS settings or JetStream domain, expected no %s",
					strings.Join(given, ", "), strings.Join(given, " or "))
			}
			if o.Replicas > 1 {
				return usageErr("--replicas %d needs --nats with a NATS cluster: the embedded server is one node", o.Replicas)
			}
			return checkEmbedded(o)
		}
		var embeddedOnly []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "data" || f.Name == "listen" || f.Name == "fsync" || f.Name == "batch-staging" {
				embeddedOnly = append(embeddedOnly, "--"+f.Name)
			}
		})
		if len(embeddedOnly) > 0 {
			return usageErr("%s: for the embedded NATS server only; with --nats the external server's own settings apply, expected no %s",
				strings.Join(embeddedOnly, ", "), strings.Join(embeddedOnly, " or "))
		}
		if err := checkNATSURL("--nats", o.NATSURL); err != nil {
			return err
		}
		o.NATSOptions, err = auth.options()
		o.JSDomain = auth.jsDomain
		return err
	}, auth
}

// stagedWhere says where the embedded server stages the log's batches.
func stagedWhere(staging string) string {
	if staging == natsserver.BatchStagingMemory {
		return "in memory"
	}
	return "on disk"
}

// checkEmbedded refuses, before anything starts, what the embedded server
// would otherwise fail on only after its start-up timeout.
func checkEmbedded(o *server.Options) error {
	host, port, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return usageErr("--listen %s, expected HOST:PORT such as 127.0.0.1:4222", quoteShort(o.Listen))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return usageErr("--listen %s: port %s, expected 0-65535", quoteShort(o.Listen), quoteShort(port))
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		if _, err := net.LookupHost(host); err != nil {
			return usageErr("--listen %s: unknown host %s, expected an IP address or a resolvable name", quoteShort(o.Listen), quoteShort(host))
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		return usageErr("--data %s: cannot create the data directory: %v", clipPath(o.DataDir), pathless(err))
	}
	// The embedded NATS writes in jetstream/ below it: one not writable (made
	// by another user) failed only after the start timeout, said as a
	// server not ready.
	for _, dir := range []string{o.DataDir, filepath.Join(o.DataDir, "jetstream")} {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			continue
		}
		probe, err := os.CreateTemp(dir, ".write-check-*")
		if err != nil {
			return usageErr("--data %s: cannot write in %s: %v", clipPath(o.DataDir), clipPath(dir), pathless(err))
		}
		_ = probe.Close()
		_ = os.Remove(probe.Name())
	}
	return nil
}

func runServer(ctx context.Context, args []string, out io.Writer) error {
	s, o, _, err := startServer(ctx, "server", "jetjob-data", args)
	if err != nil {
		return err
	}
	defer func() { _ = o.Logger.Sync() }()
	where := fmt.Sprintf("data %s, fsync %s, batches staged %s", o.DataDir, o.Fsync, stagedWhere(s.BatchStaging))
	if o.NATSURL != "" {
		where = "external NATS: its own storage and sync settings apply"
	}
	o.Logger.Info(fmt.Sprintf("jetjob server ready on %s (%s); Ctrl-C stops it", server.RedactURL(s.URL), where))
	<-ctx.Done()
	o.Logger.Info("shutting down; a second Ctrl-C stops at once")
	if err := stopServer(s); err != nil {
		return err
	}
	o.Logger.Info("stopped")
	return nil
}

// errStoppedAtOnce: a second stop signal came while the server stopped.
var errStoppedAtOnce = errors.New("stopped at once on a second signal, before every service had stopped: what they held is delivered again to the next server (as after a crash)")

// stopServer stops s, unless a second stop signal comes first: each service
// waits out the requests it has in flight, and with the NATS gone (a
// server on --nats) that took 25 s in all, while a second Ctrl-C was
// ignored. Leaving then is leaving as a crash does, which a server
// recovers from: the log is fsync'd (or the NATS's own), and what the
// services held unacknowledged is delivered again.
func stopServer(s *server.Server) error { return stopUnlessSignaled(s.Stop) }

// stopUnlessSignaled runs stop, unless a second stop signal comes first.
func stopUnlessSignaled(stop func()) error {
	again := make(chan os.Signal, 1)
	signal.Notify(again, stopSignals()...)
	defer signal.Stop(again)
	stopped := make(chan struct{})
	go func() {
		stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-again:
		return errStoppedAtOnce
	}
}

// startServer parses the flags that `jetjob server` and `jetjob dev` share
// and starts a server with them; its options carry the logger made for it.
func startServer(ctx context.Context, name, defaultDir string, args []string) (*server.Server, server.Options, *natsAuth, error) {
	fs := newFlags(name, "[--data DIR] [--listen HOST:PORT] [--fsync always|interval] [--batch-staging memory|disk] | [--nats URL [--replicas N] [--creds F | --nkey F] [--tls-ca F] [--tls-cert F --tls-key F] [--tls-first] [--js-domain D]] [--hang-after D] [--cancel-grace D] [--retain D] [--purge-every D] [--queue-idle-after D] [-v]", false)
	var o server.Options
	finish, auth := serverFlags(fs, &o, defaultDir)
	verbose := fs.Bool("v", false, "debug logging, the embedded NATS server's own notices included (its warnings and errors are always logged)")
	if err := fs.parseFlagsOnly(args); err != nil {
		return nil, o, nil, err
	}
	if err := finish(); err != nil {
		return nil, o, nil, err
	}
	// A server whose log nobody reads any more died at its next line,
	// and with it the queue's enqueuer, projector and detector.
	outliveItsLog() // for as long as the process runs: a server ends with it
	o.Logger = logging.New(*verbose)
	// Only a refusal heard while the server starts ends it: once it runs
	// it answers other clients' requests (the append relay), and a reply
	// its user may not send (a client's own inbox prefix) is that
	// client's to hear, as an unanswered request, not a reason to stop
	// serving the others.
	var started atomic.Bool
	whileStarting, logged := natsErrorHandler(ctx, o.Logger), logging.NATSErrorHandler(o.Logger)
	o.NATSErrors = func(nc *nats.Conn, sub *nats.Subscription, err error) {
		if started.Load() {
			logged(nc, sub, err)
			return
		}
		whileStarting(nc, sub, err)
	}
	s, err := server.Start(ctx, o)
	started.Store(true)
	if errors.Is(err, server.ErrNotClustered) {
		err = fmt.Errorf("%w: %w", errUsage, err)
	}
	if refused, ok := refusedConnect(o.NATSURL, err); ok {
		err = refused
	}
	if errors.Is(err, server.ErrHandshakeFirst) {
		// As the client commands say a NATS that said nothing, knowing
		// more: the start looked whether it answers a TLS handshake.
		err = fmt.Errorf("the NATS at %s said nothing after taking the connection, and answers a TLS handshake sent first: it is set to handshake_first: give --tls-first (or JETJOB_TLS_FIRST=true)",
			clip(server.RedactURL(o.NATSURL)))
	}
	if err != nil {
		_ = o.Logger.Sync()
		return nil, o, nil, err
	}
	return s, o, auth, nil
}
