package worker

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/sink"
)

// TestLaneTakeTiming checks, in virtual time, when a lane's batch is due:
// a full one at once, a partial one after the flush interval, and every
// lane's partial batch after the linger once the source said it was
// drained, whichever lane the drained call went to.
func TestLaneTakeTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &Worker{opts: Options{BatchMaxBytes: 1000, BatchMaxCalls: 3, FlushInterval: time.Second, SendConcurrency: 2}}
		w.opts.setDefaults()
		o := newOrdered(w, nil, newLeases[*held](time.Second), nil, heldLease())
		o.open, o.pin, o.holding = true, "p", true
		call := func(key, seq uint64, drained bool) {
			h := &held{key: key, seq: seq, call: []byte(`{"x":1}`), ordered: true}
			o.add(h, "p", drained)
		}
		due := func(l *lane) (int, time.Duration) {
			batch, _, wait, _ := o.takeLocked(l)
			if batch != nil {
				o.inFlight--
			}
			return len(batch), wait
		}
		// Lane 0 gets even keys, lane 1 odd ones.
		for seq := range uint64(4) {
			call(0, seq, false)
		}
		if n, _ := due(o.lanes[0]); n != 3 {
			t.Fatalf("full batch: took %d calls, want 3 at once", n)
		}
		if n, wait := due(o.lanes[0]); n != 0 || wait != time.Second {
			t.Fatalf("partial batch: took %d, wait %v; want 0 and the flush interval", n, wait)
		}
		call(1, 10, false)
		time.Sleep(100 * time.Millisecond)
		call(2, 11, true) // drained, on lane 0
		if n, wait := due(o.lanes[1]); n != 0 || wait != 5*time.Millisecond {
			t.Fatalf("lane 1 after a drained call on lane 0: took %d, wait %v; want the linger", n, wait)
		}
		time.Sleep(5 * time.Millisecond)
		if n, _ := due(o.lanes[1]); n != 1 {
			t.Fatalf("lane 1 after the linger: took %d, want its 1 call", n)
		}
		if n, _ := due(o.lanes[0]); n != 2 {
			t.Fatalf("lane 0 after the linger: took %d, want its 2 calls", n)
		}
		call(3, 12, false) // more is coming: back to the flush interval
		if n, wait := due(o.lanes[1]); n != 0 || wait != time.Second {
			t.Fatalf("after a call that was not drained: took %d, wait %v; want the flush interval", n, wait)
		}
	})
}

