// Package server runs a jetjob server in-process: NATS (embedded, or an
// external URL), the event log, the projector, the enqueuer and timers, and
// the maintenance services, so that the CLI, dev mode and benchmarks start
// the same thing.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// errCodeReplicasNotSupported: "replicas > 1 not supported in non-clustered
// mode".
const errCodeReplicasNotSupported jetstream.ErrorCode = 10074

func notClustered(replicas int, url string) error {
	return fmt.Errorf("%w: asked for %d, but the NATS at %s is one server (a stream there has one replica); "+
		"leave out --replicas, or point --nats at a cluster", ErrNotClustered, replicas, RedactURL(url))
}

// Options configure a server.
type Options struct {
	// DataDir of the embedded NATS server.
	DataDir string
	// Listen is the embedded server's HOST:PORT (port 0: any free port).
	Listen string
	// NATSURL, when set, replaces the embedded server.
	NATSURL string
	// NATSOptions are added to the connection to the NATS at NATSURL: its
	// credentials and TLS (nats.UserCredentials, nats.RootCAs...). The
	// embedded server takes none.
	NATSOptions []nats.Option
	// JSDomain is the JetStream domain of the NATS at NATSURL, whose API
	// is then $JS.<domain>.API., as a NATS reached through a leaf node
	// serves it; empty for the plain API. The embedded server has none.
	JSDomain string
	// Fsync is natsserver.FsyncAlways (default) or natsserver.FsyncInterval.
	Fsync string
	// BatchStaging is where the embedded server stages the event log's
	// atomic batches: natsserver.BatchStagingMemory (default, where the
	// machine has a memory file system) or natsserver.BatchStagingDisk.
	BatchStaging   string
	HangAfter      time.Duration
	CancelGrace    time.Duration
	RetainFinished time.Duration
	PurgeEvery     time.Duration
	// QueueIdleAfter: see maintenance.PurgerConfig; negative keeps every
	// queue.
	QueueIdleAfter time.Duration
	// DetectEvery overrides the detector's pause between passes.
	DetectEvery time.Duration
	// NoMaintenance starts no hang detector and no purger, for a process
	// that borrows another deployment's NATS (the bench's --server): with
	// settings not that deployment's, its detector would publish its own
	// hang-after to that deployment's workers and judge their jobs by it,
	// and its purger would delete finished jobs the deployment retains,
	// whenever they took the lead (the deployment's servers down or
	// restarting).
	NoMaintenance bool
	// Replicas of every stream, on an external NATS cluster
	// (provision.WithReplicas): at least this many, a stream with more
	// keeping its own; 0 keeps what each stream has, and gives a new one
	// a single replica. An embedded server takes only 0 or 1.
	Replicas int
	Logger   *zap.Logger
	// NATSErrors, when set, hears the NATS client's asynchronous errors
	// instead of the logger (a command that ends on a refused subject).
	NATSErrors nats.ErrHandler
	// firstAnswered, for tests, is called once the first request of the
	// start was answered.
	firstAnswered func()
}

// Server is a running jetjob server.
type Server struct {
	embedded  *natsserver.Server
	URL       string
	NC        *nats.Conn
	JS        jetstream.JetStream
	Log       *events.Log
	Heartbeat *events.Heartbeats
	Machine   *statemachine.Machine
	Reader    *projector.Reader
	Logs      *workers.Logs
	Projector *projector.Projector
	// BatchStaging is where the embedded server stages the event log's
	// atomic batches (natsserver.BatchStagingMemory or
	// natsserver.BatchStagingDisk); empty on an external NATS.
	BatchStaging string
	stops        []func()
}

