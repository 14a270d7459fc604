package worker

import (
	"context"
	"errors"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/sink"
)

// send delivers calls, whose batch body is body, and settles every one of
// them by the outcome (see attempt for retries and pauses):
//
//   - 2xx: ack all.
//   - retries spent: nak with a delay, or dead-letter with retries_exhausted
//     the calls already delivered MaxDeliver times (see decide).
//   - retries spent on a 5xx, for a batch that has failed a delivery before:
//     one call may be what Customer.io chokes on. Split it in halves, each
//     tried once (see serverErrorSplit), so the healthy calls go through
//     and only a call that keeps failing on its own exhausts its deliveries.
//     A 429, 408 or a transport failure is never split: those say nothing
//     about the calls.
//   - any other 4xx: some call is bad. Split the batch in halves and send each,
//     so good calls are delivered and only a call rejected on its own is
//     dead-lettered (rejected).
//   - ctx done (shutdown timeout): nak at once for another replica.
func (w *Worker) send(ctx context.Context, calls []*held, body []byte) {
	w.deliver(ctx, calls, body, nil, true)
}

// splitAfterDeliveries is the delivery from which a batch that fails with
// 5xx is split rather than nakked whole: the first failure is most likely
// Customer.io's, and is ridden out by retries and redelivery; a batch that
// fails again after a nak delay, while Customer.io may well be fine, is
// worth a few requests to find out whether one call is the cause. It is
// low because MaxDeliver may be low: with 3, a later start would leave the
// healthy calls a single chance.
const splitAfterDeliveries = 2

// serverErrorSplit is one bisection of a batch that kept failing with 5xx.
// Its parts are tried once each: the batch has just spent this delivery's
// retry budget, and a part that fails again is nakked like any other, so
// nothing is lost by not retrying it. It is told apart from an outage,
// where every part fails, by what gets through: while nothing has, only the
// first failing half of each split is split further (a probe, two requests
// per level), so an outage costs about 2·log2(calls) requests per batch,
// not one per call.
type serverErrorSplit struct {
	delivered bool // some part of the batch went through: Customer.io is up
}

// deliver is send for calls that may be part of a batch being split:
// split is nil outside a 5xx split (see serverErrorSplit); maySplit says
// whether a 5xx failure of calls may be split further.
func (w *Worker) deliver(ctx context.Context, calls []*held, body []byte, split *serverErrorSplit, maySplit bool) {
	ordered := w.ord != nil && len(calls) > 0 && calls[0].ordered
	if ordered {
		// A key may have been blocked since the batch was packed: its calls
		// wait for the blocker (see keyOrder).
		if kept := w.ord.filter(calls); len(kept) < len(calls) {
			if len(kept) == 0 {
				return
			}
			calls, body = kept, batcher.BodyOf(kept, callOf)
		}
	}
	var stop func(error) bool
	send := func(ctx context.Context) error { return w.sender.SendBatch(ctx, body) }
	switch {
	case split != nil:
		stop = func(err error) bool { return true } // one try: see serverErrorSplit
	case ordered:
		stop = w.ord.stop
	}
	if ordered {
		send = w.ord.leased(send)
	}
	err := w.attempt(ctx, sink.APICDP, &w.pause, 0, stop, send)
	if ordered && (errors.Is(err, errNotHolder) || !w.ord.mayAck()) {
		// Not sent, or answered too late to be acked by this replica:
		// the next holder sends it (holder.go).
		why := endLeaseLost
		if !errors.Is(err, errNotHolder) {
			why = endNotAcked
		}
		w.ord.handBack(calls, why)
		return
	}
	s := settlement{outcome: outcome{Class: sink.Classify(err), Kind: kindBatch, Calls: len(calls),
		Status: statusOf(err), MaxDeliver: w.opts.MaxDeliver, NakDelay: w.opts.NakDelay,
		InSplit: split != nil, MaySplit: maySplit}, err: err}
	if s.Class == sink.Retry {
		s.Redelivered = redelivered(calls) // read only for a Retry: a loop over the batch spared on the hot path
	}
	if s.Class == sink.Delivered {
		if split != nil {
			split.delivered = true
		}
		w.m.batches.WithLabelValues("delivered").Inc()
		w.m.batchBytes.Observe(float64(len(body)))
		w.m.batchCalls.Observe(float64(len(calls)))
		if ordered {
			w.ord.ackDelivered(calls)
			return
		}
	}
	if !w.settleCalls(ctx, calls, s) {
		switch s.Class {
		case sink.Delivered:
		case sink.Reject:
			w.m.batches.WithLabelValues("rejected").Inc()
		default:
			w.m.batches.WithLabelValues("nakked").Inc()
		}
		return
	}
	w.m.batches.WithLabelValues("split").Inc()
	switch {
	case s.Class == sink.Reject:
		w.log.Info("batch rejected; splitting it to find the bad calls", "calls", len(calls), "status", s.Status)
	case split == nil:
		split = &serverErrorSplit{}
		w.log.Warn("batch failed with a server error on another delivery; splitting it, in case one call is the cause",
			"calls", len(calls), "status", s.Status)
	}
	w.bisect(ctx, calls, split)
}

// bisect sends each half of calls on its own. In a 5xx split the second
// half is split further only if something has gone through by the time it
// fails (see serverErrorSplit).
func (w *Worker) bisect(ctx context.Context, calls []*held, split *serverErrorSplit) {
	first, second, firstBody, secondBody := batcher.Halves(calls, callOf)
	w.deliver(ctx, first, firstBody, split, true)
	w.deliver(ctx, second, secondBody, split, split == nil || split.delivered)
}

// redelivered reports whether any of calls has failed a delivery before.
// Any, not all: a call that keeps failing is batched with fresh ones on
// each redelivery, and would otherwise take them down with it every time.
func redelivered(calls []*held) bool {
	for _, h := range calls {
		if h.deliveries >= splitAfterDeliveries {
			return true
		}
	}
	return false
}

// blockKey tells the ordered path that h is being handed back, before it
// is: its key's later calls wait until it is redelivered.
func (w *Worker) blockKey(h *held) {
	if w.ord != nil && h.ordered {
		w.ord.nakked(h)
	}
}

// mayTerm tells the settler whether h may be terminated now: a message of
// the ordered batch consumer only while this replica may ack (see
// ordered.mayAck).
func (w *Worker) mayTerm(h *held) bool {
	// The batch consumer's messages have a call type (an invalid one
	// too, dead-lettered before it is marked ordered); the direct
	// consumers' have none and no lease.
	return w.ord == nil || h.typ == event.Unknown || w.ord.mayAck()
}
