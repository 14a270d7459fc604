package integration_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
	"github.com/cio-relay/cio-relay/worker"
)

// TestFullPacerLeasesWhatWaits is #11 item 2's own reproduction: the App
// API answers slowly (3 s, above the 2 s ack wait; a 1 s ack wait left the
// race detector on a loaded machine too little time to renew 1,300 leases
// within it), so the triggers one
// replica has taken pile up in its pacer until it is full (1,000), and the
// ones it has received beyond that wait for room, leased or not. An
// operator has set the broadcast consumer's MaxAckPending above the
// pacer's bound, which the replica adopts, so the server keeps handing
// them out. A second replica, started once the first is full, takes what
// the first leaves in the stream, and would take any trigger whose ack
// wait ran out. Every trigger must be sent exactly once and none
// redelivered.
func TestFullPacerLeasesWhatWaits(t *testing.T) {
	const (
		triggers = 1300
		ackWait  = 2 * time.Second
	)
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API == ciotest.APIApp {
			return &ciotest.Fault{Delay: 3 * time.Second, Slow: true}
		}
		return nil
	}})
	ctx := context.Background()
	if _, err := e.js.CreateStream(ctx, worker.StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateConsumer(ctx, "CIO", jetstream.ConsumerConfig{
		Durable: "cio-relay-broadcast", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait,
		MaxDeliver: -1, MaxAckPending: 4000, FilterSubjects: []string{worker.SubjectBroadcast},
	}); err != nil {
		t.Fatal(err)
	}
	opts := triggerOptions(appClient(t, e))
	opts.AckWait = ackWait
	opts.ShutdownTimeout = 10 * time.Second
	_, first := runWorkerOn(t, e.js, opts)

	var msgs []published
	for i := range triggers { // a broadcast each: none waits for another's turn
		msgs = append(msgs, published{subject: worker.SubjectBroadcast,
			body: fmt.Appendf(nil, `{"broadcast_id":%d,"ids":["u-%d"],"data":{"n":%d}}`, 1+i, i, i)})
	}
	e.publishAll(t, msgs)
	waitFor(t, 20*time.Second, "the first replica's pacer to fill", func() bool { return e.cio.Stats().Requests >= 1000 })
	_, second := runWorkerOn(t, e.js, opts)

	waitFor(t, 60*time.Second, "every trigger sent", func() bool { return len(e.cio.Triggers()) >= triggers })
	waitBroadcastSettled(t, e, 30*time.Second)
	sent := triggersByN(t, e)
	twice := 0
	for i := range triggers {
		switch n := sent[i]; {
		case n == 0:
			t.Errorf("trigger %d never sent", i)
		case n > 1:
			twice++
		}
	}
	redelivered := metricValue(t, first, "cio_relay_redeliveries_total") + metricValue(t, second, "cio_relay_redeliveries_total")
	dead := streamMsgs(t, e.js, "CIO_DLQ")
	t.Logf("%d triggers behind a full pacer, App API at 3s, ack wait %v: %d requests, %d sent more than once, %v redelivered, %d dead letters",
		triggers, ackWait, e.cio.Stats().Requests, twice, redelivered, dead)
	if twice != 0 || redelivered != 0 || dead != 0 {
		t.Errorf("%d triggers sent more than once, %v redelivered, %d dead-lettered; want none", twice, redelivered, dead)
	}
}

// blockingApp is a Triggerer whose requests are answered only when the
// test ends (with a 503, so nothing is recorded as sent), and that counts
// the requests it holds.
type blockingApp struct {
	release chan struct{}
	held    atomic.Int64
}

func (a *blockingApp) Trigger(ctx context.Context, _ int64, _ []byte) (int64, error) {
	a.held.Add(1)
	select {
	case <-a.release:
	case <-ctx.Done():
	}
	return 0, &sink.StatusError{API: sink.APIApp, Status: 503}
}

// TestFullPacerHoldsLittleOutsideItsBound: large triggers (900 KB each)
// arrive while the App API answers nothing, so the pacer fills to its
// memory bound (trigger.DefaultMaxPendingBytes, counting every copy a
// trigger costs). What the replica has received beyond the pacer (waiting
// in its intake's queue or at its reader) counts against no bound, so it
// must be a few triggers at most: the broadcast intake received 100 ahead,
// 90 MB of bodies above a 64 MB bound (the Deployment's GOMEMLIMIT is 200
// MiB).
func TestFullPacerHoldsLittleOutsideItsBound(t *testing.T) {
	const (
		triggers = 60
		outside  = 3 // allowed beyond the pacer: two in the intake's queue, one at the reader
	)
	app := &blockingApp{release: make(chan struct{})}
	e := newEnv(t, ciotest.Options{})
	opts := fastOptions()
	opts.App = app
	opts.BroadcastInterval = 10 * time.Millisecond
	opts.TriggerTimeout = time.Minute
	opts.ShutdownTimeout = time.Second
	_, reg := e.runWorker(t, opts, 0)
	t.Cleanup(func() { close(app.release) }) // runs before the worker's stop

	body := func(i int) []byte {
		var b strings.Builder
		fmt.Fprintf(&b, `{"broadcast_id":%d,"ids":[`, 1+i)
		for j := range 10_000 {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"t%02d-%05d-%s"`, i, j, strings.Repeat("x", 76))
		}
		b.WriteString("]}")
		return []byte(b.String())
	}
	req, err := trigger.Parse(body(0))
	if err != nil {
		t.Fatal(err)
	}
	// The pacer refuses a trigger once it holds its bound: it admits the
	// first that reaches it.
	admitted := 0
	for bytes := 0; bytes < trigger.DefaultMaxPendingBytes; bytes += req.MemoryCost() {
		admitted++
	}
	var msgs []published
	for i := range triggers {
		msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: body(i)})
	}
	e.publishAll(t, msgs)

	ackPending := func() int {
		c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-broadcast")
		if err != nil {
			return 0
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return 0
		}
		return info.NumAckPending
	}
	waitFor(t, 30*time.Second, "the pacer to fill", func() bool { return ackPending() >= admitted })
	// Received beyond the pacer comes at once once it is full (the intake
	// pulls whenever its queue has room): give it a second to show.
	held := ackPending()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && held <= admitted+outside; held = ackPending() {
		time.Sleep(20 * time.Millisecond) // polling the server: it has no event for this
	}
	beyond := held - admitted
	t.Logf("%d triggers of %d KB (memory cost %d KB each), App API not answering: the pacer admits %d (%d MB bound), the replica holds %d: %d beyond the bound (%d MB of bodies); %d requests in flight, %v redelivered",
		triggers, len(msgs[0].body)>>10, req.MemoryCost()>>10, admitted, trigger.DefaultMaxPendingBytes>>20, held, beyond,
		beyond*len(msgs[0].body)>>20, app.held.Load(), metricValue(t, reg, "cio_relay_redeliveries_total"))
	if beyond > outside {
		t.Errorf("the replica holds %d triggers (%d MB) beyond its full pacer, counted against no bound; want at most %d",
			beyond, beyond*len(msgs[0].body)>>20, outside)
	}
}
