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

// Ceiling figures the e2e figures are compared with.
const (
	ceilingAppendsBatched = "appends_batched"
)

// ceilingScenario measures raw JetStream on this machine: appends with an
// expected last subject sequence to one subject per job (one at a time,
// pipelined, in atomic batches of 100) and fetch+ack on a work-queue consumer.
func (r *Runner) ceilingScenario(ctx context.Context) error {
	n := max(r.cfg.Jobs/4, 500)
	for _, fsync := range r.cfg.Fsyncs {
		err := r.withServer(ctx, fsync, server.Options{}, func(s *server.Server) error {
			js, nc := s.JS, s.NC
			// A stream of its own, laid out as the event log.
			cfg := events.StreamConfig("BENCH_CEILING", "bench.ceiling.")
			if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
				return err
			}
			msg := func(i int, batch string, bseq int, commit bool) *nats.Msg {
				m := nats.NewMsg("bench.ceiling." + batch + strconv.Itoa(i))
				m.Data = []byte(`{"v":1,"id":"x","job":"j","type":"job.submitted","data":{"type":"t","max_attempts":3}}`)
				m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
				if bseq > 0 {
					m.Header.Set("Nats-Batch-Id", batch)
					m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(bseq))
					if commit {
						m.Header.Set("Nats-Batch-Commit", "1")
					}
				}
				return m
			}
			// One at a time.
			start := time.Now()
			for i := 0; i < n; i++ {
				if _, err := js.PublishMsg(ctx, msg(i, "one", 0, false)); err != nil {
					return err
				}
			}
			r.addCeiling(fsync, "appends_one_at_a_time", float64(n)/time.Since(start).Seconds())
			// Pipelined: many in flight, each its own ack (and its own fsync).
			start = time.Now()
			for lo := 0; lo < n; lo += 1000 {
				var futures []jetstream.PubAckFuture
				for i := lo; i < min(lo+1000, n); i++ {
					f, err := js.PublishMsgAsync(msg(i, "pipe", 0, false))
					if err != nil {
						return err
					}
					futures = append(futures, f)
				}
				for _, f := range futures {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						return err
					}
				}
			}
			r.addCeiling(fsync, "appends_pipelined", float64(n)/time.Since(start).Seconds())
			// Atomic batches of 100: one commit, one fsync, per batch.
			start = time.Now()
			const size = 100
			batches := n / size
			for b := 0; b < batches; b++ {
				id := "b" + strconv.Itoa(b) + "x"
				for i := 1; i <= size; i++ {
					m := msg(i, id, i, i == size)
					if i < size {
						if err := nc.PublishMsg(m); err != nil {
							return err
						}
						continue
					}
					resp, err := nc.RequestMsg(m, 5*time.Second)
					if err != nil {
						return err
					}
					var ack struct {
						Error *struct {
							Description string `json:"description"`
						} `json:"error"`
					}
					if err := json.Unmarshal(resp.Data, &ack); err != nil || ack.Error != nil {
						return fmt.Errorf("atomic batch: %v %+v", err, ack.Error)
					}
				}
			}
			r.addCeiling(fsync, ceilingAppendsBatched, float64(batches*size)/time.Since(start).Seconds())
			return r.fetchAck(ctx, js, fsync, n)
		})
		if err != nil {
			return err
		}
	}
	r.rss(ScenarioCeiling)
	return nil
}

func (r *Runner) addCeiling(fsync, metric string, v float64) {
	r.ceiling[fsync+"/"+metric] = v
	r.add(Figure{Scenario: ScenarioCeiling, Fsync: fsync, Metric: metric + "_per_s", Value: v, Unit: "msgs/s"})
}

// fetchAck measures a work-queue consumer draining a backlog.
func (r *Runner) fetchAck(ctx context.Context, js jetstream.JetStream, fsync string, n int) error {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_WQ", Subjects: []string{"bench.wq.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage})
	if err != nil {
		return err
	}
	for lo := 0; lo < n; lo += 1000 {
		var futures []jetstream.PubAckFuture
		for i := lo; i < min(lo+1000, n); i++ {
			f, err := js.PublishAsync("bench.wq.x", []byte("job"))
			if err != nil {
				return err
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			<-f.Ok()
		}
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return err
	}
	start := time.Now()
	got := 0
	for got < n {
		b, err := cons.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		for m := range b.Messages() {
			if err := m.Ack(); err != nil {
				return err
			}
			got++
		}
		if b.Error() != nil && got < n {
			return b.Error()
		}
	}
	r.addCeiling(fsync, "workqueue_fetch_ack", float64(n)/time.Since(start).Seconds())
	return nil
}
