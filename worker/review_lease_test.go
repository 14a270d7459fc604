package worker

// Review of the ordered delivery lease (issue 13): tests that show defects.
// Each fails against the code as reviewed; the comment says what it shows
// and the fix suggested.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/nats-io/nats.go/jetstream"
)

// committingTimeoutStore is the turns bucket during a KV leader election:
// the next Replace is written (committed) but its answer is lost, so the
// caller sees a timeout.
type committingTimeoutStore struct {
	*fakeTurnStore
	loseNextAnswer bool
}

func (s *committingTimeoutStore) Replace(ctx context.Context, key, value string, rev uint64, ttl time.Duration) (uint64, error) {
	next, err := s.fakeTurnStore.Replace(ctx, key, value, rev, ttl)
	if err == nil && s.loseNextAnswer {
		s.loseNextAnswer = false
		return 0, errUnreachable
	}
	return next, err
}

// TestReviewRenewalCommittedButUnansweredStallsForATTL: a renewal whose
// write the server committed but whose answer was lost (a timeout in a KV
// leader election) leaves the holder with a stale revision. Its next
// renewal fails with a revision mismatch, renew reports errLeaseLost,
// keepLease ends the epoch (epoch.go:371), and letGo, finding the lease
// invalid (drop set rev 0), neither unpins nor releases (epoch.go:425). The
// key, this replica's own, stays until the committed write's TTL: no
// replica (this one included: acquire sees ErrKeyExists) can deliver
// ordered calls for a whole TTL, 42s with the defaults.
//
// Fix: on a revision mismatch (renew) or ErrKeyExists (acquire), read the
// key; if its value is this replica's (the value carries a random per-process
// id), adopt its revision with a Replace expecting it, timing the lease from
// the start of that Replace (turnEntry needs the revision).
func TestReviewRenewalCommittedButUnansweredStallsForATTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := &committingTimeoutStore{fakeTurnStore: newFakeTurnStore()}
		a := newDeliveryLease(store, "cio-relay", "a-1a2b3c", 0)
		b := newDeliveryLease(store, "cio-relay", "b-4d5e6f", 0)
		if ok, err := a.acquire(ctx); !ok || err != nil {
			t.Fatalf("acquire: %v %v", ok, err)
		}
		time.Sleep(a.renewEvery())
		store.loseNextAnswer = true
		if err := a.renew(ctx); err == nil || errors.Is(err, errLeaseLost) {
			t.Fatalf("renewal with its answer lost: %v, want a timeout", err)
		}
		committed := time.Now()
		time.Sleep(a.renewEvery())
		if err := a.renew(ctx); !errors.Is(err, errLeaseLost) {
			t.Fatalf("next renewal: %v (want errLeaseLost, as the code is)", err)
		}
		// What runEpochs does next: takeLease polls every leasePoll, and so
		// does every other replica.
		var took time.Time
		for took.IsZero() {
			for _, l := range []*deliveryLease{a, b} {
				if ok, _ := l.acquire(ctx); ok {
					took = time.Now()
					break
				}
			}
			time.Sleep(leasePoll)
		}
		if stall := took.Sub(committed); stall > 2*time.Second {
			t.Errorf("no replica could take the lease for %v after a renewal whose answer was lost (TTL %v): ordered delivery stalled", stall, a.ttl)
		}
	})
}

// slowAckMsg is a message whose Ack takes a while (a connection to NATS
// that is congested: nats.go writes through a full buffer), and records
// when each ack was issued.
type slowAckMsg struct {
	jetstream.Msg
	delay time.Duration
	mu    *sync.Mutex
	at    *[]time.Time
}

func (m slowAckMsg) Ack() error {
	time.Sleep(m.delay)
	m.mu.Lock()
	*m.at = append(*m.at, time.Now())
	m.mu.Unlock()
	return nil
}

// TestReviewAcksOfABatchOutrunTheLease: deliver checks mayAck once
// (deliver.go:79), then settleCalls acks every call of the batch in a loop
// (settle.go:66). Nothing bounds that loop by the lease: when acks are slow
// to go out (a congested connection, which is also when renewals time out
// and the lease runs out), acks are still written after the lease ended
// and another replica may hold it: the late-ack masking of issue 13
// (TestTakeoverIsNotMaskedByACopyTheOldHolderAcked) again.
//
// Fix: on the ordered path, ack against a deadline (the lease's end): check
// mayAck before each ack (it is cheap: one mutex and a clock read), hand
// back (nak) the rest and end the epoch when it fails; and better, Flush
// with a deadline of the lease's end after the acks, ending the epoch
// without releasing (leave the key to expire) when it fails.
func TestReviewAcksOfABatchOutrunTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, _ := orderedFakeWorker(t, &fakeSender{}, 0)
		hs, _ := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`, `{"type":"track","userId":"b"}`, `{"type":"track","userId":"c"}`)
		var mu sync.Mutex
		var at []time.Time
		for _, h := range hs {
			h.ordered = true
			h.msg = slowAckMsg{Msg: h.msg, delay: 20 * time.Second, mu: &mu, at: &at}
		}
		end := w.ord.lease.end()
		w.ord.inFlight++
		w.send(t.Context(), hs, batcher.BodyOf(hs, callOf))
		mu.Lock()
		defer mu.Unlock()
		for i, a := range at {
			if !a.Before(end) {
				t.Errorf("ack %d issued %v after the lease's end (less its margin)", i+1, a.Sub(end))
			}
		}
	})
}

// TestReviewInvalidInputTerminatedWithoutTheLease: the reader dead-letters
// an invalid message (rejectInput, prepare.go:65) before it marks it
// ordered (prepare.go:76), so mayTerm's lease check (deliver.go:156) passes
// it: its original is terminated whether or not the lease lets this
// replica ack. letGo waits for the open pull and the sends, not for the
// intake's queue to be read, so the reader does read such messages after
// the lease was released or ran out (the last pull of an epoch, a backlog
// in the queue) — a term the next holder's count may not see coming.
//
// Fix: set h.ordered (or test w.ord != nil) before rejectInput, so that
// mayTerm applies; and/or have letGo wait until the intake's queue is empty
// (every message received in the epoch has reached add).
func TestReviewInvalidInputTerminatedWithoutTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, _ := orderedFakeWorker(t, &fakeSender{}, time.Minute) // the lease ran out
		w.ord.holding = false
		hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":`) // not JSON
		in := &intake{queue: make(chan *held, 1), freed: make(chan struct{}, 1)}
		in.queue <- hs[0]
		close(in.queue)
		w.read(t.Context(), in, newLeases[*held](time.Hour), nil)
		if got := settledAs(ms); !slices.Equal(got, []string{"nak"}) {
			t.Errorf("an invalid message read without the lease was settled %q, want nak (terminated only while the lease lets this replica ack)", got)
		}
	})
}
