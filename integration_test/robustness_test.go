package integration_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestShutdown stops a worker while Customer.io is slow and batches are in
// flight. Run must return nil within the shutdown timeout; at that moment no
// message may be held (each is acked or nakked, none left to its ack wait),
// and every acked message must be one the stand-in accepted. A second worker
// then delivers the rest: every call exactly once overall.
func TestShutdown(t *testing.T) {
	tests := []struct {
		name     string
		delay    time.Duration // how long the stand-in takes to answer
		shutdown time.Duration // RELAY_SHUTDOWN_TIMEOUT
	}{
		// In-flight sends finish within the timeout and are acked.
		{"sends finish", 300 * time.Millisecond, 5 * time.Second},
		// In-flight sends outlast the timeout and are nakked.
		{"sends cut off", 20 * time.Second, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{}) // closed: Customer.io is fast again
			var arrived atomic.Int32
			e := newEnv(t, ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
				arrived.Add(1)
				select {
				case <-release:
					return nil
				default:
					return &ciotest.Fault{Delay: tt.delay, Slow: true}
				}
			}})

			cdp, err := sink.NewCDP(sink.CDPOptions{URL: e.cio.CDPURL(), APIKey: func() string { return cdpKey },
				UserAgent: "test", Client: sink.NewHTTPClient(4, time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			opts := worker.Options{ManageStreams: true, BatchMaxCalls: 10, SendConcurrency: 2,
				FlushInterval: 20 * time.Millisecond, ShutdownTimeout: tt.shutdown, AckWait: time.Minute}
			w, err := worker.New(e.js, cdp, opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			waitFor(t, 10*time.Second, "consumer", func() bool {
				_, err := e.js.Consumer(context.Background(), "CIO", "cio-relay")
				return err == nil
			})

			r := rand.New(rand.NewPCG(5, 5))
			var msgs []published
			for i := range 100 {
				key := fmt.Sprintf("s-%03d", i)
				msgs = append(msgs, published{subject: "cio.track", body: makeCall(r, event.Track, key, 300, true), key: key, valid: true})
			}
			e.publishAll(t, msgs)
			// Both senders busy: batches are in flight.
			waitFor(t, 10*time.Second, "two requests in flight", func() bool { return arrived.Load() >= 2 })

			stopped := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run = %v, want nil after a shutdown", err)
				}
			case <-time.After(tt.shutdown + 5*time.Second):
				t.Fatalf("Run did not return within the %v shutdown timeout", tt.shutdown)
			}
			took := time.Since(stopped)

			// A nakked message stays ack-pending on the server until it is
			// redelivered, so what tells a nak from a message left to its
			// ack wait is how soon the next worker gets it (below).
			info := consumerInfo(t, e.js)
			delivered := len(e.cio.Delivered())
			acked := 100 - int(info.NumPending) - info.NumAckPending
			t.Logf("shutdown took %v: %d delivered, %d acked, %d nakked, %d never pulled",
				took.Round(time.Millisecond), delivered, acked, info.NumAckPending, info.NumPending)
			if acked != delivered {
				t.Errorf("%d acked but %d delivered: an ack without delivery, or a delivery left unacked", acked, delivered)
			}

			// The rest goes out with the next worker, each call exactly once,
			// well before the one-minute ack wait: nothing was left held.
			close(release)
			e.startWorker(t, worker.Options{FlushInterval: 20 * time.Millisecond})
			wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer wcancel()
			if err := e.cio.WaitDelivered(wctx, 100); err != nil {
				t.Fatalf("after restart: %v", err)
			}
			seen := map[string]int{}
			for _, c := range e.cio.Delivered() {
				seen[c.MessageID]++
			}
			for _, m := range msgs {
				if seen[m.key] != 1 {
					t.Errorf("%s delivered %d times", m.key, seen[m.key])
				}
			}
		})
	}
}

// TestConsumerDeletedStopsRun deletes the worker's consumer under it (an
// operator's `nats consumer rm`, Terraform recreating it): Run must return
// the failure, so the process restarts and binds again, rather than idle
// while reporting ready.
func TestConsumerDeletedStopsRun(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "k" }, UserAgent: "test",
		Client: sink.NewHTTPClient(1, time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: true, App: app, ShutdownTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })

	if err := e.js.DeleteConsumer(context.Background(), "CIO", "cio-relay"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cio-relay") {
			t.Fatalf("Run = %v, want an error naming the consumer", err)
		}
		if ok, _ := w.Ready(); ok {
			t.Error("Ready after Run failed")
		}
	case <-time.After(15 * time.Second):
		ok, why := w.Ready()
		t.Fatalf("Run still running 15s after its consumer was deleted; Ready = %v %q", ok, why)
	}
}

