package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// serverOptions configure a jetjob server process.
type serverOptions struct {
	dataDir        string
	listen         string
	natsURL        string
	fsync          string
	hangAfter      time.Duration
	cancelGrace    time.Duration
	retainFinished time.Duration
	purgeEvery     time.Duration
	logger         *zap.Logger
}

// jetjobServer is a running server: NATS (embedded or external), the event
// log, the projector, the enqueuer and timers, and the maintenance services.
type jetjobServer struct {
	embedded *natsserver.Server
	url      string
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *events.Log
	hb       *events.Heartbeats
	machine  *statemachine.Machine
	reader   *projector.Reader
	logs     *workers.Logs
	stops    []func()
}

func startServer(ctx context.Context, o serverOptions) (_ *jetjobServer, err error) {
	s := &jetjobServer{}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if o.natsURL == "" {
		srv, err := natsserver.Start(natsserver.Config{DataDir: o.dataDir, Listen: o.listen, Fsync: o.fsync})
		if err != nil {
			return s, err
		}
		s.embedded = srv
		s.url = srv.ClientURL()
		s.stops = append(s.stops, srv.Shutdown)
	} else {
		s.url = o.natsURL
	}
	s.nc, err = nats.Connect(s.url, nats.Name("jetjob-server"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		return s, fmt.Errorf("connect to NATS at %s: %w", s.url, err)
	}
	s.stops = append(s.stops, s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		return s, err
	}
	if s.log, err = events.Open(ctx, s.js, events.Config{Logger: o.logger}); err != nil {
		return s, err
	}
	s.stops = append(s.stops, s.log.Close)
	if s.hb, err = events.OpenHeartbeats(ctx, s.js); err != nil {
		return s, err
	}
	if s.machine, err = statemachine.New(s.log, statemachine.Config{Logger: o.logger}); err != nil {
		return s, err
	}
	if err := workers.EnsureTopology(ctx, s.js); err != nil {
		return s, err
	}
	if s.logs, err = workers.AttachLogs(ctx, s.js); err != nil {
		return s, err
	}
	proj, err := projector.New(s.js, s.log, s.hb, projector.Config{Logger: o.logger})
	if err != nil {
		return s, err
	}
	if err := proj.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, proj.Stop)
	if s.reader, err = projector.NewReader(ctx, s.js); err != nil {
		return s, err
	}
	enq, err := workers.NewEnqueuer(s.js, s.machine, workers.EnqueuerConfig{Logger: o.logger, Lister: s.listQueued})
	if err != nil {
		return s, err
	}
	if err := enq.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, enq.Stop)

	serverID := serverID()
	detLead, err := maintenance.NewLeadership(ctx, s.js, "detector", serverID, 0)
	if err != nil {
		return s, err
	}
	det, err := maintenance.NewDetector(ctx, s.reader, s.machine, s.hb, s.logs, detLead, maintenance.DetectorConfig{
		HangAfter: o.hangAfter, CancelGrace: o.cancelGrace, ServerID: serverID, Logger: o.logger})
	if err != nil {
		return s, err
	}
	if err := det.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, det.Stop)
	purgeLead, err := maintenance.NewLeadership(ctx, s.js, "purger", serverID, 0)
	if err != nil {
		return s, err
	}
	purger, err := maintenance.NewPurger(s.reader, s.machine, s.hb, s.logs, purgeLead, maintenance.PurgerConfig{
		OlderThan: o.retainFinished, Every: o.purgeEvery, ServerID: serverID, Logger: o.logger})
	if err != nil {
		return s, err
	}
	if err := purger.Start(ctx); err != nil {
		return s, err
	}
	s.stops = append(s.stops, purger.Stop)
	return s, nil
}

// stop stops everything in the reverse order of starting. Safe to call twice.
func (s *jetjobServer) stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
	s.stops = nil
}

func serverID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])
}

// listQueued lists pending or scheduled jobs from the views, for the
// enqueuer's repair of lost queue messages and timers.
func (s *jetjobServer) listQueued(ctx context.Context, states []statemachine.State) ([]workers.QueuedJob, error) {
	f := projector.Filter{States: states, Limit: 10_000}
	var out []workers.QueuedJob
	for {
		page, err := s.reader.List(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, v := range page.Views {
			out = append(out, workers.QueuedJob{ID: v.ID, Type: v.Type, Tags: v.Tags, Priority: v.Priority,
				State: v.State, RunAt: v.RunAt, UpdatedAt: v.UpdatedAt})
		}
		if page.Next == "" {
			return out, nil
		}
		f.After = page.Next
	}
}
