package statemachine_test

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
	"github.com/jetjob/jetjob/statemachine"
)

// A payload must be within Config.MaxPayload and its event must fit in one
// message of the NATS server the log is connected to: on a NATS with the
// default max_payload of 1 MiB, about 780,000 bytes of payload fit (it is
// stored base64-encoded), whatever MaxPayload says. Either refusal matches
// ErrPayloadTooLarge, before anything is sent, and says what fits.
func ExampleMachine_Validate() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "jetjob-example")
	defer os.RemoveAll(dir)
	// A NATS with its default max_payload (1 MiB), embedded with
	// nats-server's own package.
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true})
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("the embedded NATS did not start")
	}
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)
	lg, _ := events.Open(ctx, js, events.Config{})
	defer lg.Close()
	m, _ := statemachine.New(lg, statemachine.Config{})

	fmt.Println("MaxPayload:", m.MaxPayload())
	p := statemachine.SubmitParams{Type: "upload", Payload: make([]byte, 900_000)}
	err := m.Validate(&p)
	fmt.Println("900,000 bytes refused:", errors.Is(err, statemachine.ErrPayloadTooLarge), errors.Is(err, statemachine.ErrInvalid))
	_, _, err = m.Submit(ctx, p)
	fmt.Println("and by Submit:", errors.Is(err, statemachine.ErrPayloadTooLarge))
	p = statemachine.SubmitParams{Type: "upload", Payload: make([]byte, 700_000)}
	_, _, err = m.Submit(ctx, p)
	fmt.Println("700,000 bytes:", err)
	// Output:
	// MaxPayload: 1048576
	// 900,000 bytes refused: true true
	// and by Submit: true
	// 700,000 bytes: <nil>
}
