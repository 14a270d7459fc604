package worker

import (
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// callKind is what a message asks of Customer.io; settlement differs by
// it. Each kind has one API (sink.APICDP, APIApp, APITrack), so the kind
// stands for the API in decide.
type callKind int

const (
	kindBatch   callKind = iota // a CDP call, sent in a batch (API "cdp")
	kindTrigger                 // a broadcast trigger, never sent twice (API "app")
	kindTrack                   // a suppression, unsubscribe or metric (API "track")
)

func (k callKind) String() string {
	switch k {
	case kindBatch:
		return "batch"
	case kindTrigger:
		return "trigger"
	case kindTrack:
		return "track"
	}
	return "unknown"
}

// outcome is what one request's attempts came to, as far as settling one of
// its messages depends on it. It holds no error and no message, so that
// decide is a pure function of it.
type outcome struct {
	Class      sink.Class
	Kind       callKind
	Calls      int    // messages the request carried
	Status     int    // HTTP status of the last answer, 0 for none
	Deliveries uint64 // this message's delivery count
	MaxDeliver int
	NakDelay   time.Duration

	// Batch calls: a 5xx is split (see serverErrorSplit) when some call of
	// the request was delivered before (Redelivered) or the request is
	// already part of a split (InSplit), and the split may go further
	// (MaySplit: every part but an outage's second halves).
	Redelivered, InSplit, MaySplit bool

	// Triggers (see sendTrigger): MaybeSent, the request may have reached
	// Customer.io (a timeout or reset after sending, a gateway's 502 or 504);
	// BetweenTries, a Cancelled came while no request was in flight;
	// MarkersDown, the marker bucket could not be read or written, so
	// nothing was sent; ShuttingDown, the worker's sends are being
	// cancelled.
	MaybeSent, BetweenTries, MarkersDown, ShuttingDown bool
}

// byDeliveries reports whether decide's answer may differ between the
// calls of one request, by their delivery counts: only after transient
// failures (Retry; a trigger's markers down), where the count chooses
// between a nak delay and a dead letter. Otherwise one decision serves the
// whole request (TestDecideInvariants checks it).
func (o outcome) byDeliveries() bool {
	return o.Class == sink.Retry || o.Kind == kindTrigger && o.MarkersDown
}

// verb is what happens to a message.
type verb int

const (
	verbAck        verb = iota // delivered: ack (a trigger: double ack)
	verbNakDelay               // try again after action.Delay
	verbNakNow                 // hand back for at once: another replica takes it
	verbDeadLetter             // write to the dead-letter stream with action.Reason, then term
	verbSplit                  // send the request again in halves (a batch) or give the halves to the pacer (triggers)
	verbPause                  // hold on and probe: a configuration problem (attempt does this; never settled)
)

func (v verb) String() string {
	return [...]string{"ack", "nak_delay", "nak_now", "dead_letter", "split", "pause"}[v]
}

// action is the settlement of one message.
type action struct {
	Verb   verb
	Delay  time.Duration     // verbNakDelay
	Reason deadletter.Reason // verbDeadLetter
}

// decide is the settlement policy, in one place: what happens to one
// message of a request given the request's outcome. It has no side
// effects; (*Worker).settleCalls applies its answer.
//
//   - 2xx: ack.
//   - 401, 403, 404, 405, 3xx (Pause): hold on; nothing is dead-lettered
//     for a configuration problem.
//   - A trigger whose request may have reached Customer.io, or was cut off
//     in flight at shutdown: dead-letter as ambiguous, never send twice,
//     with the time its request was sent (deadletter.HeaderRequestedAt),
//     where an operator looks for the trigger it may have created. Its
//     marker stays "sending", so a copy that comes back (the dead-letter
//     publish failed) is dead-lettered again rather than sent.
//   - A trigger whose markers are unreachable: nak (with a delay, or at
//     once at shutdown), never dead-letter: it was not sent.
//   - Reject (another 4xx): split a request of several calls to find the
//     bad one; dead-letter one rejected on its own.
//   - Retry (429, 408, 5xx, no answer) after this delivery's retries: a
//     batch with a 5xx that failed before is split; otherwise the message
//     is dead-lettered once delivered MaxDeliver times, else nakked with
//     a delay that grows with its deliveries (nakDelay).
//   - Cancelled (the hard stop): nak at once, for another replica.
func decide(o outcome) action {
	if o.Class == sink.Pause {
		return action{Verb: verbPause}
	}
	if o.Kind == kindTrigger {
		switch {
		case o.MarkersDown && o.ShuttingDown:
			return action{Verb: verbNakNow}
		case o.MarkersDown:
			return action{Verb: verbNakDelay, Delay: nakDelay(o.NakDelay, o.Deliveries)}
		case o.MaybeSent, o.Class == sink.Cancelled && !o.BetweenTries:
			return action{Verb: verbDeadLetter, Reason: deadletter.ReasonAmbiguous}
		}
	}
	switch o.Class {
	case sink.Delivered:
		return action{Verb: verbAck}
	case sink.Reject:
		if o.Calls > 1 && o.Kind != kindTrack {
			return action{Verb: verbSplit}
		}
		return action{Verb: verbDeadLetter, Reason: deadletter.ReasonRejected}
	case sink.Retry:
		if o.Kind == kindBatch && o.Calls > 1 && o.Status >= 500 && (o.Redelivered || o.InSplit) && o.MaySplit {
			return action{Verb: verbSplit}
		}
		if o.Deliveries >= uint64(max(o.MaxDeliver, 0)) {
			return action{Verb: verbDeadLetter, Reason: deadletter.ReasonRetriesExhausted}
		}
		return action{Verb: verbNakDelay, Delay: nakDelay(o.NakDelay, o.Deliveries)}
	}
	return action{Verb: verbNakNow} // sink.Cancelled
}

// nakDelay is the redelivery delay after a transient failure: base ×
// deliveries, at most ten times base, so an outage is ridden out without
// a hot loop.
func nakDelay(base time.Duration, deliveries uint64) time.Duration {
	return base * time.Duration(min(max(deliveries, 1), 10))
}

// nakDelay is the worker's nak delay after a transient failure (see
// decide).
func (w *Worker) nakDelay(deliveries uint64) time.Duration {
	return nakDelay(w.opts.NakDelay, deliveries)
}

// statusOf is sink.StatusOf without its cost for a 2xx (errors.As makes
// its target escape): the delivered path runs once per batch.
func statusOf(err error) int {
	if err == nil {
		return 0
	}
	return sink.StatusOf(err)
}