// Start starts everything; Stop stops it.
func Start(ctx context.Context, o Options) (_ *Server, err error) {
	s := &Server{}
	// A NATS that refuses the connection (credentials, TLS) refuses it
	// again on every try: a refusal heard while starting closes the
	// connection, which ends the start at once, and is its error; the
	// start waited 30 s (TLS; 2 s for credentials) to say that the NATS
	// was not reachable. So does a NATS set to handshake_first, to a
	// start without nats.TLSHandshakeFirst (ErrHandshakeFirst). Once
	// started, a refusal on a reconnect is tried again, as a NATS down is
	// (a certificate being renewed, a password rotated): see
	// KeepReconnecting.
	var starting atomic.Bool
	var refused atomic.Pointer[error]
	starting.Store(true)
	defer func() {
		starting.Store(false)
		if err != nil && s.NC != nil && ctx.Err() == nil {
			for _, cause := range []error{loadErr(&refused), s.NC.LastError()} {
				if Refused(cause) || errors.Is(cause, ErrHandshakeFirst) {
					err = fmt.Errorf("connect to NATS at %s: %w", RedactURL(s.URL), cause)
					break
				}
			}
		}
		if err != nil {
			s.Stop()
		}
	}()
	if o.Replicas < 0 || o.Replicas > provision.ReplicasMax || o.NATSURL == "" && o.Replicas > 1 {
		return s, fmt.Errorf("%w: %d replicas, expected 0-%d, and at most 1 on the embedded server", ErrInvalidOptions, o.Replicas, provision.ReplicasMax)
	}
	if o.NATSURL == "" && o.JSDomain != "" {
		return s, fmt.Errorf("%w: JetStream domain %q without a NATS URL: the embedded server has no domain", ErrInvalidOptions, o.JSDomain)
	}
	if o.NATSURL == "" {
		srv, err := natsserver.Start(natsserver.Config{DataDir: o.DataDir, Listen: o.Listen, Fsync: o.Fsync, BatchStaging: o.BatchStaging, Logger: o.Logger})
		if err != nil {
			return s, err
		}
		s.embedded = srv
		s.URL = srv.ClientURL()
		s.stops = append(s.stops, srv.Shutdown)
	} else {
		s.URL = o.NATSURL
	}
	asyncErrors := o.NATSErrors
	if asyncErrors == nil {
		asyncErrors = logging.NATSErrorHandler(o.Logger)
	}
	connect := []nats.Option{nats.Name("jetjob-server"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.ErrorHandler(asyncErrors), KeepReconnecting(o.Logger, s.URL),
		// nats.go tells a first connect that failed, refused or not, as a
		// failed reconnect.
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			if !starting.Load() {
				return
			}
			if !Refused(err) {
				// A NATS set to handshake_first says nothing to a
				// connection that does not start with a TLS handshake,
				// on every try, and the start waited 30 s to say that
				// it was not reachable. A NATS that said nothing may as
				// well have been too loaded to answer, which is worth
				// trying again: hence the look at what it answers.
				if !SaidNothing(err) || nc.Opts.TLSHandshakeFirst || !handshakeFirst(nc.Servers(), nc.Opts.Timeout) {
					return
				}
				err = fmt.Errorf("%w (%w)", ErrHandshakeFirst, err)
			}
			refused.CompareAndSwap(nil, &err)
			nc.Close()
		})}
	if o.NATSURL != "" {
		connect = append(connect, o.NATSOptions...)
	}
	s.NC, err = nats.Connect(s.URL, connect...)
	if err != nil {
		return s, fmt.Errorf("connect to NATS at %s: %w", RedactURL(s.URL), err)
	}
	s.stops = append(s.stops, s.NC.Close)
	var js jetstream.JetStream
	if o.JSDomain != "" {
		js, err = jetstream.NewWithDomain(s.NC, o.JSDomain, jetstream.WithPublishAsyncMaxPending(1<<16))
	} else {
		js, err = jetstream.New(s.NC, jetstream.WithPublishAsyncMaxPending(1<<16))
	}
	if err != nil {
		return s, err
	}
	s.JS = provision.WithReplicas(js, o.Replicas)
	// Checked before any stream is changed: a deployment moving to
	// replicas must not be left half moved, and is told everything at once.
	ours := func(name string) bool { return strings.HasPrefix(name, "JJ_") || strings.HasPrefix(name, "KV_jj_") }
	// A NATS set to handshake_first that came up after the first try
	// (started with jetjob): its silence on the later tries is no error
	// nats.go reports to the handler above, and the start waited out its
	// 30 s to say that the NATS was not reachable. Looked at only when a
	// request of the start failed with the connection down, so that no
	// ordinary start pays for it; a NATS down answers no handshake, at
	// once.
	handshakeFirstLater := func(err error) error {
		if err == nil || !provision.Transient(err) || s.NC.IsConnected() || s.NC.IsClosed() || s.NC.Opts.TLSHandshakeFirst ||
			!handshakeFirst(s.NC.Servers(), s.NC.Opts.Timeout) {
			return err
		}
		// Not wrapped: a request timed out is tried again.
		err = fmt.Errorf("%w (%v)", ErrHandshakeFirst, err)
		refused.CompareAndSwap(nil, &err)
		return err
	}
	// The first request: a server started while its cluster elects a
	// leader waits for it.
	var stuck []string
	err = provision.UntilAnswered(ctx, provision.ElectionWaitDefault, 5*time.Second, func(ctx context.Context) (err error) {
		stuck, err = provision.Unreplicable(ctx, js, o.Replicas, ours)
		return handshakeFirstLater(err)
	})
	if err != nil {
		if !s.NC.IsConnected() {
			return s, fmt.Errorf("connect to NATS at %s: not reachable (is it running?): %w", RedactURL(s.URL), err)
		}
		if provision.Transient(err) {
			// What a cluster without a meta leader does: it answers nothing.
			return s, fmt.Errorf("JetStream at %s did not answer within %s: it needs JetStream enabled and, on a cluster, most of its servers up to elect a leader: %w",
				RedactURL(s.URL), provision.ElectionWaitDefault, err)
		}
		return s, err
	}
	// Checked before the stuck streams: deleting them, as that error
	// advises, cannot help a NATS that is one server. A connection lost
	// meanwhile also has no cluster name, hence the second look; the
	// server's own refusal to make a stream is the backstop.
	if o.Replicas > 1 && s.NC.ConnectedClusterName() == "" && s.NC.IsConnected() {
		return s, notClustered(o.Replicas, s.URL)
	}
	if len(stuck) > 0 {
		return s, fmt.Errorf("%w: %d replicas: %s persist asynchronously (as made for one node), which a replicated stream cannot, "+
			"and NATS cannot change that in place; delete them (nats stream rm NAME) and start again, "+
			"and the server makes them anew, rebuilding what they held from the event log, but for JJ_LOGS (job output), which is lost",
			ErrInvalidOptions, o.Replicas, strings.Join(stuck, ", "))
	}
	if o.firstAnswered != nil {
		o.firstAnswered()
	}
	// Every later request of the start waits out an election too: the
	// first one answered says only that a leader was there then.
	ask := s.untilAnswered(o.Logger, handshakeFirstLater)
	if err = ask(ctx, func(ctx context.Context) (err error) {
		s.Log, err = events.Open(ctx, s.JS, logConfig(o))
		return err
	}); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeReplicasNotSupported {
			return s, notClustered(o.Replicas, s.URL)
		}
		if !s.NC.IsConnected() {
			// Retrying the first connect hides why setup timed out.
			return s, fmt.Errorf("connect to NATS at %s: not reachable (is it running?): %w", RedactURL(s.URL), err)
		}
		return s, err
	}
	s.stops = append(s.stops, s.Log.Close)
	if s.embedded != nil {
		s.BatchStaging = natsserver.BatchStagingMemory
		logger := logging.OrNop(o.Logger, "server")
		if err := s.StageBatchesInMemory(s.Log.Stream()); errors.Is(err, natsserver.ErrStagedInMemoryLater) {
			logger.Info("the event log's atomic batches are staged in memory soon", zap.Error(err))
		} else if err != nil {
			s.BatchStaging = natsserver.BatchStagingDisk
			logger.Info("the event log's atomic batches are staged on disk", zap.Error(err))
		}
	} else {
		// What the NATS fsyncs is unknown here; an embedded server's record of it is not.
		if err := ask(ctx, s.Log.Follow); err != nil {
			return s, err
		}
	}
	stopRelay, err := s.Log.ServeRelay()
	if err != nil {
		return s, fmt.Errorf("serve the append relay: %w", err)
	}
	s.stops = append(s.stops, stopRelay)
	if err = ask(ctx, func(ctx context.Context) (err error) {
		s.Heartbeat, err = events.OpenHeartbeats(ctx, s.JS)
		return err
	}); err != nil {
		return s, err
	}
	if s.Machine, err = statemachine.New(s.Log, statemachine.Config{Logger: o.Logger}); err != nil {
		return s, err
	}
	if err = ask(ctx, func(ctx context.Context) (err error) {
		if err := workers.EnsureTopology(ctx, s.JS); err != nil {
			return err
		}
		s.Logs, err = workers.AttachLogs(ctx, s.JS)
		return err
	}); err != nil {
		return s, err
	}
	if s.embedded != nil {
		redeliverHeld(ctx, s.JS, o.Logger)
	}
	s.Projector, err = projector.New(s.JS, s.Log, s.Heartbeat, projector.Config{Logger: o.Logger})
	if err != nil {
		return s, err
	}
	if err := ask(ctx, s.Projector.Start); err != nil {
		return s, err
	}
	s.stops = append(s.stops, s.Projector.Stop)
	if err = ask(ctx, func(ctx context.Context) (err error) {
		s.Reader, err = projector.NewReader(ctx, s.JS)
		return err
	}); err != nil {
		return s, err
	}
	if s.embedded != nil && s.embedded.NeedsRepair() {
		if err := s.repairViews(o.Logger); err != nil {
			return s, err
		}
	}
	enq, err := workers.NewEnqueuer(s.JS, s.Machine, workers.EnqueuerConfig{Logger: o.Logger, Lister: s.listQueued})
	if err != nil {
		return s, err
	}
	if err := ask(ctx, enq.Start); err != nil {
		return s, err
	}
	s.stops = append(s.stops, enq.Stop)
	if o.NoMaintenance {
		return s, nil
	}

	serverID := ID()
	var detLead, purgeLead *maintenance.Leadership
	var leftovers *workers.Leftovers
	if err = ask(ctx, func(ctx context.Context) (err error) {
		if detLead, err = maintenance.NewLeadership(ctx, s.JS, "detector", serverID, 0); err != nil {
			return err
		}
		if purgeLead, err = maintenance.NewLeadership(ctx, s.JS, "purger", serverID, 0); err != nil {
			return err
		}
		leftovers, err = workers.AttachLeftovers(ctx, s.JS)
		return err
	}); err != nil {
		return s, err
	}
	det, err := maintenance.NewDetector(s.Reader, s.Machine, s.Heartbeat, s.Logs, detLead, maintenance.DetectorConfig{
		HangAfter: o.HangAfter, CancelGrace: o.CancelGrace, Every: o.DetectEvery, Logger: o.Logger})
	if err != nil {
		return s, err
	}
	if err := det.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, det.Stop)
	purger, err := maintenance.NewPurger(s.Reader, s.Machine, s.Heartbeat, s.Logs, leftovers, purgeLead, maintenance.PurgerConfig{
		OlderThan: o.RetainFinished, Every: o.PurgeEvery, QueueIdleAfter: o.QueueIdleAfter, Logger: o.Logger})
	if err != nil {
		return s, err
	}
	if err := purger.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, purger.Stop)
	return s, nil
}

