package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

// triggerRunner sends the broadcast triggers of the -broadcast consumer:
// the pacer releases at most one request per broadcast per interval, each
// request waits for its broadcast's turn across replicas (turns), is
// marked before it is sent so it is never sent twice (marks), and its
// triggers are settled by the outcome (see decide). runDirect feeds the
// pacer; pace sends what it releases.
type triggerRunner struct {
	*retrier
	*settler
	pause      *pauseState // the App API's
	app        Triggerer
	marks      *sentMarks // bound by Run
	turns      *turns     // bound by Run
	interval   time.Duration
	maxDeliver int
	nakDelay   time.Duration
	health     *jsHealth
	m          *metrics
	log        *slog.Logger
}

// pace releases trigger requests as the pacer allows and sends each in its
// own goroutine. When the reader is done (shutdown), triggers still waiting
// for their turn are nakked at once for another replica rather than held
// through the pacing interval; so are the halves of a merged request that
// was rejected while in flight, which the pacer took back to send later.
func (w *triggerRunner) pace(ctx context.Context, p *trigger.Pacer[*held], work, room chan struct{}, readerDone <-chan struct{}, leases *leases[*held]) {
	var inflight sync.WaitGroup
	handBack := func() {
		if pending := p.Drain(); len(pending) > 0 {
			w.log.Info("shutting down: nakking broadcast triggers still waiting for their turn", "triggers", len(pending))
			w.nakNow(pending)
			leases.remove(pending...)
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	done := readerDone
	for {
		now := time.Now()
		for _, b := range p.Ready(now) {
			inflight.Go(func() {
				settled := w.sendTrigger(ctx, readerDone, p, b)
				leases.remove(settled...)
				signal(work)
				signal(room)
			})
		}
		if done == nil {
			handBack()
			inflight.Wait()
			handBack() // what a rejected request in flight put back
			return
		}
		if next, ok := p.Next(); ok {
			timer.Reset(time.Until(next))
		}
		select {
		case <-work:
		case <-timer.C:
		case <-done:
			done = nil
		}
	}
}

// sendTrigger sends one (possibly coalesced) trigger request, settles the
// messages it is done with, answers the pacer, and returns the messages
// that left the pacer (settled), whose leases end.
//
// A trigger has no idempotency key, so it must never be sent twice:
//
//   - Before each request its marker says "sending" (see sentmark.go); a
//     trigger whose marker an earlier delivery wrote is not sent: acked
//     when it was sent, dead-lettered as ambiguous when the earlier
//     request's answer is unknown. Without the marker bucket, nothing is
//     sent (nak with a delay).
//   - A request that may have reached Customer.io (a timeout or reset after
//     sending, a 502 or 504 from a gateway, cut off at shutdown) is not
//     retried: its triggers are dead-lettered as ambiguous, for an operator
//     to check against the broadcast's triggers.
//   - After a 2xx the marker says "sent" before the messages are acked
//     (DoubleAck), so a lost ack brings back a trigger that is then acked
//     without being sent.
//
// Each request, a retry included, waits for its broadcast's turn across
// replicas (see turns.go), and stops waiting, to be nakked, when stopping
// closes. Retries wait at least the pacing interval: a retry is a request
// like any other to Customer.io's per-broadcast limit. A 429 is retried as long as
// the budget lasts and is never a reason to dead-letter on its own. A
// rejected request of several triggers goes back to the pacer in halves
// (Pacer.Split), each sent in its broadcast's turn, so only a trigger
// rejected on its own is dead-lettered.
func (w *triggerRunner) sendTrigger(ctx context.Context, stopping <-chan struct{}, p *trigger.Pacer[*held], b *trigger.Batch[*held]) []*held {
	var triggerID int64
	var c *markClaim
	requested := false        // a request for b may have reached Customer.io
	var requestedAt time.Time // when the last request was sent
	waited := false
	err := w.attempt(ctx, sink.APIApp, w.pause, w.interval, stopTrigger, func(ctx context.Context) error {
		t, err := w.turns.acquire(ctx, stopping, b.BroadcastID)
		if err != nil {
			return err
		}
		if !waited {
			// Its turn in this replica and across replicas.
			waited = true
			w.observePacingWait(b)
		}
		reqCtx, cancel := t.context(ctx)
		defer cancel()
		if c, err = w.marks.claim(reqCtx, b.Items); err != nil {
			t.unused(ctx)
			return err
		}
		requested, requestedAt = true, time.Now()
		triggerID, err = w.app.Trigger(reqCtx, b.BroadcastID, b.Body)
		t.answered(ctx, retryAfter(err))
		if err != nil && !sink.MaybeTriggered(err) && sink.Classify(err) != sink.Cancelled {
			// Customer.io answered that it did not act: a later request
			// may send these triggers.
			if n := w.marks.release(ctx, c); n > 0 {
				w.log.Warn("could not clear broadcast trigger markers after a failed request; those triggers will be dead-lettered as ambiguous rather than sent",
					"broadcast_id", b.BroadcastID, "markers", n)
			}
			c = nil
		}
		return err
	})
	now := time.Now()
	s := settlement{outcome: outcome{Class: sink.Classify(err), Kind: kindTrigger, Calls: len(b.Items),
		Status: statusOf(err), MaxDeliver: w.maxDeliver, NakDelay: w.nakDelay,
		MaybeSent: sink.MaybeTriggered(err), BetweenTries: errors.Is(err, errGaveUpBetweenTries),
		ShuttingDown: ctx.Err() != nil}, err: err, requestedAt: requestedAt}
	var conflict *markConflict
	var kvErr *markError
	switch {
	case errors.As(err, &conflict):
		return w.sentBefore(ctx, p, b, conflict, requested, now)
	case errors.As(err, &kvErr):
		w.health.failed(opKV, err, now)
		w.m.direct.WithLabelValues(string(sink.APIApp), "nakked").Inc()
		w.log.Error("broadcast trigger markers unreachable: not sending blind; nakking for later", "broadcast_id", b.BroadcastID,
			"triggers", len(b.Items), "err", err)
		s.MarkersDown = true
		w.settleCalls(ctx, b.Items, s)
		if requested {
			p.Defer(b.BroadcastID, now.Add(w.interval))
		}
		p.Withdraw(b, func(*held) bool { return true })
		return b.Items
	case s.MaybeSent:
		w.m.direct.WithLabelValues(string(sink.APIApp), "ambiguous").Inc()
		s.detail = fmt.Sprintf("broadcast %d: request may have reached Customer.io, not retried: %v", b.BroadcastID, err)
		w.settleCalls(ctx, b.Items, s)
		p.Done(b, now)
		return b.Items
	}
	switch s.Class {
	case sink.Delivered:
		if n := w.marks.sent(ctx, c, triggerID); n > 0 {
			w.health.failed(opKV, nil, now)
			w.log.Warn("broadcast triggered but not all markers recorded it; if their acks are lost too, those triggers are dead-lettered as ambiguous",
				"broadcast_id", b.BroadcastID, "trigger_id", triggerID, "markers", n)
		}
		w.m.direct.WithLabelValues(string(sink.APIApp), "delivered").Inc()
		w.m.coalesced.Add(float64(len(b.Items) - 1))
		w.log.Info("broadcast triggered", "broadcast_id", b.BroadcastID, "trigger_id", triggerID,
			"triggers", len(b.Items), "recipients", b.Recipients)
	case sink.Reject:
		if decide(s.outcome).Verb == verbSplit && p.Split(b, now) {
			// One trigger of a merged request may have spoiled it for the
			// rest: its halves go back to the pacer, each waiting its turn.
			w.m.direct.WithLabelValues(string(sink.APIApp), "split").Inc()
			w.log.Warn("coalesced trigger request rejected; sending it again in halves, each in its broadcast's turn",
				"broadcast_id", b.BroadcastID, "triggers", len(b.Items), "status", sink.StatusOf(err), "err", err)
			return nil
		}
		w.m.direct.WithLabelValues(string(sink.APIApp), "rejected").Inc()
		// The pacer would not split it: the first trigger stands for the request.
		s.Calls = 1
		w.settleCalls(ctx, b.Items[:1], s)
		p.Done(b, now)
		return b.Items
	case sink.Retry:
		w.m.direct.WithLabelValues(string(sink.APIApp), "nakked").Inc()
	case sink.Cancelled:
		if !s.BetweenTries {
			// The request was cut off in flight and may have been acted on.
			w.m.direct.WithLabelValues(string(sink.APIApp), "ambiguous").Inc()
			s.detail = fmt.Sprintf("broadcast %d: request cut off at shutdown, may have reached Customer.io, not retried: %v", b.BroadcastID, err)
		}
	}
	w.settleCalls(ctx, b.Items, s)
	p.Done(b, now)
	return b.Items
}

// observePacingWait records how long the oldest trigger of b waited for
// its request to be sent.
func (w *triggerRunner) observePacingWait(b *trigger.Batch[*held]) {
	now := time.Now()
	oldest := now
	for _, h := range b.Items {
		oldest = minTime(oldest, h.received)
	}
	w.m.pacingWait.Observe(now.Sub(oldest).Seconds())
}

// retryAfter is the Retry-After of a 429 (or 503), 0 for any other answer.
func retryAfter(err error) time.Duration {
	var se *sink.StatusError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

// stopTrigger tells attempt not to retry a trigger request that may have
// been acted on, nor one whose markers could not be written or say it was
// sent before.
func stopTrigger(err error) bool {
	var conflict *markConflict
	var kvErr *markError
	return sink.MaybeTriggered(err) || errors.As(err, &conflict) || errors.As(err, &kvErr)
}

// sentBefore settles the triggers of b whose markers an earlier delivery
// wrote, without sending them, and gives the rest back to the pacer to be
// sent at once in a request without them.
func (w *triggerRunner) sentBefore(ctx context.Context, p *trigger.Pacer[*held], b *trigger.Batch[*held], conflict *markConflict, requested bool, now time.Time) []*held {
	gone := make(map[*held]bool, len(conflict.found))
	var acks []*held
	for _, f := range conflict.found {
		gone[f.h] = true
		if f.sent {
			w.m.direct.WithLabelValues(string(sink.APIApp), "already_sent").Inc()
			w.log.Info("broadcast trigger was sent by an earlier delivery whose ack was lost; acking it without sending",
				"broadcast_id", b.BroadcastID, "stream_seq", f.h.seq, "deliveries", f.h.deliveries, "marker", f.value)
			acks = append(acks, f.h)
			continue
		}
		w.m.direct.WithLabelValues(string(sink.APIApp), "ambiguous").Inc()
		// The marker was written just before the earlier request: its
		// time is the request's.
		w.deadLetterRequested(ctx, f.h, f.since, fmt.Sprintf(
			"broadcast %d: an earlier delivery began sending this trigger at %s and recorded no answer; it may have reached Customer.io, not sent again",
			b.BroadcastID, f.since.UTC().Format(time.RFC3339)))
	}
	w.doubleAck(ctx, acks)
	if requested {
		// An earlier try of this batch made a request: its turn is used.
		p.Defer(b.BroadcastID, now.Add(w.interval))
	}
	p.Withdraw(b, func(h *held) bool { return gone[h] })
	settled := make([]*held, 0, len(gone))
	for h := range gone {
		settled = append(settled, h)
	}
	return settled
}
