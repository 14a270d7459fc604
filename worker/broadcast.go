package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

// pace releases trigger requests as the pacer allows and sends each in its
// own goroutine. When the reader is done (shutdown), triggers still waiting
// for their turn are nakked at once for another replica rather than held
// through the pacing interval.
func (w *Worker) pace(ctx context.Context, p *trigger.Pacer[*held], work, room chan struct{}, readerDone <-chan struct{}, leases *leases[*held]) {
	var inflight sync.WaitGroup
	defer inflight.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	done := readerDone
	for {
		now := time.Now()
		for _, b := range p.Ready(now) {
			oldest := now
			for _, h := range b.Items {
				oldest = minTime(oldest, h.received)
			}
			w.m.pacingWait.Observe(now.Sub(oldest).Seconds())
			inflight.Go(func() {
				w.sendTrigger(ctx, b)
				p.Done(b, time.Now())
				leases.remove(b.Items...)
				signal(work)
				signal(room)
			})
		}
		if done == nil {
			if pending := p.Drain(); len(pending) > 0 {
				w.log.Info("shutting down: nakking broadcast triggers still waiting for their turn", "triggers", len(pending))
				w.nakNow(pending)
				leases.remove(pending...)
			}
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

// sendTrigger sends one (possibly coalesced) trigger request and settles its
// messages. Retries wait at least the pacing interval: a retry is a request
// like any other to Customer.io's per-broadcast limit. A 429 is retried as
// long as the budget lasts and is never a reason to dead-letter on its own.
func (w *Worker) sendTrigger(ctx context.Context, b *trigger.Batch[*held]) {
	var triggerID int64
	// A trigger has no idempotency key: one that may have reached Customer.io
	// (a timeout or reset after sending) is never sent again, as that could
	// message its whole audience twice. It is dead-lettered as ambiguous for
	// an operator to check against the broadcast's triggers.
	err := w.attempt(ctx, "app", &w.appPause, w.opts.BroadcastInterval, sink.MaybeDelivered, func(ctx context.Context) error {
		var err error
		triggerID, err = w.opts.App.Trigger(ctx, b.BroadcastID, b.Body)
		return err
	})
	if sink.MaybeDelivered(err) {
		w.m.direct.WithLabelValues("app", "ambiguous").Inc()
		for _, h := range b.Items {
			w.deadLetter(ctx, h, deadletter.ReasonAmbiguous, 0,
				fmt.Sprintf("broadcast %d: request may have reached Customer.io, not retried: %v", b.BroadcastID, err))
		}
		return
	}
	switch sink.Classify(err) {
	case sink.Delivered:
		w.m.direct.WithLabelValues("app", "delivered").Inc()
		w.m.coalesced.Add(float64(len(b.Items) - 1))
		w.log.Info("broadcast triggered", "broadcast_id", b.BroadcastID, "trigger_id", triggerID,
			"triggers", len(b.Items), "recipients", b.Recipients)
		for _, h := range b.Items {
			w.settle(h, "ack", h.msg.Ack())
		}
	case sink.Reject:
		if len(b.Items) == 1 {
			w.m.direct.WithLabelValues("app", "rejected").Inc()
			w.deadLetter(ctx, b.Items[0], deadletter.ReasonRejected, sink.StatusOf(err), err.Error())
			return
		}
		// One trigger of a coalesced request may have spoiled it for the
		// rest: send each on its own, paced, so only the bad one is
		// dead-lettered.
		w.log.Warn("coalesced trigger request rejected; sending its triggers one by one",
			"broadcast_id", b.BroadcastID, "triggers", len(b.Items), "err", err)
		for i, h := range b.Items {
			if i > 0 && !sleep(ctx, w.opts.BroadcastInterval) {
				w.nakNow(b.Items[i:])
				return
			}
			w.sendTrigger(ctx, &trigger.Batch[*held]{BroadcastID: b.BroadcastID, Body: h.trigger.Body(),
				Items: []*held{h}, Recipients: h.trigger.Recipients()})
		}
	case sink.Retry:
		w.m.direct.WithLabelValues("app", "nakked").Inc()
		w.giveUp(ctx, b.Items, err)
	default: // sink.Cancelled: the shutdown timeout
		if errors.Is(err, errGaveUpBetweenTries) {
			w.nakNow(b.Items)
			return
		}
		// The request was cut off in flight and may have been acted on.
		w.m.direct.WithLabelValues("app", "ambiguous").Inc()
		for _, h := range b.Items {
			w.deadLetter(ctx, h, deadletter.ReasonAmbiguous, 0,
				fmt.Sprintf("broadcast %d: request cut off at shutdown, may have reached Customer.io, not retried: %v", b.BroadcastID, err))
		}
	}
}