// handshakeFirst says whether a NATS of servers answers a TLS handshake
// sent before it said anything, as one set to handshake_first does; any
// other sends its INFO first, in plain text. It only looks: the handshake
// trusts any certificate, and nothing is sent over it.
func handshakeFirst(servers []string, timeout time.Duration) bool {
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "nats" && u.Scheme != "tls" || u.Hostname() == "" {
			continue // a websocket starts with HTTP
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "4222")
		}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout},
			Config: &tls.Config{InsecureSkipVerify: true, ServerName: u.Hostname()}} //nolint:gosec // only looks whether TLS answers
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		conn, err := d.DialContext(ctx, "tcp", host)
		cancel()
		if err == nil {
			_ = conn.Close()
			return true
		}
		// An alert is TLS too: a NATS asking for a client certificate.
		var alert tls.AlertError
		var remote *net.OpError
		if errors.As(err, &alert) || errors.As(err, &remote) && remote.Op == "remote error" {
			return true
		}
	}
	return false
}

// loadErr reads an error stored once, or nil.
func loadErr(p *atomic.Pointer[error]) error {
	if e := p.Load(); e != nil {
		return *e
	}
	return nil
}

// startTry bounds each try of a request of the start on an external NATS:
// a request sent to a leader that has just died is never answered.
const startTry = 5 * time.Second

