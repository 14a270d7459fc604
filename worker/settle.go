package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/nats-io/nats.go/jetstream"
)

// settlement is a request's outcome with what settling its messages needs
// beyond the decision: the last error (status and detail of a dead letter)
// and, for an ambiguous trigger, when its request was sent and what to
// tell the operator.
type settlement struct {
	outcome
	err         error
	requestedAt time.Time // ambiguous triggers: deadletter.HeaderRequestedAt
	detail      string    // ambiguous triggers: the dead letter's detail
}

// settler settles messages by policy: ack, nak, nak with a delay, or
// dead-letter and then term. It is the only stage that does, so what
// happens to a message after its request is found in decide (the rule) and
// here (its side effects). It needs the JetStream to write dead letters
// to, and the ordered path's hook for a nak (blockKey).
type settler struct {
	js       jetstream.JetStream
	stream   string           // recorded on dead letters
	version  string           // recorded on dead letters
	retryDLQ time.Duration    // nak delay when a dead letter cannot be written
	blockKey func(*held)      // told of a nak before it is sent (see Worker.blockKey)
	mayTerm  func(*held) bool // whether a dead letter's original may be terminated now (see Worker.mayTerm)
	log      *slog.Logger
	m        *metrics
	health   *jsHealth
}

// settleCalls applies decide's answer to each of calls: the one place
// where messages of a request are acked, nakked or dead-lettered. It
// reports split, settling nothing, when the request is to be split
// instead (the same for every call of a request: it does not depend on a
// call's deliveries). Triggers are acked with DoubleAck (doubleAck). The
// decision is made once for the request unless it depends on each call's
// deliveries (outcome.byDeliveries): a delivered batch is acked without a
// decision per call.
func (w *settler) settleCalls(ctx context.Context, calls []*held, s settlement) (split bool) {
	if len(calls) == 0 {
		return false
	}
	s.Deliveries = calls[0].deliveries
	a := decide(s.outcome)
	perCall := s.byDeliveries()
	if a.Verb == verbAck && s.Kind != kindTrigger && !perCall {
		// The hot path: a delivered batch, its calls counted by type as
		// they are acked (one pass).
		byType := w.m.deliveredByType
		for _, h := range calls {
			if s.Kind == kindBatch {
				byType.inc(h.typ)
			}
			if err := h.msg.Ack(); err != nil {
				w.settle(h, "ack", err)
			}
		}
		return false
	}
	var acks []*held
	nakked, exhausted := 0, 0
	for i, h := range calls {
		if i > 0 && perCall {
			s.Deliveries = h.deliveries
			a = decide(s.outcome)
		}
		switch a.Verb {
		case verbSplit:
			// Decided for the request, not the call: the first call's
			// answer is every call's.
			return true
		case verbAck:
			if s.Kind == kindTrigger {
				acks = append(acks, h)
				continue
			}
			w.settle(h, "ack", h.msg.Ack())
		case verbNakNow, verbPause:
			// attempt holds on while paused and returns a Pause only if
			// that changes: hand such a message back rather than hold it.
			w.nakNow([]*held{h})
		case verbNakDelay:
			nakked++
			w.blockKey(h)
			w.settle(h, "nak", h.msg.NakWithDelay(a.Delay))
		case verbDeadLetter:
			switch a.Reason {
			case deadletter.ReasonAmbiguous:
				w.deadLetterRequested(ctx, h, s.requestedAt, s.detail)
			case deadletter.ReasonRetriesExhausted:
				exhausted++
				w.deadLetter(ctx, h, a.Reason, s.Status,
					fmt.Sprintf("delivery %d of %d failed: %v", h.deliveries, s.MaxDeliver, s.err))
			default:
				w.deadLetter(ctx, h, a.Reason, s.Status, s.err.Error())
			}
		}
	}
	if len(acks) > 0 {
		w.doubleAck(ctx, acks)
	}
	if nakked+exhausted > 0 && !s.MarkersDown {
		w.log.Warn("batch not delivered; nakked for redelivery", "calls", nakked,
			"dead_lettered", exhausted, "err", s.err)
	}
	return false
}

// nakNow hands messages back for immediate redelivery: at shutdown, so
// another replica takes them.
func (w *settler) nakNow(calls []*held) {
	w.m.shutdownNaked.Add(float64(len(calls)))
	for _, h := range calls {
		w.blockKey(h)
		w.settle(h, "nak", h.msg.Nak())
	}
}

// settle records the failure of an ack, nak or term. Nothing more can be
// done: the message is redelivered after its ack wait and Customer.io
// de-duplicates it by messageId.
func (w *settler) settle(h *held, what string, err error) {
	if err != nil {
		w.health.failed(opAck, err, time.Now())
		w.m.acksFailed.Inc()
		w.log.Error(what+" failed; the message will be redelivered", "stream_seq", h.seq, "err", err)
	}
}

// doubleAck acks trigger messages and waits for the server to confirm
// (DoubleAck), markConcurrency at a time. An ack that fails is logged; the
// message comes back, finds its "sent" marker and is acked then.
func (w *settler) doubleAck(ctx context.Context, items []*held) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	sem := make(chan struct{}, markConcurrency)
	var wg sync.WaitGroup
	for _, h := range items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.settle(h, "ack", h.msg.DoubleAck(ctx))
		})
	}
	wg.Wait()
}

// rejectInput dead-letters a message whose body can never be delivered, with
// the validation error's reason.
func (w *settler) rejectInput(ctx context.Context, h *held, err error, leases *leases[*held]) {
	reason := event.ReasonInvalidJSON
	var ie *event.InvalidError
	if errors.As(err, &ie) {
		reason = ie.Reason
	}
	w.deadLetter(ctx, h, reason, 0, err.Error())
	leases.remove(h)
}
