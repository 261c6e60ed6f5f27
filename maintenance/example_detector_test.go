package maintenance_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/maintenance"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// The hang detector fails the attempt of a running job whose worker went
// silent (it died holding the job, or lost its connection), so that the job
// is retried while it has attempts left. It decides on the projector's
// views and the workers' heartbeats, and acts only while it holds its
// leadership: of the servers sharing a NATS, one detector acts at a time.
func ExampleNewDetector() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the watch
	js, stop := embeddedServer()
	defer stop()

	// What a server runs besides: the log, the views and the job logs.
	lg, err := events.Open(ctx, js, events.Config{})
	check(err)
	defer lg.Close()
	hb, err := events.OpenHeartbeats(ctx, js)
	check(err)
	m, err := statemachine.New(lg, statemachine.Config{})
	check(err)
	proj, err := projector.New(js, lg, hb, projector.Config{})
	check(err)
	check(proj.Start(ctx))
	defer proj.Stop()
	reader, err := projector.NewReader(ctx, js)
	check(err)
	check(workers.EnsureTopology(ctx, js))
	logs, err := workers.AttachLogs(ctx, js)
	check(err)

	lead, err := maintenance.NewLeadership(ctx, js, "detector", "server-1", 0)
	check(err)
	// A hang-after this short is for the example: workers pace their
	// heartbeats by the one the detector publishes.
	det, err := maintenance.NewDetector(reader, m, hb, logs, lead, maintenance.DetectorConfig{HangAfter: maintenance.HangAfterMin})
	check(err)
	check(det.Start(ctx))
	defer det.Stop()

	// A worker takes a job and is never heard from again.
	job, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "report", MaxAttempts: 1})
	check(err)
	_, err = m.Acquire(ctx, job.ID, "worker-that-died")
	check(err)

	changes, err := reader.Watch(ctx, projector.Filter{Type: "report"})
	check(err)
	for v := range changes {
		if v.State.Finished() {
			fmt.Println(v.State, v.ErrorCode, "after", v.Attempt, "attempt")
			break
		}
	}
	// The job's log says why, before the attempt was failed.
	lines, err := logs.Read(ctx, job.ID)
	check(err)
	why, _, _ := strings.Cut(lines[0].Line, ":")
	fmt.Println(lines[0].Stream+":", why)
	// Output:
	// failed hung after 1 attempt
	// system: attempt 1 on worker worker-that-died detected as hung
}

// embeddedServer starts a NATS server with JetStream in a temporary
// directory, embedded with nats-server's own package: any NATS with
// JetStream serves jetjob, and `jetjob dev` runs one for a shell.
func embeddedServer() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "jetjob-example")
	check(err)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true})
	check(err)
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("the embedded NATS did not start")
	}
	nc, err := nats.Connect(srv.ClientURL())
	check(err)
	js, err := jetstream.New(nc)
	check(err)
	return js, func() {
		nc.Close()
		srv.Shutdown()
		_ = os.RemoveAll(dir)
	}
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
