package batcher

import "time"

// DefaultLinger is how long an open batch waits, once the source has said it
// is drained, for calls arriving just behind the drained one. It is short
// against the latency targets (p99 ≤ 50 ms at a trickle) and long enough
// that calls published together (a request handler emitting a track and an
// identify) share a request. It also bounds the requests a trickle costs: a
// linger starts only with a call that arrived after the previous batch went,
// so linger flushes are at least DefaultLinger apart — at most 200 a second
// per worker, a fifth of Customer.io's 3,000 requests per 3 seconds per
// workspace.
const DefaultLinger = 5 * time.Millisecond

// FlushReason says why a batch was closed.
type FlushReason uint8

// Why a batch was closed.
const (
	FlushRequested FlushReason = iota // Packer.Flush, or the end of Run's input
	FlushFull                         // the next call did not fit
	FlushCap                          // it reached the call cap
	FlushInterval                     // its oldest call waited the flush interval
	FlushLinger                       // the linger after a drained call ended
)

func (r FlushReason) String() string {
	switch r {
	case FlushRequested:
		return "requested"
	case FlushFull:
		return "full"
	case FlushCap:
		return "cap"
	case FlushInterval:
		return "interval"
	case FlushLinger:
		return "linger"
	}
	return "unknown"
}

// deadline decides when the open batch is due by time: interval after its
// oldest call, or linger after the first drained call that went into it,
// whichever is sooner. It has no clock: time comes in as arguments.
//
// A linger, once started, holds for the open batch: a later call that is
// not drained (a burst beginning) does not cancel it, and a later drained
// call does not push it back. Cancelling would let a trickle whose calls
// alternate between drained and not (the server sometimes one message
// ahead) postpone every batch to the flush interval; pushing back would do
// the same to a steady trickle faster than one call per linger.
type deadline struct {
	interval, linger time.Duration
	lingerAt         time.Time // zero: no drained call in the open batch
}

// added records a call that went into the open batch at now.
func (d *deadline) added(now time.Time, drained bool) {
	if drained && d.lingerAt.IsZero() {
		d.lingerAt = now.Add(d.linger)
	}
}

// reset forgets the open batch: it was closed.
func (d *deadline) reset() { d.lingerAt = time.Time{} }

// at returns when the open batch, whose oldest call was added at oldest,
// must go, and the reason it will have.
func (d *deadline) at(oldest time.Time) (time.Time, FlushReason) {
	due := oldest.Add(d.interval)
	if !d.lingerAt.IsZero() && d.lingerAt.Before(due) {
		return d.lingerAt, FlushLinger
	}
	return due, FlushInterval
}
