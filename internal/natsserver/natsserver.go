// Package natsserver runs an embedded nats-server with JetStream file storage
// for one jetjob process.
package natsserver

import (
	"cmp"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Fsync policies for the JetStream store.
const (
	// FsyncAlways flushes every write to disk before the publish is acknowledged.
	FsyncAlways = "always"
	// FsyncInterval flushes on nats-server's own timer (every two minutes).
	FsyncInterval = "interval"
)

// Defaults for Config.
const (
	ListenDefault       = "127.0.0.1:4222"
	FsyncDefault        = FsyncAlways
	StartTimeoutDefault = 10 * time.Second
)

// Config configures the embedded server.
type Config struct {
	// DataDir holds the JetStream store. Required.
	DataDir string
	// Listen is HOST:PORT for clients; port 0 picks a free port. Default ListenDefault.
	Listen string
	// Fsync is FsyncAlways (default) or FsyncInterval.
	Fsync string
	// StartTimeout bounds how long Start waits for the server to accept clients.
	StartTimeout time.Duration
	// Logger receives the server's own log, named "nats-server": warnings
	// and errors, and its notices and debug lines at debug level. Nil means
	// no logging.
	Logger *zap.Logger
	// BatchStaging is where StageBatchesInMemory may stage atomic batches:
	// BatchStagingMemory (default) or BatchStagingDisk.
	BatchStaging string
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("%w: data dir is empty", ErrInvalidConfig)
	}
	if c.Listen == "" {
		c.Listen = ListenDefault
	}
	if c.Fsync == "" {
		c.Fsync = FsyncDefault
	}
	if c.Fsync != FsyncAlways && c.Fsync != FsyncInterval {
		return fmt.Errorf("%w: fsync %q, expected %q or %q", ErrInvalidConfig, c.Fsync, FsyncAlways, FsyncInterval)
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = StartTimeoutDefault
	}
	if c.BatchStaging == "" {
		c.BatchStaging = BatchStagingDefault
	}
	if c.BatchStaging != BatchStagingMemory && c.BatchStaging != BatchStagingDisk {
		return fmt.Errorf("%w: batch staging %q, expected %q or %q", ErrInvalidConfig, c.BatchStaging, BatchStagingMemory, BatchStagingDisk)
	}
	return nil
}

// Server is a running embedded nats-server.
type Server struct {
	ns           *server.Server
	unlock       func(mark string)
	dataDir      string
	batchStaging string

	alarm *storageAlarm
	mu    sync.Mutex
	// repairWhy says what the last server on the data directory left to
	// repair; "" for nothing. writeFailedBefore: it failed a write.
	repairWhy         string
	writeFailedBefore bool
	staging           []staged // removed at Shutdown
	restaging         chan struct{}
	onDisk            []string // streams staging a batch on disk, to stage in memory
}

// Start starts the server and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: listen %q, expected HOST:PORT: %v", ErrInvalidConfig, cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: listen port %q, expected 0-65535", ErrInvalidConfig, portStr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else {
		// nats-server only logs a listen failure; check first so the caller
		// gets the reason.
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %s: %w (another server there? --listen HOST:PORT picks another address)", cfg.Listen, err)
		}
		_ = l.Close()
	}
	unlock, last, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		Host:      host,
		Port:      port,
		JetStream: true,
		StoreDir:  cfg.DataDir,
		NoSigs:    true,
		NoLog:     true, // logs to cfg.Logger instead, below
		// Large enough for a batch of 1,000 job payloads at the default limit.
		MaxPayload: 8 << 20,
		// Workers may keep many pull requests in flight.
		MaxPending: 64 << 20,
		// The cache of subject matches serves a subject published again;
		// most of jetjob's are published once (a job's events and view, a
		// queue message, an ack, a reply), so each missed, was added, and
		// pruned the cache past 1,024 subjects. Without it, an e2e run
		// took 4-9% less CPU (docs/BENCHMARKS.md, sixteenth pass).
		NoSublistCache: true,
	}
	if cfg.Fsync == FsyncAlways {
		opts.SyncAlways = true
	}
	// Read before nats-server completes the batches a dead server left
	// staged, and unlinks their directories.
	before := stagedBefore(cfg.DataDir)
	ns, err := server.NewServer(opts)
	if err != nil {
		unlock(cmp.Or(last, stoppedMark)) // nothing ran: the mark stays as it was
		return nil, fmt.Errorf("create nats server: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	alarm := &storageAlarm{logger: logger.Named("storage"), said: map[storageTrouble]time.Time{}}
	l := logger.Named("nats-server")
	ns.SetLoggerV2(serverLog{l: l, alarm: alarm}, l.Core().Enabled(zapcore.DebugLevel), false, false)
	go ns.Start()
	if !ns.ReadyForConnections(cfg.StartTimeout) {
		ns.Shutdown()
		unlock(cmp.Or(last, stoppedMark))
		return nil, fmt.Errorf("nats server on %s not ready after %s", cfg.Listen, cfg.StartTimeout)
	}
	// Absolute: a staging directory names the link to it.
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		dataDir = cfg.DataDir
	}
	var repairWhy string
	switch last {
	case "", stoppedMark:
	case writeFailedMark:
		repairWhy = "the last server on this data directory failed to write to it (a full disk?)"
	default:
		repairWhy = "the last server on this data directory died instead of stopping"
	}
	srv := &Server{ns: ns, alarm: alarm, repairWhy: repairWhy, writeFailedBefore: last == writeFailedMark, dataDir: dataDir, batchStaging: cfg.BatchStaging,
		staging: removeStaging(before, false)}
	var once sync.Once
	srv.unlock = func(mark string) { once.Do(func() { unlock(mark) }) }
	return srv, nil
}

// NeedsRepair reports that the server that last used the data directory
// died instead of shutting down, and what that leaves behind has not been
// repaired since; or that a write to the data directory failed in this run
// (a full disk), which may lose what nats-server acknowledged as a death
// does, and is for the next start to repair. nats-server records the removals its limits make (a
// key's older revisions in a bucket that keeps one) only in a snapshot of
// its state, written every two minutes or so and when it shuts down, so a
// key removed for good shortly before such a death can come back with an
// older value.
func (s *Server) NeedsRepair() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.repairWhy != "" || s.alarm.writeFailed.Load()
}

// RepairReason says why the data directory needs repair, in words for a
// log line; "" when it needs none.
func (s *Server) RepairReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.repairWhy == "" && s.alarm.writeFailed.Load() {
		return "a write to this data directory failed"
	}
	return s.repairWhy
}

// Repaired records that what a death left behind is repaired. Until then a
// Shutdown leaves the data directory marked as needing repair, so that a
// repair cut short by a stop is done again by the next server.
func (s *Server) Repaired() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repairWhy = ""
}

// ClientURL is the URL clients connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Shutdown stops the server and waits for it to finish. Safe to call twice.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.mu.Lock()
	if s.restaging != nil {
		close(s.restaging)
		s.restaging = nil
	}
	s.staging = removeStaging(s.staging, true)
	s.mu.Unlock()
	s.unlock(s.lockMark())
}

// lockMark is what Shutdown leaves in the lock file for the next start.
func (s *Server) lockMark() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.alarm.writeFailed.Load() || (s.repairWhy != "" && s.writeFailedBefore):
		return writeFailedMark
	case s.repairWhy != "":
		return "" // the process ID: a death, yet to repair
	}
	return stoppedMark
}
