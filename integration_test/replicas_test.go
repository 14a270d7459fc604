package integration_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestReplicasWithDifferentAckWaitsSendNothingTwice runs two replicas
// against one stream, the second started with a different RELAY_ACK_WAIT
// (a rolling deploy that changes it), while Customer.io is slow and
// triggers wait for their broadcast's turn, so every message is held for
// longer than the shorter ack wait. Whichever replica starts second must
// not rewrite the shared consumers' ack wait under the first (whose leases
// would then come too late): no CDP call and no trigger may reach the
// stand-in twice. The second has another RELAY_MAX_ACK_PENDING too: the
// batch consumer keeps the first's, and the broadcast consumer its ack
// wait.
func TestReplicasWithDifferentAckWaitsSendNothingTwice(t *testing.T) {
	tests := []struct {
		name          string
		first, second time.Duration
	}{
		{"shorter second", 6 * time.Second, time.Second},
		{"longer second", time.Second, 6 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := time.Now()
			scaled := func() time.Time { return base.Add(time.Since(base) * speedup) }
			e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaled, Fault: func(r *ciotest.Request) *ciotest.Fault {
				if r.API == ciotest.APICDP {
					return &ciotest.Fault{Delay: 2500 * time.Millisecond, Slow: true}
				}
				return nil
			}})
			start := func(ackWait time.Duration, maxAckPending int) {
				app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" },
					UserAgent: "test", Client: sink.NewHTTPClient(2, 10*time.Second)})
				if err != nil {
					t.Fatal(err)
				}
				opts := fastOptions()
				opts.AckWait, opts.MaxAckPending = ackWait, maxAckPending
				opts.App = app
				opts.BroadcastInterval = trigger10s / speedup
				opts.BatchMaxCalls = 25
				opts.SendConcurrency = 2
				opts.ShutdownTimeout = 10 * time.Second
				e.runWorker(t, opts, 10*time.Second)
			}
			start(tt.first, worker.DefaultMaxAckPending)
			start(tt.second, worker.DefaultMaxAckPending/4)

			r := rand.New(rand.NewPCG(11, 11))
			var msgs []published
			for i := range 200 {
				key := fmt.Sprintf("ack-%03d", i)
				msgs = append(msgs, published{subject: "cio.track", body: makeCall(r, event.Track, key, 300, true), key: key, valid: true})
			}
			const triggers = 6
			for i := range triggers {
				// Own data each: never coalesced, so each waits its turn.
				body := fmt.Sprintf(`{"broadcast_id":7,"ids":["u-%d"],"data":{"n":%d}}`, i, i)
				msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: []byte(body), key: fmt.Sprint(i)})
			}
			e.publishAll(t, msgs)

			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if err := e.cio.WaitDelivered(ctx, 200); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 60*time.Second, "every trigger sent", func() bool { return len(e.cio.Triggers()) >= triggers })
			waitSettled(t, e.js, 30*time.Second)
			waitFor(t, 30*time.Second, "the broadcast consumer to settle", func() bool {
				c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-broadcast")
				if err != nil {
					return false
				}
				info, err := c.Info(context.Background())
				return err == nil && info.NumPending == 0 && info.NumAckPending == 0
			})

			seen := map[string]int{}
			for _, c := range e.cio.Delivered() {
				seen[c.MessageID]++
			}
			dups := 0
			for _, n := range seen {
				dups += n - 1
			}
			sent := triggersByN(t, e)
			twice := 0
			for _, n := range sent {
				if n > 1 {
					twice++
				}
			}
			info := consumerInfo(t, e.js)
			t.Logf("replicas at %v then %v (consumer now at %v): %d CDP calls delivered twice or more (%d extra), %d of %d triggers sent more than once %v",
				tt.first, tt.second, info.Config.AckWait, countOver(seen, 1), dups, twice, triggers, sent)
			if dups != 0 || twice != 0 {
				t.Errorf("%d duplicate CDP deliveries and %d of %d triggers sent more than once; want none", dups, twice, triggers)
			}
			if info.Config.AckWait != tt.first || info.Config.MaxAckPending != worker.DefaultMaxAckPending {
				t.Errorf("consumer ack wait %v, max ack pending %d after the second replica started; want the first's %v and %d, kept",
					info.Config.AckWait, info.Config.MaxAckPending, tt.first, worker.DefaultMaxAckPending)
			}
			bc, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-broadcast")
			if err != nil {
				t.Fatal(err)
			}
			if got := bc.CachedInfo().Config.AckWait; got != tt.first {
				t.Errorf("broadcast consumer ack wait %v after the second replica started; want the first's %v, kept", got, tt.first)
			}
			checkExactlyOnce(t, msgs[:200], seen)
		})
	}
}

// TestOperatorShortensAckWaitLeasesFollow: an operator cuts the shared
// consumer's ack wait from 6 s to 1 s under a running worker (`nats
// consumer edit`). Once the worker has sampled the change, its leases must
// follow the new ack wait: calls held for 2.5 s by a slow Customer.io are
// neither redelivered nor sent twice.
func TestOperatorShortensAckWaitLeasesFollow(t *testing.T) {
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		return &ciotest.Fault{Delay: 2500 * time.Millisecond, Slow: true}
	}})
	noticed := make(chan struct{})
	var once sync.Once
	opts := fastOptions()
	opts.AckWait, opts.BatchMaxCalls, opts.SendConcurrency = 6*time.Second, 20, 2
	opts.ShutdownTimeout = 10 * time.Second
	opts.Logger = slog.New(&awaitLog{msg: "consumer's ack wait changed", seen: func() { once.Do(func() { close(noticed) }) }})
	_, reg := e.runWorker(t, opts, 10*time.Second)

	cfg := consumerInfo(t, e.js).Config
	cfg.AckWait = time.Second
	if _, err := e.js.UpdateConsumer(context.Background(), "CIO", cfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-noticed:
	case <-time.After(15 * time.Second):
		t.Fatal("the worker did not notice the consumer's new ack wait within 15s (it samples every 5s)")
	}

	msgs, seen := e.deliverTracks(t, 13, "op", 120, 300, 20*time.Second)
	redelivered := metricValue(t, reg, "cio_relay_redeliveries_total")
	t.Logf("ack wait cut to 1s under the worker: %v redelivered, %d calls sent more than once", redelivered, countOver(seen, 1))
	if redelivered != 0 {
		t.Errorf("%v messages redelivered after the ack wait was shortened; want none", redelivered)
	}
	checkExactlyOnce(t, msgs, seen)
}

// awaitLog is a slog handler that calls seen for each record whose message
// starts with msg, and discards everything.
type awaitLog struct {
	msg  string
	seen func()
}

func (h *awaitLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *awaitLog) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.msg) {
		h.seen()
	}
	return nil
}
func (h *awaitLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *awaitLog) WithGroup(string) slog.Handler      { return h }