// TestOrderedLanesKeepKeyOrderAcrossNaks plays arrivals, sends and failed
// sends against the lanes and the key policy together, as runLane and
// deliver drive them, and checks that every key's calls first go out in
// stream order. The calls that wait in a lane when an earlier call of their
// key is nakked are the case that matters: after a takeover the barrier
// routes thousands of calls to the lanes at once, so a nakked call is
// usually back (after its nak delay) while later calls of its key are
// still queued ahead of where it would be appended.
func TestOrderedLanesKeepKeyOrderAcrossNaks(t *testing.T) {
	type step struct {
		op  string // "add": a delivery arrives; "send": the lane's next batch goes; "fail": it is nakked
		key uint64
		seq uint64
	}
	tests := []struct {
		name  string
		calls int // BatchMaxCalls
		steps []step
	}{
		{"a nakked call back while a later call of its key waits in the lane", 1, []step{
			{"add", 1, 1}, {"add", 2, 2}, {"add", 1, 3},
			{"send", 0, 0}, {"fail", 0, 0}, // 1 nakked: 3 must wait for it
			{"add", 1, 1}, // 1 redelivered, after its nak delay
		}},
		{"several nakked calls back one by one, later calls queued in between", 2, []step{
			{"add", 1, 1}, {"add", 1, 2}, {"add", 2, 3}, {"add", 1, 4}, {"add", 2, 5}, {"add", 1, 6},
			{"send", 0, 0}, {"fail", 0, 0}, // 1 and 2 nakked
			{"add", 1, 2}, {"send", 0, 0}, // 3 and 4 taken; 4 must wait
			{"add", 1, 1}, {"add", 2, 7}, {"add", 1, 8},
		}},
		{"a batch taken before the nakked call is back holds the later call back", 1, []step{
			{"add", 1, 1}, {"add", 2, 2}, {"add", 1, 3}, {"add", 2, 4},
			{"send", 0, 0}, {"fail", 0, 0},
			{"send", 0, 0}, {"send", 0, 0}, // 2 goes; 3 waits for 1
			{"add", 1, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &Worker{opts: Options{BatchMaxBytes: 1000, BatchMaxCalls: tt.calls, FlushInterval: time.Hour, SendConcurrency: 1}}
			w.opts.setDefaults()
			o := newOrdered(w, nil, newLeases[*held](time.Second), nil, heldLease())
			o.open, o.pin, o.holding, o.closing = true, "p", true, true // closing: every batch is due at once
			var sent []*held                                            // first sends, in order
			seen := map[uint64]bool{}
			var last []*held
			send := func() bool {
				batch, _, _, _ := o.takeLocked(o.lanes[0])
				if batch == nil {
					return false
				}
				last = o.filter(batch)
				o.inFlight--
				for _, h := range last {
					if !seen[h.seq] {
						seen[h.seq] = true
						sent = append(sent, h)
					}
				}
				return true
			}
			for _, s := range tt.steps {
				switch s.op {
				case "add":
					o.add(&held{key: s.key, seq: s.seq, call: []byte(`{"x":1}`), ordered: true}, "p", false)
				case "send":
					send()
				case "fail":
					for _, h := range last {
						delete(seen, h.seq)
						sent = slices.DeleteFunc(sent, func(x *held) bool { return x == h })
						o.nakked(h)
					}
				}
			}
			for send() { // the rest goes through
			}
			next := map[uint64]uint64{} // key → highest seq first sent
			for _, h := range sent {
				if h.seq < next[h.key] {
					t.Fatalf("key %d: seq %d first sent after seq %d; first sends %v", h.key, h.seq, next[h.key], seqs(sent))
				}
				next[h.key] = h.seq
			}
			if n := o.keys.keys; len(n) != 0 {
				t.Errorf("%d keys still blocked after everything was back and sent", len(n))
			}
		})
	}
}

// scriptSender answers each batch with the next status of its script (200
// once it runs out) and records the bodies.
type scriptSender struct {
	mu       sync.Mutex
	statuses []int
	bodies   []string
	answers  []int
}

func (s *scriptSender) SendBatch(_ context.Context, body []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	status := http.StatusOK
	if len(s.bodies) < len(s.statuses) {
		status = s.statuses[len(s.bodies)]
	}
	s.bodies = append(s.bodies, string(body))
	s.answers = append(s.answers, status)
	if status/100 == 2 {
		return nil
	}
	return &sink.StatusError{API: "cdp", Status: status}
}

// nakHook is a message that runs after once it has been nakked with a delay:
// something that happens just as the call is handed back.
type nakHook struct {
	jetstream.Msg
	after func()
}

func (m nakHook) NakWithDelay(d time.Duration) error {
	err := m.Msg.NakWithDelay(d)
	m.after()
	return err
}

// TestOrderedPinLostDuringBisect: a batch of person K's calls 1 and 2 (with
// another person's call between them) is bisected, by a 400 or by the 5xx
// split, and its first half (K1) is nakked; just then the replica learns it
// lost the pin, and hands back what it holds, forgetting which keys were
// blocked. The second half must not go: K2 would be accepted while K1
// waits for redelivery to the replica pinned now. It is handed back too, so
// every call comes back from the consumer.
func TestOrderedPinLostDuringBisect(t *testing.T) {
	for _, tt := range []struct {
		name       string
		deliveries uint64 // of the calls; 2 or more makes a 5xx split the batch
		statuses   []int  // the batch, its first half
	}{
		{"bisect after a 400", 1, []int{400, 503}},
		{"5xx split of a redelivered batch", 2, []int{503, 503}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, js := natstest.Start(t).Connect(t)
			if _, err := js.CreateStream(ctx, StreamConfig("CIO")); err != nil {
				t.Fatal(err)
			}
			cons, err := js.CreateOrUpdateConsumer(ctx, "CIO", jetstream.ConsumerConfig{
				Durable: "cio-relay", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, FilterSubject: "cio.track",
			})
			if err != nil {
				t.Fatal(err)
			}
			bodies := []string{`{"userId":"K","event":"e","properties":{"seq":1}}`, `{"userId":"J","event":"e","properties":{"seq":1}}`,
				`{"userId":"K","event":"e","properties":{"seq":2}}`}
			for _, b := range bodies {
				if _, err := js.Publish(ctx, "cio.track", []byte(b)); err != nil {
					t.Fatal(err)
				}
			}
			sender := &scriptSender{statuses: tt.statuses}
			w, err := New(js, sender, Options{Ordering: true, NoRetry: true, NakDelay: time.Millisecond, SendConcurrency: 1})
			if err != nil {
				t.Fatal(err)
			}
			leases := newLeases[*held](time.Minute)
			w.ord = newOrdered(w, cons, leases, &intake{freed: make(chan struct{}, 1)}, heldLease())
			w.ord.open, w.ord.pin, w.ord.holding = true, "p", true
			fetched, err := cons.Fetch(len(bodies), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			var calls []*held
			for m := range fetched.Messages() {
				if len(calls) == 0 {
					m = nakHook{Msg: m, after: w.ord.pinLost}
				}
				h, _ := w.hold(m, "t:", leases, func() *held { return new(held) })
				h.ordered, h.call, h.deliveries = true, m.Data(), tt.deliveries
				h.key = uint64(m.Data()[11]) // K or J
				calls = append(calls, h)
			}
			if len(calls) != len(bodies) {
				t.Fatalf("fetched %d calls, want %d", len(calls), len(bodies))
			}
			w.ord.inFlight++ // as takeLocked does
			w.send(ctx, calls, batcher.BodyOf(calls, callOf))

			k1 := false // a request carrying K1 was accepted
			for i, b := range sender.bodies {
				ok := sender.answers[i]/100 == 2
				if ok && strings.Contains(b, bodies[2]) && !k1 {
					t.Fatalf("request %d, carrying K2, answered %d before any request carrying K1 was accepted; requests %q, answers %v",
						i+1, sender.answers[i], sender.bodies, sender.answers)
				}
				k1 = k1 || (ok && strings.Contains(b, bodies[0]))
			}
			// Nothing was accepted: every call is handed back and comes again.
			again, err := cons.Fetch(len(bodies), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for range again.Messages() {
				n++
			}
			if n != len(bodies) {
				t.Errorf("%d calls redelivered after the pin was lost, want all %d; requests %q, answers %v", n, len(bodies), sender.bodies, sender.answers)
			}
		})
	}
}

// TestOrderedBlockerAckedByAnotherCopyIsReleased: a replica can hold two
// deliveries of one call (a stale nak, its own or a dead replica's, made
// the server deliver it again). When one copy is accepted and acked and the
// other is then nakked, the server ignores the nak (the sequence is no
// longer pending) and never delivers the call again: the key's later calls
// must not wait for it forever, leased, so that the consumer never
// settles. The consumer's ack floor says the sequence is done.
func TestOrderedBlockerAckedByAnotherCopyIsReleased(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Start(t).Connect(t)
	if _, err := js.CreateStream(ctx, StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	cfg := jetstream.ConsumerConfig{Durable: "cio-relay", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, FilterSubject: "cio.track"}
	setPinned(&cfg)
	cons, err := js.CreateOrUpdateConsumer(ctx, "CIO", cfg)
	if err != nil {
		t.Fatal(err)
	}
	for seq := 1; seq <= 2; seq++ {
		if _, err := js.Publish(ctx, "cio.track", fmt.Appendf(nil, `{"userId":"K","event":"e","properties":{"seq":%d}}`, seq)); err != nil {
			t.Fatal(err)
		}
	}
	w, err := New(js, &scriptSender{}, Options{Ordering: true, SendConcurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	leases := newLeases[*held](time.Minute)
	o := newOrdered(w, cons, leases, &intake{freed: make(chan struct{}, 1)}, heldLease())
	w.ord = o
	fetch := func(n int) []*held {
		t.Helper()
		b, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second), jetstream.FetchPriorityGroup(PriorityGroup))
		if err != nil {
			t.Fatal(err)
		}
		var out []*held
		for m := range b.Messages() {
			h, _ := w.hold(m, "t:", leases, func() *held { return new(held) })
			h.ordered, h.call, h.key = true, m.Data(), 1
			out = append(out, h)
		}
		if len(out) != n {
			t.Fatalf("fetched %d messages, want %d", len(out), n)
		}
		return out
	}
	first := fetch(1)[0] // call 1
	if err := first.msg.Nak(); err != nil {
		t.Fatal(err)
	}
	again := fetch(2) // call 1 delivered again, and call 2, in either order
	second, two := again[0], again[1]
	if two.seq == first.seq {
		second, two = two, second
	}
	if second.seq != first.seq || second.deliveries != 2 {
		t.Fatalf("fetched seqs %v, want call 1 (seq %d) delivered again", seqs(again), first.seq)
	}
	o.open, o.pin, o.holding = true, second.msg.Headers().Get(pinIDHeader), true

	// The first copy is accepted and acked; the second, sent later, fails
	// and is nakked: the key is blocked by a call that will not come back.
	// (Acked on the wire: the client library refuses a second answer to
	// one delivery, which a worker never gives.)
	if _, err := js.Conn().Request(first.msg.Reply(), []byte("+ACK"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	o.nakked(second)
	if err := second.msg.Nak(); err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(ctx); err != nil || info.NumAckPending != 1 || info.AckFloor.Stream != first.seq {
		t.Fatalf("consumer after the ack and the nak: %v; want call 2 alone pending and call 1 under the ack floor", func() any {
			if err != nil {
				return err
			}
			return fmt.Sprintf("%d pending, ack floor %d", info.NumAckPending, info.AckFloor.Stream)
		}())
	}
	o.add(two, o.pin, true)
	o.mu.Lock()
	queued := len(o.lanes[0].queue)
	o.mu.Unlock()
	if queued != 0 {
		t.Fatalf("call 2 queued at once while call 1 was nakked")
	}

	barrierCtx, stop := context.WithCancel(ctx)
	defer stop()
	go o.barrier(barrierCtx)
	select {
	case <-o.lanes[0].wake:
	case <-time.After(10 * time.Second):
		t.Fatal("call 2 still waits for call 1 10s after call 1 was acked: its key is blocked for good")
	}
	o.mu.Lock()
	got := seqs(o.lanes[0].queue)
	o.mu.Unlock()
	if !slices.Equal(got, []uint64{two.seq}) {
		t.Fatalf("lane queue %v, want call 2 (seq %d)", got, two.seq)
	}
}

// heldLease is a delivery lease this replica holds for an hour, without a
// store: for tests of what the ordered path does within an epoch.
func heldLease() *deliveryLease {
	return &deliveryLease{key: DeliveryLeaseKey("cio-relay"), rev: 1, renewed: time.Now(), ttl: time.Hour,
		requestTimeout: time.Second, now: time.Now}
}
