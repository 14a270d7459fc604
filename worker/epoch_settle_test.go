package worker

// How the ordered path settles against the delivery lease (holder.go):
// cases an adversarial review found open.

import (
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/nats-io/nats.go/jetstream"
)

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
	m.mu.Lock()
	*m.at = append(*m.at, time.Now())
	m.mu.Unlock()
	time.Sleep(m.delay)
	return nil
}

// TestOrderedAcksStopAtTheLeasesEnd: when acks are slow to go out (a
// congested connection, which is also when renewals time out and the lease
// runs out), a batch's acks must not go on past the lease's end, when
// another replica may hold it: each is checked against the lease, the rest
// handed back (the late-ack masking of TestTakeoverIsNotMaskedByACopyTheOldHolderAcked
// otherwise).
func TestOrderedAcksStopAtTheLeasesEnd(t *testing.T) {
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

// TestOrderedInvalidInputIsTerminatedOnlyWithTheLease: the reader
// dead-letters an invalid message before it is marked ordered, and reads
// what the intake queued after the lease was let go (the last pull of an
// epoch): its original is terminated only while the lease lets this
// replica ack, else nakked.
func TestOrderedInvalidInputIsTerminatedOnlyWithTheLease(t *testing.T) {
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
