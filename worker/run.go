package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/trigger"
	"github.com/nats-io/nats.go/jetstream"
)

// Run binds the consumer and delivers until ctx is done. Then it stops
// pulling, flushes the open batch and lets in-flight sends finish for up to
// ShutdownTimeout; whatever is not delivered by then is nakked so another
// replica takes it at once. Run returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	cons, idPrefix, err := w.bind(ctx)
	if err != nil {
		return err
	}
	if w.triggers.marks, err = w.bindSentMarks(ctx); err != nil {
		return err
	}
	w.triggers.turns = w.bindTurns(ctx)
	b, err := batcher.New[*held](w.opts.BatchMaxBytes, w.opts.BatchMaxCalls, w.opts.FlushInterval)
	if err != nil {
		return err
	}
	leases := newLeases[*held](time.Second) // interval set below, once every consumer is bound
	intakes, consumers, pacers, err := w.openIntakes(ctx, cons, idPrefix, leases)
	if err != nil {
		return err
	}
	w.warnUnconfigured()
	for _, in := range intakes {
		in.health = w.health
	}
	w.ready.Store(true)
	defer w.ready.Store(false)
	w.log.Info("consuming", "stream", w.opts.Stream, "consumer", w.opts.Consumer, "dlq_stream", w.opts.DLQStream,
		"batch_max_bytes", w.opts.BatchMaxBytes, "batch_max_calls", w.opts.BatchMaxCalls,
		"flush_interval", w.opts.FlushInterval.String(), "send_concurrency", w.opts.SendConcurrency, "ordering", w.opts.Ordering)

	// Three lifetimes (see shutdown.go): stop, the pulling, ends with ctx
	// or when a consumer fails, and the drain begins; sendCtx, the requests
	// to Customer.io, outlives it through the drain, until the hard stop;
	// bgCtx, leases, consumer sampling and watchers, lasts until the
	// pipeline has finished, so everything held keeps its lease to the end.
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSend()
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()

	leases.setInterval(leaseInterval(consumerAckWaits(consumers)))
	calls := make(chan []batcher.Call[*held])
	batches := make(chan *batcher.Batch[*held])

	var wg sync.WaitGroup
	wg.Go(func() {
		leases.run(bgCtx, func(err error) {
			// A message settled between the keeper's snapshot and its
			// InProgress is no one's concern.
			if !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				w.log.Warn("extending ack deadline failed", "err", err)
			}
		})
	})
	wg.Go(func() { w.sampleConsumers(bgCtx, consumers, leases) })
	for _, dc := range w.directConsumers() {
		if dc.ordered && w.opts.ManageStreams {
			wg.Go(func() { w.watchOrdered(bgCtx, dc) })
		}
	}
	// stop ends when ctx does, or when a reader's consumer fails (deleted,
	// say): then everything winds down as for a shutdown and Run returns
	// the failure, so the process restarts instead of idling as "ready".
	stop, stopAll := context.WithCancelCause(ctx)
	defer stopAll(nil)
	fail := func(err error) { stopAll(err) }
	stopped := make(chan struct{})
	wg.Go(func() {
		shutdown{timeout: w.opts.ShutdownTimeout, hardStop: cancelSend, log: w.log}.
			watch(stop.Done(), stopped, func() { w.ready.Store(false) })
	})

	var pipe sync.WaitGroup
	for _, in := range intakes {
		// An intake ends when stop does, or with an error when its
		// consumer is gone; either way it closes its queue, which ends its
		// reader once everything received has been handed on.
		pipe.Go(func() {
			if err := in.run(stop); err != nil {
				w.log.Error("pulling messages failed; stopping", "consumer", in.name, "err", err)
				fail(err)
			}
		})
	}
	if w.ord != nil {
		// Lanes by person key instead of one batcher and N senders.
		pipe.Go(func() { w.ord.run(sendCtx, bgCtx, func() { w.read(sendCtx, intakes[0], leases, nil) }) })
	} else {
		pipe.Go(func() {
			defer close(calls)
			w.read(sendCtx, intakes[0], leases, calls)
		})
		pipe.Go(func() {
			defer close(batches)
			// The batcher's context is never cancelled: it ends when the reader
			// closes calls, and its last batch reaches a sender, which nakks it
			// at once if the shutdown timeout has passed.
			_ = b.RunSlices(context.Background(), calls, batches, func(c batcher.Call[*held], err error) {
				w.deadLetter(sendCtx, c.Item, event.ReasonTooLarge, 0, err.Error())
				leases.remove(c.Item)
				releaseCalls([]*held{c.Item})
			})
		})
		pipe.Go(func() { w.dispatch(sendCtx, batches, leases) })
	}
	for i, in := range intakes[1:] {
		pipe.Go(func() { w.runDirect(sendCtx, in, pacers[i], leases) })
	}
	pipe.Wait()

	close(stopped)
	stopBackground()
	wg.Wait()
	flushSettlements(w.js.Conn(), w.log)
	if ctx.Err() != nil {
		w.log.Info("stopped", "reason", context.Cause(ctx).Error())
		return nil
	}
	return context.Cause(stop)
}

