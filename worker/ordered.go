package worker

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// pinIDHeader carries the pin of the replica a message was delivered to.
const pinIDHeader = "Nats-Pin-Id"

// PriorityGroup is the priority group of the batch consumer when ordering
// is on: its pinned client is the one replica that delivers.
const PriorityGroup = "cio-relay"

const (
	// orderedPullExpiry is how long one pull of an ordered intake waits on
	// an idle stream: the handover of the delivery lease waits for the
	// last one (letGo), and on a pinned consumer the server moves the pin
	// to another replica when the pinned one has sent no pull request for
	// PinnedTTL (an open pull does not count), so an idle pinned replica
	// must ask this often.
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
	lease  *deliveryLease   // whose epoch it is (holder.go, epoch.go)
	in     *intake          // the batch intake: pulls only in an epoch
	end    chan struct{}    // cap 1: the epoch has ended
	stop   func(error) bool // stopRetrying, made once

	mu         sync.Mutex
	holding    bool      // in an epoch: this replica holds the lease and delivers
	epochStart time.Time // when the epoch began: what was received before is not its own
	lastUnpin  time.Time // when a stale pin was last cleared (pinLost)
	pin        string    // the Nats-Pin-Id this replica was last delivered with in this epoch
	inFlight   int       // batches being sent
	keys       *keyOrder
	lanes      []*lane
	gate       []*held // received while the barrier is closed
	open       bool    // the barrier has passed since the pin was last gained
	closing    bool    // the reader has stopped: lanes end once empty
	changed    chan struct{}
	one        [1]*held // routeLocked's scratch
	// drainedAt is when the source last said it was drained (a call read
	// with nothing pending behind it); zero once a call came that was not.
	// Every lane's partial batch then goes after the linger.
	drainedAt time.Time
}

func newOrdered(w *Worker, cons jetstream.Consumer, leases *leases[*held], in *intake, lease *deliveryLease) *ordered {
	o := &ordered{w: w, cons: cons, leases: leases, in: in, lease: lease, keys: newKeyOrder(),
		changed: make(chan struct{}, 1), end: make(chan struct{}, 1)}
	o.stop = o.stopRetrying
	for range w.opts.SendConcurrency {
		o.lanes = append(o.lanes, &lane{wake: make(chan struct{}, 1)})
	}
	return o
}

// add takes a prepared call from the reader. drained is the batcher hint.
func (o *ordered) add(h *held, pin string, drained bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.holding || h.received.Before(o.epochStart) {
		// Not this epoch's: the last pull of one that ended, or received
		// before this one began. Another replica may have acked it since.
		o.w.settle(h, "nak", h.msg.Nak())
		o.dropCalls([]*held{h})
		return
	}
	if pin != o.pin {
		if o.pin != "" {
			// Pinned anew within an epoch: the pin lapsed, and another
			// replica (an older version, without the lease) may have
			// delivered meanwhile.
			o.w.settle(h, "nak", h.msg.Nak())
			o.dropCalls([]*held{h})
			o.endEpochLocked(endPinLost)
			return
		}
		o.pin = pin
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
		empty, full := len(l.queue) == 0, o.fullLocked(l)
		if empty {
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
		l.bytes += len(r.call) + 1
		if empty || (!full && o.fullLocked(l)) {
			// Only these change when the lane's batch is due (see fullLocked).
			signal(l.wake)
		}
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
	}
	o.dropCalls(o.keys.displaced)
	o.keys.displaced = o.keys.displaced[:0]
}

// pinLost is the intake's report of a pull answered "pin mismatch":
// another client is pinned. Early in an epoch, before anything came, that
// is the last holder's pin, left until PinnedTTL: clear it. Later another
// replica delivers now: the epoch ends.
func (o *ordered) pinLost() {
	o.mu.Lock()
	if o.holding && o.pin == "" && o.inFlight == 0 && !o.holdingLocked() {
		unpin := time.Since(o.lastUnpin) >= time.Second
		if unpin {
			o.lastUnpin = time.Now()
		}
		o.mu.Unlock()
		if unpin {
			o.unpin(context.Background())
		}
		return
	}
	defer o.mu.Unlock()
	o.endEpochLocked(endPinLost)
}

// loseLocked closes the barrier and hands back, in stream order and for
// redelivery at once, everything held that is not in flight.
func (o *ordered) loseLocked() {
	o.open = false
	back := o.keys.reset()
	for _, l := range o.lanes {
		back = append(back, l.queue...)
		l.queue, l.bytes, l.linger = nil, 0, time.Time{}
	}
	back = append(back, o.gate...)
	o.gate = nil
	slices.SortFunc(back, func(a, b *held) int { return cmpUint(a.seq, b.seq) })
	for _, h := range back {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
	}
	o.dropCalls(back)
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
	var background sync.WaitGroup
	background.Go(func() { o.barrier(barrierCtx) })
	background.Go(func() { o.runEpochs(barrierCtx) })
	read()
	o.close()
	wg.Wait()
	o.mu.Lock()
	back := o.keys.reset()
	slices.SortFunc(back, func(a, b *held) int { return cmpUint(a.seq, b.seq) })
	for _, h := range back {
		h.parked = false
		o.w.settle(h, "nak", h.msg.Nak())
	}
	o.dropCalls(back)
	held := o.holding
	o.holding = false
	o.mu.Unlock()
	// The last sends are done, the intake has stopped: let the lease go.
	stopBarrier()
	background.Wait()
	if held {
		o.w.m.epochsEnded.WithLabelValues(endStopped).Inc()
	}
	o.letGo(bgCtx)
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
	}
	o.dropCalls(o.gate)
	o.gate = nil
	for _, l := range o.lanes {
		signal(l.wake)
	}
}

// dropCalls ends the ordered path's hold of calls it will not send again: they
// were delivered, nakked, dead-lettered or handed back, or are an older copy
// a redelivery displaced. Their leases end, and their slab references
// (prepare) are released: nothing reads their bytes after this. The caller
// holds o.mu, or is the only one that can reach the calls (a lane's call
// too large for a batch); so a call let go twice (set aside by filter and
// handed back while its batch was in flight) finds its slab gone the second
// time, and releases nothing.
func (o *ordered) dropCalls(calls []*held) {
	o.leases.remove(calls...)
	releaseCalls(calls)
}
