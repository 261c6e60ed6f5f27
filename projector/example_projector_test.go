package projector_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

// A projector keeps one view per job in a KV bucket; a Reader, which any
// process connected to the same NATS can open, gets a job's view or lists
// the views that match a filter, a page at a time.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the watch
	js, stop := embeddedServer()
	defer stop()
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

	// Views follow the log asynchronously: a dashboard watches them change.
	changes, err := reader.Watch(ctx, projector.Filter{Type: "build"})
	check(err)

	submit := func(version string) statemachine.Job {
		j, _, err := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Meta: map[string]string{"template_version": version}})
		check(err)
		return j
	}
	old, current, next := submit("v1"), submit("v2"), submit("v3")
	canceled, err := m.Cancel(ctx, old.ID, "outdated template")
	check(err)

	// Wait until each job's view has its last event: a view's version is
	// the stream sequence of that event.
	want := map[string]uint64{old.ID: canceled.Version, current.ID: current.Version, next.ID: next.Version}
	for len(want) > 0 {
		v := <-changes
		if want[v.ID] == v.Version {
			delete(want, v.ID)
		}
	}
	v, err := reader.Get(ctx, old.ID)
	check(err)
	fmt.Println("get:", v.State, v.CancelReason)

	page, err := reader.List(ctx, projector.Filter{
		States:  []statemachine.State{statemachine.StatePending},
		MetaNot: map[string]string{"template_version": "v1"},
		Limit:   1,
	})
	check(err)
	fmt.Println("page 1:", page.Views[0].ID == current.ID, page.Views[0].Meta["template_version"], page.Next == current.ID)
	page, err = reader.List(ctx, projector.Filter{
		States:  []statemachine.State{statemachine.StatePending},
		MetaNot: map[string]string{"template_version": "v1"},
		Limit:   1,
		After:   page.Next,
	})
	check(err)
	fmt.Println("page 2:", page.Views[0].ID == next.ID, page.Views[0].Meta["template_version"], page.Next == "")

	_, err = reader.Get(ctx, "01a20000-0000-7000-8000-000000000000")
	fmt.Println("unknown job:", errors.Is(err, events.ErrNotFound))
	// Output:
	// get: canceled outdated template
	// page 1: true v2 true
	// page 2: true v3 true
	// unknown job: true
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
