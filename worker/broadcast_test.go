package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

// triggerRig is one worker's trigger path with a real marker bucket, an
// in-memory turn store, fake dead-letter JetStream and a scripted App API.
type triggerRig struct {
	w     *Worker
	js    *fakeJS
	app   *fakeDirect
	pacer *trigger.Pacer[*held]
}

// newTriggerRig has no turns, as a worker without the PACE bucket: turns
// have their own tests, in virtual time, and their whole-second TTLs would
// make every retry here wait a real second. withTurns adds them.
func newTriggerRig(t *testing.T, respond func(op, arg string) error) *triggerRig {
	t.Helper()
	app := &fakeDirect{respond: respond}
	w, js := newFakeWorker(t, &fakeSender{}, Options{App: app, BroadcastInterval: time.Millisecond,
		RetryInitial: 5 * time.Millisecond, RetryMaxInterval: 20 * time.Millisecond, RetryMaxElapsed: 200 * time.Millisecond})
	w.triggers.marks, _ = newTestMarks(t)
	p, err := trigger.NewPacer[*held](trigger.PacerOptions{Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &triggerRig{w: w, js: js, app: app, pacer: p}
}

// withTurns makes each request wait for its broadcast's turn in a turn
// store, as across replicas.
func (r *triggerRig) withTurns() *triggerRig {
	r.w.triggers.turns, _ = testTurns(newFakeTurnStore(), time.Millisecond)
	return r
}

// add holds trigger messages for broadcast 7, delivered the given number
// of times; seqs number them across calls unless given.
func (r *triggerRig) add(t *testing.T, deliveries uint64, seqs ...uint64) []*scriptedMsg {
	t.Helper()
	leases := newLeases[*held](time.Hour)
	var ms []*scriptedMsg
	for _, seq := range seqs {
		m := newScriptedMsg(SubjectBroadcast, fmt.Sprintf(`{"broadcast_id":7,"ids":["p%d"],"id_ignore_missing":true}`, seq), seq, deliveries)
		h, _ := r.w.hold(m, "test.", leases, func() *held { return new(held) })
		req, err := trigger.Parse(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		h.trigger = req
		if err := r.pacer.Add(req, h); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return ms
}

// send sends the next batch the pacer releases and returns the messages
// that left it.
func (r *triggerRig) send(t *testing.T, ctx context.Context) []*held {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if bs := r.pacer.Ready(time.Now()); len(bs) > 0 {
			return r.w.triggers.sendTrigger(ctx, make(chan struct{}), r.pacer, bs[0])
		}
		if time.Now().After(deadline) {
			t.Fatal("pacer released nothing")
		}
		time.Sleep(time.Millisecond) // the pacer's 1ms interval
	}
}

// TestTriggerSettlement drives sendTrigger through each answer of the App
// API and checks the settlement of every trigger and the requests made: a
// trigger that may have reached Customer.io is never sent again.
func TestTriggerSettlement(t *testing.T) {
	reset := &sink.TransportError{API: "app", Err: errors.New("connection reset by peer")}
	refused := &sink.TransportError{API: "app", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	tests := []struct {
		name       string
		deliveries uint64
		respond    error
		want       []string
		letters    []deadletter.Reason
		requests   int // at least
	}{
		{"2xx double-acks both", 1, nil, []string{"double_ack", "double_ack"}, nil, 1},
		{"maybe sent is ambiguous for both", 1, reset, []string{"term ambiguous", "term ambiguous"},
			[]deadletter.Reason{deadletter.ReasonAmbiguous, deadletter.ReasonAmbiguous}, 1},
		{"502 is ambiguous", 1, statusErr("app", 502), []string{"term ambiguous", "term ambiguous"},
			[]deadletter.Reason{deadletter.ReasonAmbiguous, deadletter.ReasonAmbiguous}, 1},
		{"dial refused is retried, then nakked", 1, refused, []string{"nak 30s", "nak 30s"}, nil, 2},
		{"500 at MaxDeliver is exhausted", 3, statusErr("app", 500), []string{"term retries_exhausted", "term retries_exhausted"},
			[]deadletter.Reason{deadletter.ReasonRetriesExhausted, deadletter.ReasonRetriesExhausted}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTriggerRig(t, func(string, string) error { return tt.respond })
			ms := r.add(t, tt.deliveries, 1, 2)
			if got := r.send(t, t.Context()); len(got) != 2 {
				t.Fatalf("%d left the pacer, want 2", len(got))
			}
			if got := settledAs(ms); !slices.Equal(got, tt.want) {
				t.Errorf("settled %q, want %q", got, tt.want)
			}
			if got := r.js.reasons(); !slices.Equal(got, tt.letters) {
				t.Errorf("dead letters %q, want %q", got, tt.letters)
			}
			if n := len(r.app.got()); n < tt.requests {
				t.Errorf("%d requests, want at least %d", n, tt.requests)
			}
		})
	}
}

// TestTriggerRedeliveredAfterItsAnswer: a trigger that comes back after a
// lost ack is acked without a request when its marker says sent, and
// dead-lettered as ambiguous when the earlier request was not answered.
func TestTriggerRedeliveredAfterItsAnswer(t *testing.T) {
	r := newTriggerRig(t, func(_, arg string) error {
		if slices.Contains([]string{`7 {"ids":["p2"],"id_ignore_missing":true}`}, arg) {
			return &sink.TransportError{API: "app", Err: errors.New("i/o timeout")}
		}
		return nil
	})
	r.add(t, 1, 1)
	r.send(t, t.Context()) // sent: marker "sent"
	r.add(t, 1, 2)
	r.send(t, t.Context()) // no answer: marker stays "sending", dead-lettered
	before := len(r.app.got())
	ms := r.add(t, 2, 1, 2) // both come back
	r.send(t, t.Context())
	if got := settledAs(ms); !slices.Equal(got, []string{"double_ack", "term ambiguous"}) {
		t.Fatalf("redelivered copies settled %q, want double_ack and term ambiguous", got)
	}
	if n := len(r.app.got()); n != before {
		t.Fatalf("%d requests for redelivered copies, want none", n-before)
	}
}

// TestTriggerRejected: a coalesced request that is rejected goes back to
// the pacer in halves; a trigger rejected on its own is dead-lettered.
func TestTriggerRejected(t *testing.T) {
	r := newTriggerRig(t, func(string, string) error { return statusErr("app", 422) }).withTurns()
	ms := r.add(t, 1, 1, 2)
	if got := r.send(t, t.Context()); got != nil {
		t.Fatalf("split request settled %d", len(got))
	}
	r.send(t, t.Context())
	r.send(t, t.Context())
	if got := settledAs(ms); !slices.Equal(got, []string{"term rejected", "term rejected"}) {
		t.Fatalf("settled %q", got)
	}
	if n := len(r.app.got()); n != 3 {
		t.Fatalf("%d requests, want 3 (the pair, then each)", n)
	}
}

// TestTriggerMarkersDown: without a reachable marker bucket nothing is
// sent and every trigger is nakked with a delay, never dead-lettered, even
// on its last delivery.
func TestTriggerMarkersDown(t *testing.T) {
	r := newTriggerRig(t, nil)
	r.w.triggers.marks.kv = downKV{}
	ms := r.add(t, 3, 1)
	r.send(t, t.Context())
	if got := settledAs(ms); !slices.Equal(got, []string{"nak 1m30s"}) {
		t.Fatalf("settled %q, want nak 1m30s", got)
	}
	if len(r.app.got()) != 0 || len(r.js.reasons()) != 0 {
		t.Fatalf("requests %q, dead letters %q: want none", r.app.got(), r.js.reasons())
	}
}

// TestTriggerShutdown: cut off in flight, a trigger is ambiguous; stopped
// between tries, it is nakked at once.
func TestTriggerShutdown(t *testing.T) {
	t.Run("in flight", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		r := newTriggerRig(t, func(string, string) error { cancel(); return context.Canceled })
		ms := r.add(t, 1, 1)
		r.send(t, ctx)
		if got := settledAs(ms); !slices.Equal(got, []string{"term ambiguous"}) {
			t.Fatalf("settled %q, want term ambiguous", got)
		}
	})
	t.Run("between tries", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		r := newTriggerRig(t, func(string, string) error { cancel(); return statusErr("app", 503) })
		ms := r.add(t, 1, 1)
		r.send(t, ctx)
		if got := settledAs(ms); !slices.Equal(got, []string{"nak"}) {
			t.Fatalf("settled %q, want nak", got)
		}
	})
}

// downKV is a marker bucket that cannot be reached.
type downKV struct{ jetstream.KeyValue }

func (downKV) Create(context.Context, string, []byte, ...jetstream.KVCreateOpt) (uint64, error) {
	return 0, nats.ErrTimeout
}

// TestTriggerRejectedAtShutdownIsHandedBack: a coalesced request in flight
// when the reader stops is rejected; the pacer would split it and wait
// each half's turn, but nobody is left to send them. Both triggers must be
// nakked at once for another replica, not left leased until the process
// exits and the server's ack wait brings them back.
func TestTriggerRejectedAtShutdownIsHandedBack(t *testing.T) {
	inFlight, answer := make(chan struct{}), make(chan struct{})
	r := newTriggerRig(t, func(string, string) error {
		close(inFlight) // one request only: a second would panic here
		<-answer
		return statusErr("app", 422)
	})
	ms := r.add(t, 1, 1, 2)
	readerDone, paced := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(paced)
		r.w.triggers.pace(t.Context(), r.pacer, make(chan struct{}, 1), make(chan struct{}, 1), readerDone, newLeases[*held](time.Hour))
	}()
	<-inFlight
	close(readerDone)
	close(answer)
	select {
	case <-paced:
	case <-time.After(10 * time.Second):
		t.Fatal("pace did not return after the reader stopped")
	}
	if got := settledAs(ms); !slices.Equal(got, []string{"nak", "nak"}) {
		t.Fatalf("triggers of the rejected request settled %q, want both nakked at once", got)
	}
}
