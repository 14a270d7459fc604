package worker

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// barrier opens the gate once no other replica holds a message of the
// consumer: its NumAckPending is no more than what this replica holds of
// what the server had delivered by then, all received in this epoch. Then
// the gate's calls are routed in stream order.
func (o *ordered) barrier(ctx context.Context) {
	t := time.NewTicker(barrierPoll)
	defer t.Stop()
	var lastCheck time.Time
	reconnects := o.reconnects()
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.changed:
		case <-t.C:
		}
		o.mu.Lock()
		if n := o.reconnects(); n != reconnects {
			// Away from NATS, leases may have lapsed and the pin moved
			// without this replica hearing of it, and acks may have
			// waited in the client: end the epoch, so nothing stale is
			// sent or counted, and take the lease again.
			reconnects = n
			o.endEpochLocked(endReconnected)
		}
		open, holding, epoch := o.open, o.holdingLocked(), o.holding
		o.mu.Unlock()
		if !epoch {
			continue // another replica delivers: nothing to ask the server
		}
		// While open, the consumer is asked now and then whether this
		// replica still has the pin: one whose pulls no longer carry the
		// pin id (after a reconnect, say) is never told by a 423.
		if open && (!holding || time.Since(lastCheck) < pinCheck) {
			continue
		}
		lastCheck = time.Now()
		infoCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := o.cons.Info(infoCtx)
		cancel()
		if err != nil {
			continue
		}
		o.mu.Lock()
		if pinned := pinnedClient(info); o.pin != "" && pinned != "" && pinned != o.pin {
			o.w.log.Warn("the consumer is pinned to another replica", "consumer", info.Name)
			o.endEpochLocked(endPinLost)
		}
		if o.open {
			// A blocker the server has acked will not come back.
			o.keys.settled(info.AckFloor.Stream)
			o.dropDisplacedLocked()
		}
		if !o.open && o.holding && o.inFlight == 0 {
			// Everything held was received in this epoch, in which no
			// other replica acks (holder.go): each is pending, and the
			// count is exact. Distinct sequences: a message whose lease
			// lapsed comes a second time, and the server counts it once.
			mine := make(map[uint64]struct{}, len(o.gate))
			for _, h := range o.gate {
				if h.cseq <= info.Delivered.Consumer {
					mine[h.seq] = struct{}{}
				}
			}
			if info.NumAckPending <= len(mine) {
				o.openLocked()
			}
		}
		o.mu.Unlock()
	}
}

// reconnects is how often the connection has reconnected to NATS.
func (o *ordered) reconnects() uint64 {
	if nc := o.w.js.Conn(); nc != nil {
		return nc.Stats().Reconnects
	}
	return 0
}

// pinCheck is how often a replica that holds ordered calls checks that it
// still has the pin.
const pinCheck = time.Second

// pinnedClient is the pin id the consumer's priority group has now; ""
// when none.
func pinnedClient(info *jetstream.ConsumerInfo) string {
	for _, g := range info.PriorityGroups {
		if g.Group == PriorityGroup {
			return g.PinnedClientID
		}
	}
	return ""
}

// holdingLocked reports whether anything waits in the gate, a lane or a
// wait list.
func (o *ordered) holdingLocked() bool {
	if len(o.gate) > 0 || len(o.keys.keys) > 0 {
		return true
	}
	for _, l := range o.lanes {
		if len(l.queue) > 0 {
			return true
		}
	}
	return false
}

// openLocked opens the barrier: the gate's calls go to their lanes in
// stream order, with no key blocked (everything pending is in this
// replica's hands).
func (o *ordered) openLocked() {
	o.open = true
	// Calls set aside by a send that was in flight when the pin was lost
	// join the gate: nothing of this replica's past blocks a key now.
	gate := append(o.gate, o.keys.reset()...)
	o.gate = nil
	slices.SortFunc(gate, func(a, b *held) int {
		if c := cmpUint(a.seq, b.seq); c != 0 {
			return c
		}
		return cmpUint(a.cseq, b.cseq)
	})
	now := time.Now()
	for i, h := range gate {
		if i+1 < len(gate) && gate[i+1].seq == h.seq {
			// Two copies of one sequence: the later delivery is the live
			// one; this one's lease is gone.
			h.parked = false
			o.dropCalls([]*held{h})
			continue
		}
		o.routeLocked(h, now)
	}
	o.w.log.Info("barrier passed: delivering in order", "consumer", o.cons.CachedInfo().Name, "held", len(gate))
}
