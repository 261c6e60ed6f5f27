package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/server"
)

// Ceiling figures, per durability setting, that other figures are compared with.
const (
	CeilingOneAtATime = "appends_one_at_a_time"
	CeilingPipelined  = "appends_pipelined"
	CeilingBatched    = "appends_batched"
	CeilingBatched1k  = "appends_batched_1000"
	CeilingFetchAck   = "workqueue_fetch_ack"
	// CeilingFetchAckAsync is fetch+ack on a work-queue stream that flushes
	// asynchronously, as jetjob's own queue does: with fsync always, an ack
	// (a delete in a work-queue stream) is otherwise fsync'd too.
	CeilingFetchAckAsync = "workqueue_async_fetch_ack"
)

// The ceiling's streams are named for the run (BENCH_CEILING_<run>), so
// that on a user's NATS it makes, and deletes, none but its own: a stream
// there named BENCH_WQ was deleted with its messages.
const (
	ceilingStream   = "BENCH_CEILING_"
	ceilingPrefix   = "bench.ceiling."
	workQueueStream = "BENCH_WQ_"
	// pipelineWindow bounds the appends in flight, as the log's own
	// pipelining does.
	pipelineWindow = 1000
)

// An event the size of a no-op job's submit event.
var ceilingEvent = []byte(`{"v":1,"id":"01a1e5b4-8f3c-7d2e-9a6b-3c4d5e6f7a8b","job":"01a1e5b4-8f3c-7d2e-9a6b-3c4d5e6f7a8c","type":"job.submitted","time":"2026-11-22T17:00:00.000000000Z","data":{"type":"noop","priority":0,"max_attempts":3}}`)

// ceilingScenario measures raw JetStream on this machine, now: appends with an
// expected last subject sequence to one new subject per job (one at a time,
// pipelined, in atomic batches of 100 and of 1,000) and fetch+ack on a
// work-queue consumer, for each durability setting.
func (r *Runner) ceilingScenario(ctx context.Context) error {
	n := max(r.cfg.Jobs/4, 1000)
	for _, fsync := range r.cfg.Fsyncs {
		r.progress("ceiling, fsync %s, %d messages per figure", fsync, n)
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			defer func() {
				// Leave nothing behind on an external server.
				_ = s.JS.DeleteStream(context.WithoutCancel(ctx), ceilingStream+r.run)
			}()
			return r.ceilingAppends(ctx, s, fsync, n)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) ceilingAppends(ctx context.Context, s *server.Server, fsync string, n int) error {
	// A stream of its own, configured as the event log, its batches staged
	// as the log's are.
	stream, prefix := ceilingStream+r.run, ceilingPrefix+r.run+"."
	if _, err := s.JS.CreateStream(ctx, events.StreamConfig(stream, prefix)); err != nil {
		return fmt.Errorf("create ceiling stream: %w", err)
	}
	staging := "staged in memory, as the log's"
	if err := s.StageBatchesInMemory(stream); err != nil {
		staging = "staged on disk, as the log's"
		if r.cfg.NATSURL != "" {
			staging = "staged as the NATS server stages them"
		}
	}
	msg := func(run string, i int) *nats.Msg {
		m := nats.NewMsg(prefix + run + "." + strconv.Itoa(i))
		m.Data = ceilingEvent
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		return m
	}

	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := s.JS.PublishMsg(ctx, msg("one", i)); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	r.addCeiling(fsync, CeilingOneAtATime, float64(n)/time.Since(start).Seconds(), "")

	start = time.Now()
	if err := publishWindowed(s.JS, n, func(i int) *nats.Msg { return msg("pipe", i) }); err != nil {
		return err
	}
	r.addCeiling(fsync, CeilingPipelined, float64(n)/time.Since(start).Seconds(), fmt.Sprintf("%d in flight", pipelineWindow))

	for _, size := range []int{100, 1000} {
		batches := max(n/size, 3)
		start = time.Now()
		for b := 0; b < batches; b++ {
			run := fmt.Sprintf("b%d-%d", size, b)
			batch := make([]*nats.Msg, size)
			for i := range batch {
				batch[i] = msg(run, i)
			}
			if err := publishAtomic(s.NC, run, batch); err != nil {
				return err
			}
		}
		metric := CeilingBatched
		if size == 1000 {
			metric = CeilingBatched1k
		}
		r.addCeiling(fsync, metric, float64(batches*size)/time.Since(start).Seconds(), fmt.Sprintf("atomic batches of %d, one at a time, %s", size, staging))
	}
	if err := r.ceilingFetchAck(ctx, s.JS, fsync, n, false); err != nil {
		return err
	}
	return r.ceilingFetchAck(ctx, s.JS, fsync, n, true)
}

// publishWindowed publishes n messages asynchronously, at most
// pipelineWindow unacknowledged.
func publishWindowed(js jetstream.JetStream, n int, msg func(i int) *nats.Msg) error {
	for lo := 0; lo < n; lo += pipelineWindow {
		futures := make([]jetstream.PubAckFuture, 0, pipelineWindow)
		for i := lo; i < min(lo+pipelineWindow, n); i++ {
			f, err := js.PublishMsgAsync(msg(i))
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("publish: %w", err)
			case <-time.After(30 * time.Second):
				return fmt.Errorf("publish: no ack within 30s")
			}
		}
	}
	return nil
}

