// Package batcher packs encoded CDP calls into batch request bodies that are
// exactly as large as the bytes that will be sent, and never larger than
// Customer.io's limit.
//
// A batch body is {"batch":[c1,c2,...]}. The Packer appends each call's bytes
// directly into the body buffer, so the size it checks is the size of the
// body: no re-encoding happens after a call has been measured. Batches are
// closed when the next call would not fit, when they hold MaxCalls calls, or
// (in Run) when their oldest call has waited FlushInterval — or, once the
// source has said it is drained (Call.Drained), after a short linger: with
// nothing more coming, waiting the flush interval would only add latency.
//
// The package knows nothing of NATS or HTTP: each call carries an opaque item
// of type T (the worker uses its JetStream message) that comes back with the
// batch, in order.
package batcher

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MaxBatchBytes is Customer.io's limit on a batch request body, read the
// strict way its own Go library does (maxBatchBytes = 500000). A larger
// request is answered 200 and silently dropped.
const MaxBatchBytes = 500000

const (
	bodyPrefix = `{"batch":[`
	bodySuffix = `]}`
	// Overhead is the size of an empty batch body.
	Overhead = len(bodyPrefix) + len(bodySuffix)
)

// ErrCallTooLarge is returned for a call that cannot fit even in an empty
// batch.
var ErrCallTooLarge = errors.New("call does not fit in an empty batch")

// Batch is a closed batch: its request body and one item per call, in the
// order the calls appear in the body.
type Batch[T any] struct {
	body    []byte // complete body, suffix included
	Items   []T
	Created time.Time   // when the first call was added
	Reason  FlushReason // why it was closed
	bodies  *bodies
}

// Release hands the body's memory back to the Packer for a later batch.
// Neither the batch's Body nor anything sliced from it may be used after.
// Releasing is optional: a batch that is not released is garbage collected.
func (b *Batch[T]) Release() {
	if b.bodies == nil || b.body == nil {
		return
	}
	b.bodies.put(b.body)
	b.body = nil
}

// Body returns the request body: {"batch":[...]}.
func (b *Batch[T]) Body() []byte { return b.body }

// Len returns the number of calls in the batch.
func (b *Batch[T]) Len() int { return len(b.Items) }

// Packer accumulates calls into one open batch. It is not safe for concurrent
// use.
type Packer[T any] struct {
	maxBytes, maxCalls int
	bodies             *bodies
	buf                []byte // open body without its suffix
	items              []T
	// lastCalls is how many calls the last closed batch held: the next
	// batch's item list is made that large at once rather than grown
	// call by call (ten allocations for 300 calls).
	lastCalls int
	created   time.Time
}

// idleBodies is how many released bodies a Packer keeps for later batches:
// the worker has SendConcurrency (default 4) batches in flight, and their
// bodies come back one by one. An idle worker holds at most this many,
// idleBodies × MaxBatchBytes (2 MB).
const idleBodies = 4

// bodies recycles released batch bodies, each maxBytes of capacity: a busy
// worker closes dozens of batches a second. Unlike a sync.Pool it survives
// garbage collection, which on a busy relay runs every few tens of
// milliseconds and emptied the pool so that one batch in eleven got a
// fresh, zeroed 500 KB buffer. Release may run on any goroutine.
type bodies struct {
	size int
	free chan []byte
}

func newBodies(size int) *bodies { return &bodies{size: size, free: make(chan []byte, idleBodies)} }

// get returns an empty body, a released one when there is one.
func (b *bodies) get() []byte {
	select {
	case buf := <-b.free:
		return buf[:0]
	default:
		return make([]byte, 0, b.size)
	}
}

// put keeps buf for a later batch, or leaves it to the garbage collector
// when idleBodies are kept already.
func (b *bodies) put(buf []byte) {
	if cap(buf) < b.size {
		return
	}
	select {
	case b.free <- buf:
	default:
	}
}

// NewPacker returns a Packer that closes batches at maxBytes body bytes
// (at most MaxBatchBytes) or maxCalls calls.
func NewPacker[T any](maxBytes, maxCalls int) (*Packer[T], error) {
	if maxBytes > MaxBatchBytes || maxBytes <= Overhead {
		return nil, fmt.Errorf("batch max bytes %d out of range (%d, %d]", maxBytes, Overhead, MaxBatchBytes)
	}
	if maxCalls < 1 {
		return nil, fmt.Errorf("batch max calls %d must be at least 1", maxCalls)
	}
	return &Packer[T]{maxBytes: maxBytes, maxCalls: maxCalls, bodies: newBodies(maxBytes)}, nil
}

