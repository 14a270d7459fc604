package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

// Subjects of the direct calls: Customer.io operations that are not CDP calls
// and cannot be batched.
const (
	SubjectBroadcast  = "cio.broadcast"
	SubjectSuppress   = "cio.suppress"
	SubjectUnsuppress = "cio.unsuppress"
)

// Triggerer sends one API-triggered broadcast request (App API).
type Triggerer interface {
	Trigger(ctx context.Context, broadcastID int64, body []byte) (triggerID int64, err error)
}

// Suppressor suppresses and unsuppresses people (Track API).
type Suppressor interface {
	Suppress(ctx context.Context, identifier string) error
	Unsuppress(ctx context.Context, identifier string) error
}

// directConsumer is one durable consumer of direct calls.
type directConsumer struct {
	name     string
	subjects []string
}

// directConsumers are the consumers of direct calls, one per API that has
// credentials: RELAY_CONSUMER with "-broadcast" or "-suppress" appended.
// Separate from the batch consumer, a broadcast waiting for its 10-second
// turn never holds up batches; separate from each other, replicas configured
// with different credentials never rewrite each other's filters, so one
// replica alone can be given the App API key (strict pacing). An API without
// credentials has no consumer: its messages stay in the stream, unconsumed,
// until a worker with credentials runs. Nothing is dropped for want of a key.
func (w *Worker) directConsumers() []directConsumer {
	var cs []directConsumer
	if w.opts.App != nil {
		cs = append(cs, directConsumer{w.opts.Consumer + "-broadcast", []string{SubjectBroadcast}})
	}
	if w.opts.Track != nil {
		cs = append(cs, directConsumer{w.opts.Consumer + "-suppress", []string{SubjectSuppress, SubjectUnsuppress}})
	}
	return cs
}

// runDirect consumes direct calls until iter is drained: suppressions go to a
// small pool of senders; triggers go through the pacer, which releases at
// most one request per broadcast per trigger.Interval and coalesces what
// waits.
func (w *Worker) runDirect(ctx, nextCtx context.Context, iter jetstream.MessagesContext, idPrefix string, pacer *trigger.Pacer[*held], leases *leases[*held], fail func(error)) {
	var wg sync.WaitGroup
	suppressions := make(chan *held)
	for range w.opts.DirectConcurrency {
		wg.Go(func() {
			for h := range suppressions {
				w.suppress(ctx, h)
				leases.remove(h)
			}
		})
	}
	work := make(chan struct{}, 1) // the pacer may have something to release
	room := make(chan struct{}, 1) // the pacer may have room again
	readerDone := make(chan struct{})
	wg.Go(func() { w.pace(ctx, pacer, work, room, readerDone, leases) })

	var helds []held // carved one by one, as in read
	for {
		msg, err := iter.Next(jetstream.NextContext(nextCtx))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) && nextCtx.Err() == nil {
				w.log.Error("pulling direct calls failed; stopping", "err", err)
				fail(fmt.Errorf("pulling direct calls: %w", err))
			}
			break
		}
		h, ok := w.hold(msg, idPrefix, leases, &helds)
		if !ok {
			continue
		}
		switch msg.Subject() {
		case SubjectSuppress, SubjectUnsuppress:
			id, err := sink.ParseSuppression(msg.Data())
			if err != nil {
				w.rejectInput(ctx, h, err, leases)
				continue
			}
			h.identifier = id
			suppressions <- h
		case SubjectBroadcast:
			req, err := trigger.Parse(msg.Data())
			if err != nil {
				w.rejectInput(ctx, h, err, leases)
				continue
			}
			h.trigger = req
			for {
				err := pacer.Add(req, h)
				if !errors.Is(err, trigger.ErrFull) {
					break
				}
				// Full: wait for an answer to free room. The lease keeps
				// this message alive meanwhile.
				select {
				case <-room:
				case <-ctx.Done():
				}
				if ctx.Err() != nil {
					w.nakNow([]*held{h})
					leases.remove(h)
					break
				}
			}
			signal(work)
		default:
			w.rejectInput(ctx, h, &event.InvalidError{Reason: event.ReasonUnknownType, Detail: "no direct call on subject " + msg.Subject()}, leases)
		}
	}
	close(suppressions)
	close(readerDone)
	wg.Wait()
}

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

// suppress sends one suppression or unsuppression and settles it. The
// identifier is logged hashed: it is often an email address.
func (w *Worker) suppress(ctx context.Context, h *held) {
	action := "suppress"
	call := w.opts.Track.Suppress
	if h.msg.Subject() == SubjectUnsuppress {
		action, call = "unsuppress", w.opts.Track.Unsuppress
	}
	err := w.attempt(ctx, "track", &w.trackPause, 0, nil, func(ctx context.Context) error {
		return call(ctx, h.identifier)
	})
	switch sink.Classify(err) {
	case sink.Delivered:
		w.m.direct.WithLabelValues("track", "delivered").Inc()
		w.m.suppressions.WithLabelValues(action).Inc()
		w.log.Info("suppression applied", "action", action, "identifier_sha256", sink.HashIdentifier(h.identifier))
		w.settle(h, "ack", h.msg.Ack())
	case sink.Reject:
		w.m.direct.WithLabelValues("track", "rejected").Inc()
		w.deadLetter(ctx, h, deadletter.ReasonRejected, sink.StatusOf(err), err.Error())
	case sink.Retry:
		w.m.direct.WithLabelValues("track", "nakked").Inc()
		w.giveUp(ctx, []*held{h}, err)
	default:
		w.nakNow([]*held{h})
	}
}

// signal wakes whoever waits on c, without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
