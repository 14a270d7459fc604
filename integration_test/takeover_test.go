package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/worker"
)

// TestTakeoverIsNotMaskedByACopyTheOldHolderAcked: the replica that
// delivered (A, played here by hand with a plain pull client) holds a
// person's calls 0 and 1; call 0 comes back (its lease lapsed while NATS
// was away, say) and is delivered to the replica taking over (B, a
// worker), with call 2. Then A's request for call 0 is answered and A acks
// it — a copy B holds. B holds 2 messages and the consumer counts 2
// pending (1 at A, 2 at B): counting alone, B would take that for
// "everything pending is mine" and send call 2 while call 1 is still in
// A's hands. Calls must be first accepted 0, 1, 2.
func TestTakeoverIsNotMaskedByACopyTheOldHolderAcked(t *testing.T) {
	e := newEnv(t, flakyCustomerIO(1, 0, 0))
	e.createStream(t)
	ctx := context.Background()
	opts := orderedOptions(true)
	opts.AckWait = 2 * time.Second
	cfg := jetstream.ConsumerConfig{
		Durable: "cio-relay", AckPolicy: jetstream.AckExplicitPolicy, AckWait: opts.AckWait, MaxDeliver: -1,
		MaxAckPending: worker.DefaultMaxAckPending, FilterSubjects: worker.FilterSubjects(), DeliverPolicy: jetstream.DeliverAllPolicy,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{worker.PriorityGroup}, PinnedTTL: worker.PinnedTTL,
	}
	cons, err := e.js.CreateConsumer(ctx, "CIO", cfg)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]published, 3)
	for i := range msgs {
		msgs[i] = published{subject: "cio.track", body: fmt.Appendf(nil, `{"userId":"p0","event":"step","properties":{"seq":%d}}`, i),
			key: fmt.Sprintf("p0/%d", i), valid: true}
	}
	e.publishAll(t, msgs)

	// A: pinned, holds calls 0 and 1.
	batch, err := cons.Fetch(2, jetstream.FetchPriorityGroup(worker.PriorityGroup), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var atA []jetstream.Msg
	for m := range batch.Messages() {
		atA = append(atA, m)
	}
	if len(atA) != 2 {
		t.Fatalf("A received %d messages, want 2 (%v)", len(atA), batch.Error())
	}
	holder := leaseHolder(t, e, "cio-relay")
	// A keeps call 1 leased while it lives.
	alive, kill := context.WithCancel(ctx)
	go func() {
		tick := time.NewTicker(opts.AckWait / 4)
		defer tick.Stop()
		for {
			select {
			case <-alive.Done():
				return
			case <-tick.C:
				_ = atA[1].InProgress()
			}
		}
	}()
	defer kill()
	// Call 0 comes back, and the pin is free for B.
	if err := atA[0].Nak(); err != nil {
		t.Fatal(err)
	}
	stream, err := e.js.Stream(ctx, "CIO")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.UnpinConsumer(ctx, "cio-relay", worker.PriorityGroup); err != nil {
		t.Fatal(err)
	}

	rec := &logRecorder{}
	opts.Logger = rec.logger()
	e.runWorker(t, opts, 0)
	// B has call 0's second copy and call 2 — or, knowing A delivers,
	// waits for it before pulling anything.
	waitFor(t, 10*time.Second, "B to receive calls 0 and 2, or to wait for A", func() bool {
		if holder.waitedFor(rec) {
			return true
		}
		info, err := cons.Info(ctx)
		return err == nil && info.Delivered.Consumer >= 4
	})
	// A's request for call 0 is answered: it acks its copy. Then it dies
	// (a kill: call 1 is left to its ack wait).
	e.sendAsAnotherReplica(t, []byte(`{"type":"track","userId":"p0","event":"step","properties":{"seq":0},"messageId":"replica-A-1"}`))
	// (By hand: nats.go refuses to ack a message it has nakked.)
	if _, err := e.nc.Request(atA[0].Reply(), []byte("+ACK"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	kill()
	holder.died()

	waitSettled(t, e.js, 30*time.Second)
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	if rep.missing != 0 || rep.violations != 0 {
		logKeyRequests(t, e.cio.Requests(), "p0", nil)
		t.Fatalf("%d calls missing, %d out of order (%s)", rep.missing, rep.violations, rep.example)
	}
}

// sendAsAnotherReplica delivers call to the stand-in as a replica other
// than the test's workers would: one batch request of it alone.
func (e *env) sendAsAnotherReplica(t *testing.T, call []byte) {
	t.Helper()
	body := append(append([]byte(`{"batch":[`), call...), "]}"...)
	req, err := http.NewRequest(http.MethodPost, e.cio.CDPURL()+"/batch", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(cdpKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the other replica's request: %s", resp.Status)
	}
}

// otherHolder is the ordered delivery lease, held by the replica the test
// plays: taken before the worker starts, left to expire when it dies.
type otherHolder struct{ t *testing.T }

func leaseHolder(t *testing.T, e *env, consumer string) *otherHolder {
	t.Helper()
	ctx := context.Background()
	kv, err := e.js.CreateKeyValue(ctx, worker.TurnsConfig("CIO"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, worker.DeliveryLeaseKey(consumer), []byte("delivering 5 replica-A"), jetstream.KeyTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	return &otherHolder{t: t}
}

// waitedFor reports whether the worker logged that it waits for the lease.
func (h *otherHolder) waitedFor(rec *logRecorder) bool {
	return len(rec.records(h.t, "another replica holds the ordered delivery lease; waiting for it")) > 0
}

// died: a killed replica leaves its lease to expire.
func (h *otherHolder) died() {}
