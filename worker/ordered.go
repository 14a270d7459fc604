package worker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
)

// pinIDHeader carries the pin of the replica a message was delivered to.
const pinIDHeader = "Nats-Pin-Id"

// PriorityGroup is the priority group of the batch consumer when ordering
// is on: its pinned client is the one replica that delivers.
const PriorityGroup = "cio-relay"

const (
	// orderedPullExpiry is how long one pull of an ordered intake waits on
	// an idle stream. The server moves the pin to another replica when the
	// pinned one has sent no pull request for PinnedTTL (an open pull does
	// not count), so an idle pinned replica must ask this often.
	orderedPullExpiry = 3 * time.Second
	// PinnedTTL is the batch consumer's pinned TTL: how long a pinned
	// replica may go without a pull request before another is pinned. More
	// than three pull expiries, so a live replica keeps its pin through two
	// lost requests; short, because it is most of the failover time after
	// a replica dies (the rest is the dead replica's ack wait).
	PinnedTTL = 10 * time.Second
	// barrierPoll is how often a replica that has just been pinned asks the
	// consumer whether anyone else still holds messages.
	barrierPoll = 50 * time.Millisecond
)

// ordered is the batch path with per-key ordering (see doc.go): a gate
// that holds everything until this replica is the only one holding
// messages, then lanes by key, each sending one batch at a time.
type ordered struct {
	w      *Worker
	cons   jetstream.Consumer
	leases *leases[*held]

	mu       sync.Mutex
	pin      string // the Nats-Pin-Id this replica was last delivered with
	inFlight int    // batches being sent
	keys     *keyOrder
	lanes    []*lane
	gate     []*held // received while the barrier is closed
	open     bool    // the barrier has passed since the pin was last gained
	closing  bool    // the reader has stopped: lanes end once empty
	changed  chan struct{}
	one      [1]*held  // routeLocked's scratch
	bodies   sync.Pool // *[]byte: batch bodies, recycled once sent
	// drainedAt is when the source last said it was drained (a call read
	// with nothing pending behind it); zero once a call came that was not.
	// Every lane's partial batch then goes after the linger.
	drainedAt time.Time
}

// lane is one sender's queue: calls of the keys that hash to it, in stream
// order (see queueLocked).
type lane struct {
	queue  []*held
	wake   chan struct{} // cap 1: the queue changed
	oldest time.Time     // when the first call now queued was queued
	linger time.Time     // when a drained call was queued, zero if none
}

func newOrdered(w *Worker, cons jetstream.Consumer, leases *leases[*held]) *ordered {
	o := &ordered{w: w, cons: cons, leases: leases, keys: newKeyOrder(), changed: make(chan struct{}, 1)}
	for range w.opts.SendConcurrency {
		o.lanes = append(o.lanes, &lane{wake: make(chan struct{}, 1)})
	}
	return o
}

// add takes a prepared call from the reader. drained is the batcher hint.
func (o *ordered) add(h *held, pin string, drained bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if pin != o.pin {
		// Pinned anew (the first message, or again after another replica
		// had the pin): what this replica still holds may be older than
		// what the other one delivered.
		if o.pin != "" {
			o.w.log.Warn("pinned again after another replica was; handing back what is not in flight", "consumer", o.cons.CachedInfo().Name)
		}
		o.pin = pin
		o.loseLocked()
	}
	h.parked = true
	h.drained = drained
	if !drained {
		o.drainedAt = time.Time{}
	} else if o.drainedAt.IsZero() {
		o.drainedAt = time.Now()
	}
	if !o.open {
		o.gate = append(o.gate, h)
		signal(o.changed)
		return
	}
	o.routeLocked(h, time.Now())
}

// routeLocked hands a call to the key policy and queues what it frees.
func (o *ordered) routeLocked(h *held, now time.Time) {
	if !o.keys.has(h.key) {
		// The common case, without the policy's allocation.
		o.one[0] = h
		o.queueLocked(o.one[:], now)
		return
	}
	defer o.dropDisplacedLocked()
	o.queueLocked(o.keys.add(h), now)
}

// queueLocked puts calls in their lanes' queues, each by stream sequence.
// Mostly that is appending; but a call released from a wait list (a nakked
// call back after its nak delay) can be older than calls of its key queued
// before it, which were let in while it was in flight, or routed with a
// takeover's whole gate: appended, it would go after them. A queue in
// stream order sends each key's calls in order, and the send-time check
// (filter) holds back those behind a call nakked since.
func (o *ordered) queueLocked(calls []*held, now time.Time) {
	for _, r := range calls {
		l := o.lanes[r.key%uint64(len(o.lanes))]
		if len(l.queue) == 0 {
			l.oldest = now
		}
		if n := len(l.queue); n == 0 || l.queue[n-1].seq <= r.seq {
			l.queue = append(l.queue, r)
		} else {
			// After every queued call of the same sequence: a second copy
			// goes after the first.
			i, _ := slices.BinarySearchFunc(l.queue, r.seq+1, func(q *held, s uint64) int { return cmpUint(q.seq, s) })
			l.queue = slices.Insert(l.queue, i, r)
		}
		signal(l.wake)
		if r.drained {
			// The source is drained for every lane, not just this call's:
			// each partial batch goes after the linger.
			for _, l := range o.lanes {
				if len(l.queue) > 0 && l.linger.IsZero() {
					l.linger = now
					signal(l.wake)
				}
			}
		}
	}
}