// TestDeadLetterNearMaxPayload: a call too large for Customer.io whose body
// is so close to NATS's payload limit that the dead-letter headers push it
// over must still end in the dead-letter stream (without its body, which
// stays in the original stream), not be nakked forever.
func TestDeadLetterNearMaxPayload(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	e.startWorker(t, worker.Options{NakDelay: 50 * time.Millisecond})
	limit := int(e.nc.MaxPayload())
	body := `{"userId":"u","event":"e","properties":{"x":"` + strings.Repeat("a", limit-200) + `"}}`
	e.publishAll(t, []published{{subject: "cio.track", body: []byte(body)}})
	waitFor(t, 20*time.Second, "the dead letter", func() bool { _, n := dlqReasons(t, e); return n == 1 })
	d := readDLQ(t, e.js)[0]
	if d.Record.Reason != "too_large" || d.Header.Get(deadletter.HeaderBodyOmitted) == "" || len(d.Data) != 0 {
		t.Errorf("dead letter reason %q, omitted %q, body %d bytes; want too_large, omitted, no body",
			d.Record.Reason, d.Header.Get(deadletter.HeaderBodyOmitted), len(d.Data))
	}
	waitSettled(t, e.js, 10*time.Second)
}

// TestSlowCustomerIOCausesNoRedelivery: Customer.io answers each batch only
// after two thirds of the ack wait, so messages queue in the worker and in
// the client's pull buffer for several ack waits. Every message must keep
// its lease: none redelivered, none sent twice.
func TestSlowCustomerIOCausesNoRedelivery(t *testing.T) {
	const ackWait = 1500 * time.Millisecond
	e := newEnv(t, ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
		return &ciotest.Fault{Delay: ackWait * 2 / 3, Slow: true}
	}})
	_, reg := e.runWorker(t, worker.Options{AckWait: ackWait, BatchMaxCalls: 50, SendConcurrency: 1,
		FlushInterval: 20 * time.Millisecond}, 0)
	const n = 300
	_, seen := e.deliverTracks(t, 9, "slow", n, 250, 10*time.Second)
	dups := extraCopies(seen)
	redelivered := metricValue(t, reg, "cio_relay_redeliveries_total")
	t.Logf("%d calls over %d slow batches: %d sent twice, %v redelivered", n, len(e.cio.Requests()), dups, redelivered)
	if dups != 0 || redelivered != 0 {
		t.Errorf("%d calls sent twice and %v messages redelivered while Customer.io was slow; want 0", dups, redelivered)
	}
}

// TestBindChecksConsumersItDoesNotManage: with RELAY_MANAGE_STREAMS=false the
// worker refuses a consumer that would lose messages (ack none, or a finite
// MaxDeliver that stops redelivery before the worker can dead-letter).
func TestBindChecksConsumersItDoesNotManage(t *testing.T) {
	tests := []struct {
		name string
		cfg  jetstream.ConsumerConfig
		want string
	}{
		{"ack none", jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, MaxDeliver: -1}, "explicit acks"},
		{"finite MaxDeliver", jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: 5}, "MaxDeliver 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, ciotest.Options{})
			ctx := context.Background()
			if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1)); err != nil {
				t.Fatal(err)
			}
			tt.cfg.Durable = "cio-relay"
			if _, err := e.js.CreateConsumer(ctx, "CIO", tt.cfg); err != nil {
				t.Fatal(err)
			}
			w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: false})
			if err != nil {
				t.Fatal(err)
			}
			runCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := w.Run(runCtx); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// TestShutdownWhileNATSDown: SIGTERM while NATS is unreachable must still end
// within the shutdown timeout (Kubernetes kills the pod soon after).
func TestShutdownWhileNATSDown(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: true, ShutdownTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	e.nats.Stop(t)
	waitFor(t, 10*time.Second, "the client to notice", func() bool { return !e.nc.IsConnected() })

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		t.Logf("Run returned %v after SIGTERM with NATS down (shutdown timeout 1s)", time.Since(start).Round(time.Millisecond))
	case <-time.After(4 * time.Second):
		t.Fatal("Run still running 4s after SIGTERM with NATS down; shutdown timeout is 1s")
	}
}