// Add appends call to the open batch. When call does not fit there, the open
// batch is closed and returned and call starts the next one. An open batch
// that reaches the call cap is closed at once and returned too (in that case
// the returned batch includes call). At most one batch is returned.
func (p *Packer[T]) Add(call []byte, item T, now time.Time) (*Batch[T], error) {
	if Overhead+len(call) > p.maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, batch limit %d", ErrCallTooLarge, len(call), p.maxBytes)
	}
	var closed *Batch[T]
	if len(p.items) > 0 && len(p.buf)+1+len(call)+len(bodySuffix) > p.maxBytes {
		closed = p.flush(FlushFull)
	}
	if len(p.items) == 0 {
		if p.buf == nil {
			p.buf = p.bodies.get()
		}
		if p.items == nil && p.lastCalls > 0 {
			p.items = make([]T, 0, p.lastCalls)
		}
		p.buf = append(p.buf, bodyPrefix...)
		p.created = now
	} else {
		p.buf = append(p.buf, ',')
	}
	p.buf = append(p.buf, call...)
	p.items = append(p.items, item)
	if closed == nil && len(p.items) >= p.maxCalls {
		closed = p.flush(FlushCap)
	}
	return closed, nil
}

// Flush closes and returns the open batch, or nil when it is empty. The
// batch's Reason is FlushRequested.
func (p *Packer[T]) Flush() *Batch[T] { return p.flush(FlushRequested) }

func (p *Packer[T]) flush(why FlushReason) *Batch[T] {
	if len(p.items) == 0 {
		return nil
	}
	b := &Batch[T]{body: append(p.buf, bodySuffix...), Items: p.items, Created: p.created, Reason: why, bodies: p.bodies}
	p.lastCalls = len(p.items)
	// The closed batch owns its buffers; the next batch gets fresh ones so a
	// batch in flight is never overwritten.
	p.buf, p.items = nil, nil
	return b
}

// Oldest returns when the first call of the open batch was added, and false
// when the batch is empty.
func (p *Packer[T]) Oldest() (time.Time, bool) {
	return p.created, len(p.items) > 0
}

// Size returns the body size the open batch would have if flushed now.
func (p *Packer[T]) Size() int {
	if len(p.items) == 0 {
		return 0
	}
	return len(p.buf) + len(bodySuffix)
}

// Call is one encoded call and the item it travels with.
type Call[T any] struct {
	Data []byte
	Item T
	// Drained says the source had nothing more to give when it read this
	// call: the consumer had no message pending on the server (NumPending 0
	// in the message's ack reply) and the reader nothing buffered. The open
	// batch then goes after the linger (see WithLinger) instead of waiting
	// for the flush interval, since waiting longer would only add latency.
	// Leave it false when unsure: the batch then goes by size, call cap or
	// flush interval, as it would without the hint. Under load the server
	// always has more pending, so no call is drained and batches fill.
	Drained bool
}

// Batcher runs a Packer as a stage of a pipeline, adding the flush deadline
// and the linger.
type Batcher[T any] struct {
	packer *Packer[T]
	due    deadline
}

// Option configures a Batcher.
type Option func(*options)

type options struct {
	linger    time.Duration
	lingerSet bool
}

// WithLinger sets how long the open batch waits, after the first drained
// call (Call.Drained) went into it, for calls that arrive just behind it.
// It must be positive and at most the flush interval. Default: DefaultLinger,
// or the flush interval when that is shorter.
func WithLinger(d time.Duration) Option {
	return func(o *options) { o.linger, o.lingerSet = d, true }
}