// dropDisplacedLocked lets go of older copies of redelivered calls, and
// queues the calls the key policy freed meanwhile.
func (o *ordered) dropDisplacedLocked() {
	if len(o.keys.freed) > 0 {
		o.queueLocked(o.keys.freed, time.Now())
		o.keys.freed = o.keys.freed[:0]
	}
	for _, h := range o.keys.displaced {
		h.parked = false
		o.leases.remove(h)
	}
	o.keys.displaced = o.keys.displaced[:0]
}

// pinLost is the intake's report of a pull answered "pin mismatch": another
// replica delivers now.
func (o *ordered) pinLost() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.log.Warn("lost the consumer's pin to another replica; handing back what is not in flight", "consumer", o.cons.CachedInfo().Name)
	o.pin = ""
	o.loseLocked()
}

// loseLocked closes the barrier and hands back, in stream order and for
// redelivery at once, everything held that is not in flight.
func (o *ordered) loseLocked() {
	o.open = false
	back := o.keys.reset()
	for _, l := range o.lanes {
		back = append(back, l.queue...)
		l.queue, l.linger = nil, time.Time{}
	}
	back = append(back, o.gate...)
	o.gate = nil
	slices.SortFunc(back, func(a, b *held) int { return cmpUint(a.seq, b.seq) })
	for _, h := range back {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
		o.leases.remove(h)
	}
}

// nakked records that h was handed back: its key waits for it.
func (o *ordered) nakked(h *held) {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.dropDisplacedLocked()
	o.keys.nakked(h)
}

// filter returns the calls of a batch about to be sent that may go now;
// the others join their keys' wait lists.
//
// None may go once the barrier has closed since the batch was taken (a
// batch is only taken while it is open, and it opens again only when
// nothing is in flight): the pin was lost, and with it what the key policy
// knew, so the second half of a bisect whose first half was just nakked
// would go unchecked, ahead of that half's redelivery to the replica pinned
// now. Those calls are handed back at once, as loseLocked hands back what
// it holds; a request already under way is left to finish.
func (o *ordered) filter(calls []*held) []*held {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.dropDisplacedLocked()
	if !o.open {
		for _, h := range calls {
			h.parked = false
			o.w.settle(h, "nak", h.msg.Nak())
		}
		return nil
	}
	for i, h := range calls {
		if o.keys.eligible(h) {
			continue
		}
		// Rare: a key blocked since the batch was packed (a bisect's
		// first half nakked, say).
		h.parked = true
		kept := slices.Clone(calls[:i])
		for _, h := range calls[i+1:] {
			if o.keys.eligible(h) {
				kept = append(kept, h)
			} else {
				h.parked = true
			}
		}
		return kept
	}
	return calls
}

// barrier opens the gate once no other replica holds a message of the
// consumer: its NumAckPending is no more than what this replica holds of
// what the server had delivered by then. Then the gate's calls are routed
// in stream order.
func (o *ordered) barrier(ctx context.Context) {
	t := time.NewTicker(barrierPoll)
	defer t.Stop()
	var lastCheck, lastRepair time.Time
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
			// without this replica hearing of it: start over as if the
			// pin were lost, so nothing stale is sent.
			reconnects = n
			if o.pin != "" {
				o.w.log.Warn("reconnected to NATS; handing back what is not in flight and waiting for the barrier again", "consumer", o.cons.CachedInfo().Name)
				o.pin = ""
				o.loseLocked()
			}
		}
		open, holding := o.open, o.holdingLocked()
		o.mu.Unlock()
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
		if !isPinned(info.Config) {
			if time.Since(lastRepair) < pinCheck {
				continue
			}
			lastRepair = time.Now()
			// Rewritten without the policy (by hand, or a tool): pulls
			// then bring messages without a pin, and the barrier cannot
			// pass. Put it back; the next pulls are pinned.
			o.w.log.Warn("the consumer lost its pinned priority group; putting it back", "consumer", info.Name)
			if _, err := o.w.rebindBatch(ctx); err != nil {
				o.w.log.Error("putting the pinned priority group back failed", "consumer", info.Name, "err", err)
			}
			continue
		}
		o.mu.Lock()
		if pinned := pinnedClient(info); o.pin != "" && pinned != "" && pinned != o.pin {
			o.w.log.Warn("the consumer is pinned to another replica; handing back what is not in flight", "consumer", info.Name)
			o.pin = ""
			o.loseLocked()
		}
		if o.open {
			// A blocker the server has acked will not come back.
			o.keys.settled(info.AckFloor.Stream)
			o.dropDisplacedLocked()
		}
		if !o.open && o.pin != "" && o.inFlight == 0 {
			// Distinct sequences: a lease that lapsed while NATS was away
			// brings a second copy of a message, which the server counts
			// once.
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
			o.leases.remove(h)
			continue
		}
		o.routeLocked(h, now)
	}
	o.w.log.Info("pinned: delivering in order", "consumer", o.cons.CachedInfo().Name, "held", len(gate))
}

