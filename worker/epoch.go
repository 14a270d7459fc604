package worker

import (
	"context"
	"errors"
	"time"
)

// An epoch is one tenure of the ordered delivery lease (holder.go): from
// taking it to letting it go. The ordered path pulls, sends and acks only
// within one, and everything it holds belongs to the current one.

// leasePoll is how often a replica without the delivery lease tries to
// take it.
const leasePoll = 250 * time.Millisecond

// Why an epoch ended, the reason label of cio_relay_ordered_lease_released_total.
const (
	endPinLost     = "pin_lost"
	endReconnected = "reconnected"
	endLeaseLost   = "lease_lost"
	endNotAcked    = "not_acked"
	endStopped     = "stopped"
)

// errNotHolder ends an ordered request before it is sent: this replica is
// not (or not for long enough) the holder of the delivery lease.
var errNotHolder = errors.New("not the holder of the ordered delivery lease")

// runEpochs takes the lease whenever it is free, keeps it while this
// replica delivers, and lets it go when an epoch ends, until ctx is done.
// The lease held at the end is let go by run, after the last sends (its
// ctx ends only then).
func (o *ordered) runEpochs(ctx context.Context) {
	for o.takeLease(ctx) {
		o.keepLease(ctx)
		if ctx.Err() != nil {
			return
		}
		o.letGo(ctx)
		o.mu.Lock()
		closing := o.closing
		o.mu.Unlock()
		if closing {
			return // stopping: not worth taking again for the drain
		}
	}
}