// openIntakes binds the direct consumers and makes an intake for each
// consumer, the batch consumer's first, and a pacer for each direct one.
func (w *Worker) openIntakes(ctx context.Context, cons jetstream.Consumer, idPrefix string, leases *leases[*held]) (
	[]*intake, []jetstream.Consumer, []*trigger.Pacer[*held], error) {
	// About one batch's worth received ahead of the batcher: enough to keep
	// it busy. Carved one by one from shared blocks: one allocation per
	// heldSlab messages, which pass through within seconds.
	var helds []held
	intakes := []*intake{newIntake(cons, w.pullAhead(cons), func(m jetstream.Msg) (*held, bool) {
		return w.hold(m, idPrefix, leases, func() *held {
			if len(helds) == 0 {
				helds = make([]held, heldSlab)
			}
			h := &helds[0]
			helds = helds[1:]
			return h
		})
	}, w.log)}
	intakes[0].repair = w.rebindBatch
	if w.opts.Ordering {
		lease, err := w.bindDeliveryLease(ctx, cons.CachedInfo().Name)
		if err != nil {
			return nil, nil, nil, err
		}
		w.ord = newOrdered(w, cons, leases, intakes[0], lease)
		intakes[0].pinLost = w.ord.pinLost
		intakes[0].allowed = w.ord.mayPull
		intakes[0].shortPulls = true
		intakes[0].use(cons)
	}
	consumers := []jetstream.Consumer{cons} // the batch consumer first
	var pacers []*trigger.Pacer[*held]
	for _, dc := range w.boundDirectConsumers(ctx) {
		pacer, err := trigger.NewPacer[*held](trigger.PacerOptions{Interval: w.opts.BroadcastInterval})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("broadcast pacing: %w", err)
		}
		pacers = append(pacers, pacer)
		cons, err := w.bindDirect(ctx, dc)
		if err != nil {
			return nil, nil, nil, err
		}
		// Direct calls are few and slow (one trigger per broadcast per
		// 10s): receive little ahead (intakeCapacity). A trigger may wait
		// for its turn for hours, so each record is allocated on its own
		// and freed once settled, rather than carved from a block that
		// lives as long as its longest-waiting member.
		intakes = append(intakes, newIntake(cons, dc.intakeCapacity(), func(m jetstream.Msg) (*held, bool) {
			return w.hold(m, idPrefix, leases, func() *held { return new(held) })
		}, w.log))
		consumers = append(consumers, cons)
	}
	return intakes, consumers, pacers, nil
}

// warnUnconfigured says which subjects this worker leaves in the stream for
// want of credentials.
func (w *Worker) warnUnconfigured() {
	if w.opts.App == nil {
		w.log.Warn("broadcast triggers not configured (CIO_APP_API_KEY unset): messages on " + SubjectBroadcast +
			" stay in the stream, unconsumed, until a worker with the key runs")
	}
	if w.opts.Track == nil {
		w.log.Warn("suppressions not configured (CIO_SITE_ID/CIO_TRACK_API_KEY unset): messages on " + SubjectSuppress +
			" and " + SubjectUnsuppress + " stay in the stream, unconsumed, until a worker with the credentials runs")
	}
	if w.opts.Delivery == nil {
		w.log.Warn("unsubscribes and delivery metrics not configured: messages on " + SubjectUnsubscribe + " and " + SubjectMetric +
			" stay in the stream, unconsumed, until a worker that sends them runs")
	}
}
