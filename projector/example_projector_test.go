package projector_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/natsserver"
	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

// The projector keeps one view per job; a Reader gets and lists them.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "jetjob-example")
	defer os.RemoveAll(dir)
	srv, _ := natsserver.Start(natsserver.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	defer srv.Shutdown()
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)
	lg, _ := events.Open(ctx, js, events.Config{})
	defer lg.Close()
	hb, _ := events.OpenHeartbeats(ctx, js)
	m, _ := statemachine.New(lg, statemachine.Config{})

	proj, _ := projector.New(js, lg, hb, projector.Config{})
	_ = proj.Start(ctx)
	defer proj.Stop()
	reader, _ := projector.NewReader(ctx, js)
	changes, _ := reader.Watch(ctx, projector.Filter{Type: "build"})

	old, _, _ := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Meta: map[string]string{"template_version": "v1"}})
	current, _, _ := m.Submit(ctx, statemachine.SubmitParams{Type: "build", Meta: map[string]string{"template_version": "v2"}})
	_, _ = m.Cancel(ctx, old.ID, "outdated template")
	// Every change comes through the watch, in order per job.
	var v projector.View
	for seenCurrent := false; !seenCurrent || v.State != statemachine.StateCanceled; {
		change := <-changes
		seenCurrent = seenCurrent || change.ID == current.ID
		if change.ID == old.ID {
			v = change
		}
	}

	got, _ := reader.Get(ctx, old.ID)
	fmt.Println(v.ID == old.ID, got.State, got.CancelReason, got.Version == v.Version)
	page, _ := reader.List(ctx, projector.Filter{MetaNot: map[string]string{"template_version": "v1"}})
	fmt.Println(len(page.Views), page.Views[0].State)
	// Output:
	// true canceled outdated template true
	// 1 pending
}