// run runs the lanes and the barrier while read runs, then lets the lanes
// send what they have (sendCtx bounds that, as for the unordered path) and
// hands back, in stream order, what still waits behind a blocked key.
func (o *ordered) run(sendCtx, bgCtx context.Context, read func()) {
	var wg sync.WaitGroup
	for _, l := range o.lanes {
		wg.Go(func() { o.runLane(sendCtx, l) })
	}
	barrierCtx, stopBarrier := context.WithCancel(bgCtx)
	defer stopBarrier()
	go o.barrier(barrierCtx)
	read()
	o.close()
	wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	back := o.keys.reset()
	slices.SortFunc(back, func(a, b *held) int { return cmpUint(a.seq, b.seq) })
	for _, h := range back {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
		o.leases.remove(h)
	}
}

// close says the reader has stopped: lanes send what they have and end;
// the gate is handed back.
func (o *ordered) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closing = true
	for _, h := range o.gate {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
		o.leases.remove(h)
	}
	o.gate = nil
	for _, l := range o.lanes {
		signal(l.wake)
	}
}

// runLane sends l's calls one batch at a time until close and an empty
// queue.
func (o *ordered) runLane(ctx context.Context, l *lane) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch, wait, done := o.take(l)
		if done {
			return
		}
		if batch == nil {
			timer.Reset(wait)
			select {
			case <-l.wake:
			case <-timer.C:
			}
			continue
		}
		o.w.m.inFlight.Inc()
		body := o.body(batch)
		o.w.send(ctx, batch, *body)
		o.w.m.inFlight.Dec()
		// The sender is done with the body (see Sender): recycle it.
		o.bodies.Put(body)
		o.mu.Lock()
		o.inFlight--
		for _, h := range batch {
			if !h.parked { // parked: set aside by filter, still held
				o.leases.remove(h)
			}
		}
		o.mu.Unlock()
		signal(o.changed)
	}
}

// body builds batch's request body in a recycled buffer.
func (o *ordered) body(batch []*held) *[]byte {
	b, _ := o.bodies.Get().(*[]byte)
	if b == nil {
		b = new([]byte)
	}
	buf := append((*b)[:0], `{"batch":[`...)
	for i, h := range batch {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, h.call...)
	}
	*b = append(buf, `]}`...)
	return b
}

// take returns the lane's next batch when it is due (full, or its oldest
// call waited the flush interval, or a linger passed after a drained call),
// else how long to wait; done once closing and empty.
func (o *ordered) take(l *lane) (batch []*held, wait time.Duration, done bool) {
	batch, tooLarge, wait, done := o.takeLocked(l)
	if tooLarge != nil {
		// Larger than a batch may be (a low BatchMaxBytes): the batcher
		// would refuse it too.
		o.w.deadLetter(context.Background(), tooLarge, string(event.ReasonTooLarge), 0,
			fmt.Sprintf("call of %d bytes does not fit a batch of %d", len(tooLarge.call), o.w.opts.BatchMaxBytes))
		o.leases.remove(tooLarge)
		return nil, 0, false
	}
	return batch, wait, done
}

func (o *ordered) takeLocked(l *lane) (batch []*held, tooLarge *held, wait time.Duration, done bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(l.queue) == 0 {
		return nil, nil, time.Hour, o.closing
	}
	maxBytes, maxCalls := o.w.opts.BatchMaxBytes, o.w.opts.BatchMaxCalls
	size, n := batcher.Overhead, 0
	for n < len(l.queue) && n < maxCalls && size+len(l.queue[n].call)+1 <= maxBytes {
		size += len(l.queue[n].call) + 1
		n++
	}
	now := time.Now()
	due := l.oldest.Add(o.w.opts.FlushInterval)
	linger := l.linger
	if linger.IsZero() && !o.drainedAt.IsZero() {
		linger = o.drainedAt
	}
	if !linger.IsZero() {
		if at := linger.Add(min(batcher.DefaultLinger, o.w.opts.FlushInterval)); at.Before(due) {
			due = at
		}
	}
	full := n < len(l.queue) || n == maxCalls
	if n == 0 {
		// A call larger than a batch: the batcher's limit, dead-lettered.
		h := l.queue[0]
		l.queue = l.queue[1:]
		h.parked = false
		return nil, h, 0, false
	}
	if !full && !o.closing && now.Before(due) {
		return nil, nil, due.Sub(now), false
	}
	batch = slices.Clone(l.queue[:n])
	l.queue = slices.Delete(l.queue, 0, n)
	for _, h := range batch {
		h.parked = false
	}
	l.oldest, l.linger = now, time.Time{}
	for _, h := range l.queue {
		if h.drained {
			l.linger = now
			break
		}
	}
	o.inFlight++
	return batch, nil, 0, false
}

// parseAckCseq reads the consumer sequence (the delivery's own number)
// from a JetStream ack subject; see parseAckPending for the forms.
func parseAckCseq(reply string) (uint64, bool) {
	return ackToken(reply, 4, 6)
}