// untilAnswered returns how the start makes its requests: on an external
// NATS, asked again while its cluster elects a leader, and said so in the
// log; on the embedded server, which has no election, once. look is given
// each try's error, and returns the error to go on with.
func (s *Server) untilAnswered(logger *zap.Logger, look func(error) error) func(context.Context, func(context.Context) error) error {
	if s.embedded != nil {
		return func(ctx context.Context, fn func(context.Context) error) error { return fn(ctx) }
	}
	logger = logging.OrNop(logger, "server")
	return func(ctx context.Context, fn func(context.Context) error) error {
		return provision.UntilAnswered(ctx, provision.ElectionWaitDefault, startTry, func(ctx context.Context) error {
			err := look(fn(ctx))
			switch {
			case !provision.Transient(err):
			case s.NC != nil && !s.NC.IsConnected():
				logger.Info("NATS not reachable yet; trying again (is it running?)", zap.String("nats", RedactURL(s.URL)))
			default:
				logger.Info("JetStream did not answer; asking again (a NATS cluster electing a leader?)", zap.Error(err))
			}
			return err
		})
	}
}

// repairViews checks every view against the event log in the background,
// as 'jetjob admin rebuild' does, after the last server on the data
// directory died, or failed to write to it: nats-server may have brought back views removed with
// their purged jobs, at an older state, and a view write it had not yet
// flushed may be lost though its event was acknowledged. Jobs are served
// meanwhile, and a stop before it is done leaves it to the next start.
func (s *Server) repairViews(logger *zap.Logger) error {
	repair, err := projector.New(s.JS, s.Log, s.Heartbeat, projector.Config{Logger: logger})
	if err != nil {
		return err
	}
	logger = logging.OrNop(logger, "repair")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		logger.Info(s.embedded.RepairReason() + ": checking every view against the event log")
		stats, err := repair.Rebuild(ctx)
		if err != nil {
			if ctx.Err() == nil {
				logger.Warn("check of the views against the event log failed; the next start tries again", zap.Error(err))
			}
			return
		}
		s.embedded.Repaired()
		logger.Info("views checked against the event log", zap.Int("jobs", stats.Jobs),
			zap.Int("written", stats.Written), zap.Int("removed", stats.Removed), zap.Float64("seconds", stats.Seconds))
	}()
	s.stops = append(s.stops, func() {
		cancel()
		<-done
	})
	return nil
}