// New returns a Batcher; see NewPacker for maxBytes and maxCalls. A batch is
// closed when its oldest call has waited interval, or a linger after the
// first drained call went into it, whichever comes first.
func New[T any](maxBytes, maxCalls int, interval time.Duration, opts ...Option) (*Batcher[T], error) {
	if interval <= 0 {
		return nil, fmt.Errorf("flush interval %v must be positive", interval)
	}
	o := options{linger: min(DefaultLinger, interval)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.lingerSet && (o.linger <= 0 || o.linger > interval) {
		return nil, fmt.Errorf("linger %v out of range (0, flush interval %v]", o.linger, interval)
	}
	p, err := NewPacker[T](maxBytes, maxCalls)
	if err != nil {
		return nil, err
	}
	return &Batcher[T]{packer: p, due: deadline{interval: interval, linger: o.linger}}, nil
}

// Run reads calls from in and sends closed batches to out until in is closed,
// then flushes what is left and returns nil. Sends on out block, which is how
// a slow consumer of batches slows the producer of calls. When ctx is done
// Run returns ctx.Err() at once without sending the open batch: the caller
// must treat every call it did not receive on out as undelivered.
//
// A call that cannot fit even alone is passed to reject and dropped from the
// pipeline; reject must not block.
func (b *Batcher[T]) Run(ctx context.Context, in <-chan Call[T], out chan<- *Batch[T], reject func(Call[T], error)) error {
	return b.run(ctx, in, nil, out, reject)
}

// RunSlices is Run for calls handed over several at a time: each slice's
// calls are taken in order, exactly as if they had come one by one on Run's
// channel, flush deadlines, linger (Call.Drained) and all. One channel
// operation per slice instead of per call is what it is for: on a busy
// relay the hand-off, not the packing, was the batcher's cost.
//
// RunSlices is done with a slice, and keeps nothing of it but the calls'
// items, once it receives the next one or returns; so a producer sending on
// an unbuffered channel may fill a slice again as soon as its next send has
// gone through (two slices, used in turn, are enough). An empty slice is
// ignored.
func (b *Batcher[T]) RunSlices(ctx context.Context, in <-chan []Call[T], out chan<- *Batch[T], reject func(Call[T], error)) error {
	return b.run(ctx, nil, in, out, reject)
}

// run is Run and RunSlices: exactly one of one and many is non-nil.
func (b *Batcher[T]) run(ctx context.Context, one <-chan Call[T], many <-chan []Call[T], out chan<- *Batch[T], reject func(Call[T], error)) error {
	r := runner[T]{b: b, ctx: ctx, out: out, reject: reject, timer: time.NewTimer(time.Hour)}
	r.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c, ok := <-one:
			if !ok {
				return r.finish()
			}
			if err := r.take(c, time.Now()); err != nil {
				return err
			}
		case cs, ok := <-many:
			if !ok {
				return r.finish()
			}
			// One clock reading for the slice: its calls were read
			// together, microseconds apart.
			now := time.Now()
			for _, c := range cs {
				if err := r.take(c, now); err != nil {
					return err
				}
			}
		case <-r.timer.C:
			r.armedAt = time.Time{}
			oldest, open := b.packer.Oldest()
			if !open {
				continue
			}
			_, why := b.due.at(oldest)
			batch := b.packer.flush(why)
			b.due.reset()
			if err := r.send(batch); err != nil {
				return err
			}
		}
	}
}

// runner is the state of one Run: its output and the one timer, set to
// the open batch's deadline (interval or linger, whichever is sooner).
type runner[T any] struct {
	b       *Batcher[T]
	ctx     context.Context
	out     chan<- *Batch[T]
	reject  func(Call[T], error)
	timer   *time.Timer
	armedAt time.Time // what timer is set to; zero when stopped
}

// take adds c, received at now, to the open batch and sends the batch it
// closed, if any.
func (r *runner[T]) take(c Call[T], now time.Time) error {
	b := r.b
	closed, err := b.packer.Add(c.Data, c.Item, now)
	if err != nil {
		r.reject(c, err)
		return nil
	}
	if closed != nil {
		b.due.reset()
	}
	if b.packer.Size() > 0 { // c is in the open batch
		b.due.added(now, c.Drained)
	}
	r.rearm()
	if closed != nil {
		return r.send(closed)
	}
	return nil
}

// rearm sets the timer to the open batch's deadline, or stops it when no
// batch is open.
func (r *runner[T]) rearm() {
	oldest, open := r.b.packer.Oldest()
	if !open {
		if !r.armedAt.IsZero() {
			r.timer.Stop()
			r.armedAt = time.Time{}
		}
		return
	}
	if at, _ := r.b.due.at(oldest); !at.Equal(r.armedAt) {
		r.timer.Reset(time.Until(at))
		r.armedAt = at
	}
}

// send hands batch on, unless ctx ends first.
func (r *runner[T]) send(batch *Batch[T]) error {
	select {
	case r.out <- batch:
		return nil
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

// finish is the end of the input: the open batch goes.
func (r *runner[T]) finish() error {
	r.timer.Stop()
	if batch := r.b.packer.Flush(); batch != nil {
		return r.send(batch)
	}
	return nil
}
