package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
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
	cons := e.createPinnedConsumer(t, opts.AckWait)
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

// TestOrderedHandoverOnStop is a rolling restart: replica A delivers, B
// (deployed with other settings: a shorter request timeout, so a shorter
// lease, and two lanes instead of four) waits for the delivery lease. A is
// stopped as Kubernetes stops a pod: it sends what it has, lets the lease
// go — deleted, not left to its 42s TTL — and B takes over. Every call is
// accepted, each person's in order.
func TestOrderedHandoverOnStop(t *testing.T) {
	msgs := orderedCalls(7, 6000, 100)
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(7, 1))
	e := newEnv(t, ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
		mu.Lock()
		x := r.IntN(10)
		mu.Unlock()
		if x == 0 {
			return &ciotest.Fault{Status: 503, Body: `{"error":"unavailable"}`}
		}
		return &ciotest.Fault{Slow: true, Delay: 150 * time.Millisecond} // A is mid-request when it is stopped
	}})
	e.createStream(t)
	e.publishAll(t, msgs)
	recA, recB := &logRecorder{}, &logRecorder{}
	a := orderedOptions(true)
	a.BatchMaxCalls, a.Logger = 50, recA.logger()
	_, regA, stopA := e.launchWorker(t, a, 0)
	t.Cleanup(stopA)
	waitFor(t, 10*time.Second, "A to take the delivery lease", func() bool {
		return len(recA.records(t, "took the ordered delivery lease")) > 0
	})
	b := orderedOptions(true)
	b.BatchMaxCalls, b.SendConcurrency, b.TriggerTimeout, b.Logger = 80, 2, 5*time.Second, recB.logger()
	e.runWorker(t, b, 0)
	waitFor(t, 10*time.Second, "B to wait for the lease", func() bool {
		return len(recB.records(t, "another replica holds the ordered delivery lease")) > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	stopA()
	kv, err := e.js.KeyValue(ctx, worker.TurnsBucket("CIO"))
	if err != nil {
		t.Fatal(err)
	}
	if entry, err := kv.Get(ctx, worker.DeliveryLeaseKey("cio-relay")); err == nil && !strings.Contains(string(entry.Value()), " "+replicaOf(t, recB)) {
		t.Fatalf("after A stopped, the lease is %q: A did not let it go", entry.Value())
	} else if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatal(err)
	}
	if n := metricValue(t, regA, "cio_relay_ordered_lease_released_total", "reason", "stopped"); n != 1 {
		t.Errorf("A counted %v releases at stop, want 1", n)
	}
	// Within a few polls: A's lease would last 42s.
	waitFor(t, 10*time.Second, "B to take the lease", func() bool { return replicaOf(t, recB) != "" })
	waitSettled(t, e.js, 60*time.Second)
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	t.Logf("%+v", rep)
	if rep.missing != 0 || rep.violations != 0 {
		t.Fatalf("%d calls missing, %d out of order (%s)", rep.missing, rep.violations, rep.example)
	}
}

// replicaOf is the replica name a worker logged when it took the lease, or
// "" before it did.
func replicaOf(t *testing.T, rec *logRecorder) string {
	for _, r := range rec.records(t, "took the ordered delivery lease") {
		if s, ok := r["replica"].(string); ok {
			return s
		}
	}
	return ""
}

// createPinnedConsumer creates the batch consumer as an ordered worker
// would, before any worker runs.
func (e *env) createPinnedConsumer(t *testing.T, ackWait time.Duration) jetstream.Consumer {
	t.Helper()
	cfg := jetstream.ConsumerConfig{
		Durable: "cio-relay", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1,
		MaxAckPending: worker.DefaultMaxAckPending, FilterSubjects: worker.FilterSubjects(), DeliverPolicy: jetstream.DeliverAllPolicy,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{worker.PriorityGroup}, PinnedTTL: worker.PinnedTTL,
	}
	cons, err := e.js.CreateConsumer(context.Background(), "CIO", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// TestOrderingRefusesToStartWithoutTheLeaseBucket: with
// RELAY_MANAGE_STREAMS=false and no {stream}_PACE bucket, an ordered worker
// cannot keep order across replicas: Run fails at once, naming the bucket,
// how to create it and the way out.
func TestOrderingRefusesToStartWithoutTheLeaseBucket(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	e.createStream(t)
	e.createPinnedConsumer(t, worker.DefaultAckWait)
	if _, err := e.js.CreateStream(context.Background(), deadletter.StreamConfig("CIO_DLQ", time.Hour, -1)); err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: false, Ordering: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	for _, want := range []string{"CIO_PACE", "nats kv add CIO_PACE", "RELAY_ORDERING=false", "RELAY_MANAGE_STREAMS=true"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Run: %v; want an error naming %q", err, want)
		}
	}
}