// publishAtomic commits msgs as one JetStream atomic batch.
func publishAtomic(nc *nats.Conn, id string, msgs []*nats.Msg) error {
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return fmt.Errorf("publish batch message: %w", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		resp, err := nc.RequestMsg(m, 30*time.Second)
		if err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
		var ack struct {
			Count int `json:"count"`
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp.Data, &ack); err != nil {
			return fmt.Errorf("decode batch ack: %w", err)
		}
		if ack.Error != nil {
			return fmt.Errorf("commit batch: %s", ack.Error.Description)
		}
		if ack.Count != len(msgs) {
			return fmt.Errorf("commit batch: %d of %d committed", ack.Count, len(msgs))
		}
	}
	return nil
}

func (r *Runner) addCeiling(fsync, metric string, v float64, note string) {
	r.ceiling[fsync+"/"+metric] = v
	r.add(Figure{Scenario: ScenarioCeiling, Fsync: fsync, Metric: metric + "_per_s", Value: v, Unit: "msgs/s", Note: note})
}

// ceilingFetchAck measures one consumer draining a work-queue stream, 100
// messages per fetch, each acknowledged.
func (r *Runner) ceilingFetchAck(ctx context.Context, js jetstream.JetStream, fsync string, n int, async bool) error {
	subject := "bench.wq." + r.run + "."
	cfg := jetstream.StreamConfig{Name: workQueueStream + r.run, Subjects: []string{subject + ">"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}
	metric := CeilingFetchAck
	if async {
		cfg.PersistMode, metric = jetstream.AsyncPersistMode, CeilingFetchAckAsync
	}
	st, err := js.CreateStream(ctx, cfg)
	if err != nil {
		return fmt.Errorf("create work-queue stream: %w", err)
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), cfg.Name) }()
	err = publishWindowed(js, n, func(i int) *nats.Msg {
		m := nats.NewMsg(subject + strconv.Itoa(i))
		m.Data = ceilingEvent
		return m
	})
	if err != nil {
		return err
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	start := time.Now()
	for got := 0; got < n; {
		// No more than remain: a fetch asking for more would wait out its
		// max wait for messages that never come.
		b, err := cons.Fetch(min(100, n-got), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		fetched := 0
		for m := range b.Messages() {
			if err := m.Ack(); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
			fetched++
		}
		if fetched == 0 {
			return fmt.Errorf("fetch: %d of %d messages: %v", got, n, b.Error())
		}
		got += fetched
	}
	// Acks are sent without waiting for a reply: the clock stops once the
	// server has processed them all, which a work queue shows by removing
	// every acknowledged message.
	deadline := time.Now().Add(r.cfg.Stall)
	for {
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("work-queue stream: %w", err)
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d acks not processed after %s", info.State.Msgs, n, r.cfg.Stall)
		}
		time.Sleep(time.Millisecond)
	}
	r.addCeiling(fsync, metric, float64(n)/time.Since(start).Seconds(), "fetches of 100, until the server processed every ack")
	return nil
}
