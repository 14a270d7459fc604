package worker

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/deadletter"
)

// orderedFakeWorker is newFakeWorker on the ordered path, in an epoch
// whose lease was renewed renewedAgo ago (out of time after 42s less the
// margin, with the default request timeout).
func orderedFakeWorker(t *testing.T, s Sender, renewedAgo time.Duration) (*Worker, *fakeJS) {
	t.Helper()
	w, js := newFakeWorker(t, s, Options{Ordering: true, SendConcurrency: 1})
	lease := newDeliveryLease(newFakeTurnStore(), "cio-relay", "r", 0)
	lease.rev, lease.renewed = 1, time.Now().Add(-renewedAgo)
	w.ord = newOrdered(w, nil, newLeases[*held](time.Hour), &intake{freed: make(chan struct{}, 1)}, lease)
	w.ord.open, w.ord.pin, w.ord.holding = true, "p", true
	return w, js
}

// TestOrderedSendsAndAcksOnlyWithTheLease: an ordered batch is sent only
// while the lease outlasts a whole request, and acked (or its dead letter
// terminated) only while the lease is valid; otherwise it is handed back
// and the epoch ends, so that nothing reaches the server after another
// replica could hold the lease.
func TestOrderedSendsAndAcksOnlyWithTheLease(t *testing.T) {
	const good, bad = `{"type":"track","userId":"a"}`, `{"type":"track","userId":"bad"}`
	tests := []struct {
		name       string
		renewedAgo time.Duration // before the request
		during     time.Duration // the request takes this long
		calls      []string
		want       []string // settlement of each call
		requests   int
		letters    []deadletter.Reason
		holding    bool // still in the epoch after
	}{
		{"a fresh lease: sent and acked", 0, 0, []string{good, good}, []string{"ack", "ack"}, 1, nil, true},
		{"too little lease left for a request: not sent", 12 * time.Second, 0, []string{good}, []string{"nak"}, 0, nil, false},
		{"answered after the lease ran out: not acked", 0, 41 * time.Second, []string{good}, []string{"nak"}, 1, nil, false},
		{"a dead letter written in time is terminated", 0, 0, []string{bad}, []string{"term rejected"}, 1, []deadletter.Reason{deadletter.ReasonRejected}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &fakeSender{respond: func(ctx context.Context, _ int, body []byte) error {
					if tt.during > 0 {
						time.Sleep(tt.during)
					}
					if slices.Contains([]string{`{"batch":[` + bad + `]}`}, string(body)) {
						return statusErr("cdp", 400)
					}
					return nil
				}}
				w, js := orderedFakeWorker(t, s, tt.renewedAgo)
				hs, ms := heldCalls(t, w, 1, tt.calls...)
				for _, h := range hs {
					h.ordered = true
				}
				w.ord.inFlight++
				w.send(t.Context(), hs, batcher.BodyOf(hs, callOf))
				if got := settledAs(ms); !slices.Equal(got, tt.want) {
					t.Errorf("settled %q, want %q", got, tt.want)
				}
				if s.requests() != tt.requests {
					t.Errorf("%d requests, want %d", s.requests(), tt.requests)
				}
				if got := js.reasons(); !slices.Equal(got, tt.letters) {
					t.Errorf("dead letters %q, want %q", got, tt.letters)
				}
				if w.ord.holding != tt.holding {
					t.Errorf("in the epoch after: %v, want %v", w.ord.holding, tt.holding)
				}
			})
		})
	}
}

// TestOrderedDeadLetterTooLateIsHandedBack: a dead letter written when the
// lease has run out is not terminated but nakked: the next holder writes
// it again (the same Nats-Msg-Id, dropped as a duplicate) and terminates
// it.
func TestOrderedDeadLetterTooLateIsHandedBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, js := orderedFakeWorker(t, &fakeSender{}, time.Minute)
		hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`)
		hs[0].ordered = true
		w.deadLetter(t.Context(), hs[0], deadletter.ReasonRejected, 400, "bad")
		if got := ms[0].how(); got != "nak" {
			t.Fatalf("settled %q, want nak", got)
		}
		if got := js.reasons(); !slices.Equal(got, []deadletter.Reason{deadletter.ReasonRejected}) {
			t.Fatalf("dead letters %q, want the one written", got)
		}
	})
}

// TestOrderedIgnoresWhatIsNotItsEpochs: a message received while this
// replica does not hold the lease (the last pull of an epoch that ended),
// or received before its epoch began, is nakked at once, not held.
func TestOrderedIgnoresWhatIsNotItsEpochs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, _ := orderedFakeWorker(t, &fakeSender{}, 0)
		o := w.ord
		hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`, `{"type":"track","userId":"b"}`, `{"type":"track","userId":"c"}`)
		o.holding = false
		o.add(hs[0], "p", false)
		time.Sleep(time.Second)
		o.holding, o.epochStart = true, time.Now() // an epoch began after hs were received
		o.add(hs[1], "p", false)
		time.Sleep(time.Second)
		hs[2].received = time.Now()
		o.add(hs[2], "p", false)
		if got := settledAs(ms); !slices.Equal(got, []string{"nak", "nak", ""}) {
			t.Fatalf("settled %q, want the first two nakked and the third held", got)
		}
		if n := len(o.lanes[0].queue); n != 1 {
			t.Fatalf("%d calls queued, want 1", n)
		}
	})
}