// redeliverHeld makes the consumers of jetjob's streams deliver again, at
// once, what they had handed out and not seen acknowledged when their NATS
// stopped: the processes they handed it to were cut off with it, and each
// message would otherwise wait out its consumer's ack wait (30 s) before
// anything projected or enqueued it, leaving views behind the log and jobs
// unstarted for that long after a restart. Each consumer starts again after
// its ack floor. A process that reconnected to this NATS before the reset
// (a worker, another server) gets what it held again too, and what was
// acknowledged beyond the floor comes again: projecting or enqueuing an
// event twice, or a second acquire, changes nothing. It is an optimisation,
// so a failure is logged and the start goes on.
func redeliverHeld(ctx context.Context, js jetstream.JetStream, logger *zap.Logger) {
	logger = logging.OrNop(logger, "restart")
	names := js.StreamNames(ctx)
	for stream := range names.Name() {
		if !strings.HasPrefix(stream, "JJ_") {
			continue
		}
		st, err := js.Stream(ctx, stream)
		if err != nil {
			logger.Warn("deliver again what the last run held", zap.String("stream", stream), zap.Error(err))
			continue
		}
		list := st.ListConsumers(ctx)
		for info := range list.Info() {
			if info.NumAckPending == 0 {
				continue
			}
			if _, err := js.ResetConsumer(ctx, stream, info.Name); err != nil {
				logger.Warn("deliver again what the last run held", zap.String("consumer", info.Name), zap.Error(err))
				continue
			}
			logger.Info("delivering again what the last run held", zap.String("consumer", info.Name),
				zap.Int("messages", info.NumAckPending))
		}
		if err := list.Err(); err != nil {
			logger.Warn("deliver again what the last run held", zap.String("stream", stream), zap.Error(err))
		}
	}
	if err := names.Err(); err != nil {
		logger.Warn("deliver again what the last run held", zap.Error(err))
	}
}

