package worker

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
)

// lane is one sender's queue: calls of the keys that hash to it, in stream
// order (see queueLocked).
type lane struct {
	queue  []*held
	wake   chan struct{} // cap 1: the queue changed
	oldest time.Time     // when the first call now queued was queued
	linger time.Time     // when a drained call was queued, zero if none
	bytes  int           // the queued calls' bytes, each with its comma
	// body is the request body of the batch being sent, rebuilt in place
	// for each: a lane sends one batch at a time, so one buffer of
	// BatchMaxBytes is all it needs, and it is never handed to the garbage
	// collector. The sync.Pool it replaces lost its buffers at every
	// collection (tens a second on a busy relay), and a body built in a
	// fresh one grew to its size by doubling: 377 B allocated per event in
	// the bench, a tenth of the ordered path's bytes. SendConcurrency lanes
	// hold that many buffers, as the unordered path's Packer keeps that
	// many bodies (batcher's idleBodies).
	body []byte
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
		if l.body == nil {
			l.body = make([]byte, 0, o.w.opts.BatchMaxBytes)
		}
		// The sender is done with the body once send returns (see Sender).
		l.body = batcher.AppendBodyOf(l.body[:0], batch, callOf)
		o.w.send(ctx, batch, l.body)
		o.w.m.inFlight.Dec()
		o.mu.Lock()
		o.inFlight--
		gone := batch[:0] // batch is this lane's own (takeLocked), not used again
		for _, h := range batch {
			if !h.parked { // parked: set aside by filter, still held
				gone = append(gone, h)
			}
		}
		o.dropCalls(gone)
		o.mu.Unlock()
		signal(o.changed)
	}
}

// fullLocked reports whether l's queue holds more than a batch, or a
// batch of BatchMaxCalls: takeLocked sends it at once.
//
// A lane that waits is woken only when its queue gets its first call or
// becomes full, when a drained call sets its linger, and at close: other
// calls do not change when its batch is due. Woken on every call, a lane
// waiting for its batch to fill took the lock and measured its whole queue
// once per call queued, against the reader adding the next
// (BenchmarkReadOrdered: 0.05–0.06 takes per call, now 0.005).
func (o *ordered) fullLocked(l *lane) bool {
	return len(l.queue) >= o.w.opts.BatchMaxCalls || batcher.Overhead+l.bytes > o.w.opts.BatchMaxBytes
}

// take returns the lane's next batch when it is due (full, or its oldest
// call waited the flush interval, or a linger passed after a drained call),
// else how long to wait; done once closing and empty.
func (o *ordered) take(l *lane) (batch []*held, wait time.Duration, done bool) {
	batch, tooLarge, wait, done := o.takeLocked(l)
	if tooLarge != nil {
		// Larger than a batch may be (a low BatchMaxBytes): the batcher
		// would refuse it too.
		o.w.deadLetter(context.Background(), tooLarge, event.ReasonTooLarge, 0,
			fmt.Sprintf("call of %d bytes does not fit a batch of %d", len(tooLarge.call), o.w.opts.BatchMaxBytes))
		// Out of the lane's queue and in no batch: this lane's alone.
		o.dropCalls([]*held{tooLarge})
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
		l.bytes -= len(h.call) + 1
		h.parked = false
		o.keys.gone(h) // never sent: its key's later calls need not wait for it
		o.dropDisplacedLocked()
		return nil, h, 0, false
	}
	if !full && !o.closing && now.Before(due) {
		return nil, nil, due.Sub(now), false
	}
	batch = slices.Clone(l.queue[:n])
	l.queue = slices.Delete(l.queue, 0, n)
	l.bytes -= size - batcher.Overhead
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
