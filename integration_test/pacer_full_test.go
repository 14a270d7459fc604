package integration_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/ciotest"
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