// stop stops everything in the reverse order of starting. Safe to call twice.
func (s *Server) Stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
	s.stops = nil
}

func ID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])
}

// listQueued lists pending or scheduled jobs from the views, for the
// enqueuer's repair of lost queue messages and timers.
func (s *Server) listQueued(ctx context.Context, states []statemachine.State) ([]workers.QueuedJob, error) {
	// One listing: a List reads every view whatever its page, so pages of
	// it would read the bucket once per page (a backlog of 1,000,000
	// pending jobs, 100 times a pass).
	page, err := s.Reader.List(ctx, projector.Filter{States: states})
	if err != nil {
		return nil, err
	}
	out := make([]workers.QueuedJob, 0, len(page.Views))
	for _, v := range page.Views {
		out = append(out, workers.QueuedJob{ID: v.ID, Type: v.Type, Tags: v.Tags, Priority: v.Priority,
			State: v.State, RunAt: v.RunAt, UpdatedAt: v.UpdatedAt, Version: v.Version})
	}
	return out, nil
}

// StageBatchesInMemory has the embedded server stage a stream's atomic
// batches in memory (natsserver.Server.StageBatchesInMemory); the server
// stages the event log's so. On an external NATS it is the NATS's to decide.
func (s *Server) StageBatchesInMemory(stream string) error {
	if s.embedded == nil {
		return fmt.Errorf("%w: an external NATS stages them as it does", natsserver.ErrStagedOnDisk)
	}
	return s.embedded.StageBatchesInMemory(stream)
}

// logConfig coalesces appends into atomic batches only where the server
// fsyncs every append: a batch saves fsyncs but costs the server a staging
// store, so without per-append fsync, appends streamed one by one are faster.
// The embedded server knows which, and records it for the workers and
// clients (events.Log.Follow); on another NATS, the log batches unless a
// record says otherwise.
func logConfig(o Options) events.Config {
	cfg := events.Config{Logger: o.Logger, RecordAppends: o.NATSURL == ""}
	if o.Fsync == natsserver.FsyncInterval {
		cfg.MinBatch = events.MaxBatchLimit + 1
		cfg.Flushers = 1
	}
	return cfg
}

// RedactURL is a NATS URL (or several, comma-separated) fit for a message:
// a URL's user information (a password, or a token given as the user) is
// replaced.
func RedactURL(servers string) string {
	parts := strings.Split(servers, ",")
	for i, s := range parts {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil && u.User != nil {
			u.User = url.User("REDACTED")
			parts[i] = u.String()
		} else if strings.Contains(s, "@") {
			parts[i] = "REDACTED@" + s[strings.LastIndex(s, "@")+1:]
		}
	}
	return strings.Join(parts, ",")
}