// takeLease waits until this replica holds the lease: false if ctx ends
// first.
func (o *ordered) takeLease(ctx context.Context) bool {
	t := time.NewTicker(leasePoll)
	defer t.Stop()
	waiting := false
	var warned time.Time
	for {
		o.mu.Lock()
		closing := o.closing
		o.mu.Unlock()
		if closing {
			return false
		}
		ok, err := o.lease.acquire(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			o.w.health.failed(opKV, err, time.Now())
		case ok:
			// Written: JetStream answered. "Held by another" is not
			// counted as an answer: acquire reports it also when the
			// read or the write that would adopt the key failed.
			o.w.health.answered()
		}
		switch {
		case ok:
			o.mu.Lock()
			select {
			case <-o.end: // an old epoch's
			default:
			}
			o.holding, o.epochStart, o.pin = true, time.Now(), ""
			o.mu.Unlock()
			o.w.m.deliveryLease.Set(1)
			o.w.log.Info("took the ordered delivery lease: pulling and delivering", "consumer", o.consumerName(), "replica", o.lease.replica)
			// A pin now is a replica's that died holding the lease (or of
			// an older version, without one): a pull without the pin id
			// would wait PinnedTTL behind it.
			o.unpin(ctx)
			signal(o.in.freed)
			return true
		case err != nil && ctx.Err() == nil && time.Since(warned) >= time.Minute:
			warned = time.Now()
			o.w.log.Warn("could not take the ordered delivery lease; trying again every 250ms (logged once a minute)", "consumer", o.consumerName(), "err", err)
		case !waiting && err == nil:
			waiting = true
			o.w.log.Info("another replica holds the ordered delivery lease; waiting for it", "consumer", o.consumerName(),
				"key", o.lease.key, "holder", o.holderName(ctx))
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// holderName is the replica named in the lease's value, for a log line.
func (o *ordered) holderName(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	e, err := o.lease.store.Get(ctx, o.lease.key)
	if err != nil {
		return ""
	}
	replica, _, _ := parseDeliveryLease(e.value)
	return replica
}

// keepLease renews the lease until the epoch ends or ctx is done.
func (o *ordered) keepLease(ctx context.Context) {
	t := time.NewTicker(o.lease.renewEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.end:
			return
		case <-t.C:
		}
		err := o.lease.renew(ctx)
		if ctx.Err() == nil && !errors.Is(err, errLeaseLost) {
			o.w.health.observe(opKV, err, time.Now())
		}
		switch {
		case errors.Is(err, errLeaseLost):
			o.endEpoch(endLeaseLost)
			return
		case err != nil && ctx.Err() == nil:
			o.w.log.Warn("renewing the ordered delivery lease failed; trying again", "consumer", o.consumerName(),
				"valid_for", time.Until(o.lease.end()).Round(time.Millisecond).String(), "err", err)
		}
	}
}

// endEpoch ends the epoch (see endEpochLocked).
func (o *ordered) endEpoch(why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endEpochLocked(why)
}

// endEpochLocked stops this replica pulling, sending and acking ordered
// calls: it hands back what it holds that is not in flight, and has
// keepLease return so that letGo lets the lease go once the rest is done.
func (o *ordered) endEpochLocked(why string) {
	if !o.holding {
		return
	}
	o.holding, o.pin = false, ""
	o.loseLocked()
	o.w.m.epochsEnded.WithLabelValues(why).Inc()
	o.w.log.Warn("letting the ordered delivery lease go; handing back what is not in flight", "consumer", o.consumerName(), "reason", why)
	signal(o.end)
	if o.in != nil {
		signal(o.in.freed) // the intake: no more pulls
	}
}

// letGo releases the lease once nothing of the epoch can reach the server
// any more: no request in flight, no pull open, every ack and nak flushed.
// The consumer is unpinned first, so that the next holder is pinned at
// once rather than after PinnedTTL.
func (o *ordered) letGo(ctx context.Context) {
	t := time.NewTicker(barrierPoll)
	defer t.Stop()
	for {
		o.mu.Lock()
		idle := o.inFlight == 0
		o.mu.Unlock()
		if idle && !o.in.pulling.Load() {
			break
		}
		select {
		case <-ctx.Done():
			return // run lets it go, after the last sends
		case <-t.C:
		}
	}
	if !o.lease.valid() {
		// Run out (or never taken): another replica may hold it now, and
		// its pin is not this replica's to clear.
		o.lease.drop()
		o.w.m.deliveryLease.Set(0)
		return
	}
	if nc := o.w.js.Conn(); nc != nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
		err := nc.FlushWithContext(fctx)
		cancel()
		if err != nil {
			// Acks that may still reach the server: keep the lease until
			// it runs out rather than let another replica count them.
			o.w.log.Warn("could not flush acks before letting the ordered delivery lease go; leaving it to expire", "consumer", o.consumerName(),
				"expires_in", time.Until(o.lease.end().Add(leaseMargin)).Round(time.Second).String(), "err", err)
			o.lease.drop()
			o.w.m.deliveryLease.Set(0)
			return
		}
	}
	o.unpin(ctx)
	if err := o.lease.release(ctx); err != nil {
		if ctx.Err() == nil {
			o.w.health.failed(opKV, err, time.Now())
		}
		o.w.log.Warn("could not release the ordered delivery lease; it expires by itself", "consumer", o.consumerName(), "err", err)
	}
	o.w.m.deliveryLease.Set(0)
}

// unpin asks the server to unpin the batch consumer's priority group, so
// the next replica's pull is pinned at once.
func (o *ordered) unpin(ctx context.Context) {
	if o.cons == nil || !isPinned(o.cons.CachedInfo().Config) {
		return // no pin to clear (see checkPinned)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	stream, err := o.w.js.Stream(ctx, o.w.opts.Stream)
	if err == nil {
		err = stream.UnpinConsumer(ctx, o.consumerName(), PriorityGroup)
	}
	if err != nil {
		o.w.log.Warn("could not unpin the consumer; the next replica is pinned once the pin expires", "consumer", o.consumerName(),
			"pinned_ttl", PinnedTTL.String(), "err", err)
	}
}

// mayPull reports whether the intake may ask for messages: only in an
// epoch.
func (o *ordered) mayPull() bool {
	o.mu.Lock()
	holding := o.holding
	o.mu.Unlock()
	return holding && o.lease.valid()
}

// stopRetrying is attempt's stop for ordered requests: no retry once the
// lease is not this replica's, or its epoch has ended (the calls are
// handed back, not kept through a backoff).
func (o *ordered) stopRetrying(err error) bool {
	if errors.Is(err, errNotHolder) {
		return true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.holding
}

// ackDelivered acks a delivered ordered batch, each call only while the
// lease lets this replica ack: an ack that blocks (a congested connection)
// must not carry the next ones past the lease's end. What it may not ack
// any more it hands back, ending the epoch.
func (o *ordered) ackDelivered(calls []*held) {
	byType := o.w.m.deliveredByType
	for i, h := range calls {
		if !o.mayAck() {
			o.handBack(calls[i:], endNotAcked)
			return
		}
		byType.inc(h.typ)
		if err := h.msg.Ack(); err != nil {
			o.w.settle(h, "ack", err)
		}
	}
}

// leased wraps an ordered request: it is sent only within an epoch, and
// cut off before the lease could run out.
func (o *ordered) leased(send func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		o.mu.Lock()
		holding := o.holding
		o.mu.Unlock()
		by, ok := o.lease.sendBy()
		if !holding || !ok {
			return errNotHolder
		}
		ctx, cancel := context.WithDeadline(ctx, by)
		defer cancel()
		return send(ctx)
	}
}

// mayAck reports whether this replica may ack ordered calls now: the lease
// is valid and the connection up, so the acks reach the server while no
// other replica can hold the lease.
func (o *ordered) mayAck() bool {
	if !o.lease.valid() {
		return false
	}
	nc := o.w.js.Conn()
	return nc == nil || nc.IsConnected()
}

// handBack nakks calls of a request that was not sent, or was answered
// when it could not be acked, and ends the epoch: another holder (or this
// one, again) sends them, duplicates of what was accepted included.
func (o *ordered) handBack(calls []*held, why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, h := range calls {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
	}
	o.endEpochLocked(why)
}

// consumerName is the batch consumer's name, for logs.
func (o *ordered) consumerName() string {
	if o.cons == nil { // tests of the lanes alone
		return ""
	}
	return o.cons.CachedInfo().Name
}
