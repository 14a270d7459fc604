package trigger

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Interval is Customer.io's limit on API-triggered broadcasts: one trigger
// request per broadcast every 10 seconds; more are answered 429.
const Interval = 10 * time.Second

// Defaults for PacerOptions.
const (
	// DefaultMaxPending bounds how many triggers wait, so a broadcast
	// triggered faster than once per Interval slows consumption instead of
	// growing memory. A thousand is several minutes of backlog for a busy
	// broadcast, and coalescing usually empties it in a few requests.
	DefaultMaxPending = 1000
	// DefaultMaxPendingBytes bounds the same backlog by the memory it
	// holds (see PacerOptions.MaxPendingBytes): a thousand per_user_data
	// triggers of NATS's default 1 MB payload would otherwise hold several
	// gigabytes. 64 MB is a quarter of the Deployment's 256 Mi limit,
	// leaving room for the pull buffer, the batch path and the runtime.
	DefaultMaxPendingBytes = 64 << 20
)

// ErrFull is returned by Add when the Pacer already holds its maximum; the
// caller should stop consuming until Done releases some.
var ErrFull = errors.New("trigger: pacer is full")

// PacerOptions configures a Pacer. The zero value gives Customer.io's
// limits and the defaults above.
type PacerOptions struct {
	// Interval is the least time between the answer to one request for a
	// broadcast and the release of the next; default Interval. Tests
	// shorten it.
	Interval time.Duration
	// MaxPending and MaxPendingBytes bound the triggers held, pending or in
	// flight, by count and by the memory they hold: each trigger counts
	// its Request.MemoryCost, every copy of it the worker keeps (the
	// message body, the parsed request, its share of a merged request
	// body), measured by TestPacerBoundCountsEveryCopy.
	MaxPending      int
	MaxPendingBytes int
	// MaxRecipients caps the ids, emails or per_user_data entries of a
	// merged request; default and maximum MaxRecipients (MaxPerUserData is
	// the same number). MaxBodyBytes caps its body; default and maximum
	// MaxBodyBytes. A single trigger over them is still sent, alone: Parse
	// has already held it to Customer.io's limits.
	MaxRecipients int
	MaxBodyBytes  int
}

// setDefaults fills in defaults and checks o once, reporting every problem.
func (o *PacerOptions) setDefaults() error {
	var errs []error
	check := func(name string, v *int, def, limit int) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0 && limit == 0:
			errs = append(errs, fmt.Errorf("%s %d must be positive", name, *v))
		case *v < 0 || (limit > 0 && *v > limit):
			errs = append(errs, fmt.Errorf("%s %d must be between 1 and %d", name, *v, limit))
		}
	}
	if o.Interval == 0 {
		o.Interval = Interval
	} else if o.Interval < 0 {
		errs = append(errs, fmt.Errorf("option Interval %v must not be negative", o.Interval))
	}
	check("MaxPending", &o.MaxPending, DefaultMaxPending, 0)
	check("MaxPendingBytes", &o.MaxPendingBytes, DefaultMaxPendingBytes, 0)
	check("MaxRecipients", &o.MaxRecipients, MaxRecipients, MaxRecipients)
	check("MaxBodyBytes", &o.MaxBodyBytes, MaxBodyBytes, MaxBodyBytes)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("trigger: invalid pacer options: %w", err)
	}
	return nil
}

// Pacer holds pending triggers and releases them as requests Customer.io
// will accept: per broadcast, one request at a time and one per Interval,
// with compatible triggers merged (see the package documentation). T is
// the caller's handle for a trigger, such as the message it came in;
// Pacer never looks at it.
//
// Pacer keeps no clock and starts no goroutine: the caller passes the time
// to Ready, Done, Retry and Defer, and asks Next when to call Ready again.
// It is safe for concurrent use.
type Pacer[T any] struct {
	opts PacerOptions

	mu         sync.Mutex
	broadcasts map[int64]*broadcast[T]
	items      int    // held: pending and in flight
	bytes      int    // MemoryCost of the held triggers
	groups     uint64 // the last group number handed out by Split
}

// broadcast is one broadcast's state.
type broadcast[T any] struct {
	pending  []pending[T] // oldest first
	inFlight bool         // a released request has not been answered yet
	// notBefore is when the next request may be released: Interval after
	// the last answer, or later when Customer.io asked (Defer).
	notBefore time.Time
}

type pending[T any] struct {
	req  *Request
	item T
	// group is 0 for a trigger free to coalesce. Split puts the triggers
	// of each half of a rejected request in a group of their own: they
	// are released together, with nothing else, so a half is never
	// re-merged with the triggers that spoiled the whole.
	group uint64
}

// Batch is one request released by a Pacer: the body to send to
// broadcast BroadcastID and the handles of every trigger it covers. After
// a 2xx answer all of them are done; after any other answer none is.
type Batch[T any] struct {
	BroadcastID int64
	Body        []byte
	Items       []T
	// Recipients is the number of ids, emails or per_user_data entries in
	// Body, after de-duplication; 0 for the other audiences.
	Recipients int

	triggers []pending[T]
	answered bool
}

// NewPacer returns an empty Pacer.
func NewPacer[T any](opts PacerOptions) (*Pacer[T], error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	return &Pacer[T]{opts: opts, broadcasts: make(map[int64]*broadcast[T])}, nil
}

// Add queues a parsed trigger with the caller's handle for it. It returns
// ErrFull, keeping nothing, when the Pacer already holds MaxPending
// triggers or MaxPendingBytes of them; so the byte bound can be passed by
// at most one trigger, and one larger than the whole bound still gets in
// when the Pacer is otherwise empty.
func (p *Pacer[T]) Add(req *Request, item T) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fullLocked() {
		return ErrFull
	}
	b := p.broadcasts[req.BroadcastID]
	if b == nil {
		b = &broadcast[T]{}
		p.broadcasts[req.BroadcastID] = b
	}
	b.pending = append(b.pending, pending[T]{req: req, item: item})
	p.items++
	p.bytes += req.cost
	return nil
}

// Len is the number of triggers held: pending, or released and not yet
// answered.
func (p *Pacer[T]) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.items
}

// Full reports whether Add would refuse a trigger now.
func (p *Pacer[T]) Full() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fullLocked()
}

func (p *Pacer[T]) fullLocked() bool {
	return p.items >= p.opts.MaxPending || p.bytes >= p.opts.MaxPendingBytes
}

// Ready releases, for every broadcast that has pending triggers, no
// request in flight and whose Interval (or Defer) has passed at now, one
// request: the oldest pending trigger and those that coalesce with it.
// Batches are ordered by broadcast id. Each must be answered with Done or
// Retry; until then its broadcast releases nothing more.
func (p *Pacer[T]) Ready(now time.Time) []*Batch[T] {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []int64
	for id, b := range p.broadcasts {
		switch {
		case b.inFlight || now.Before(b.notBefore):
		case len(b.pending) > 0:
			ids = append(ids, id)
		default:
			// Idle and past its interval: nothing left to remember.
			delete(p.broadcasts, id)
		}
	}
	slices.Sort(ids)
	batches := make([]*Batch[T], 0, len(ids))
	for _, id := range ids {
		b := p.broadcasts[id]
		batch := p.take(id, b)
		b.inFlight = true
		batches = append(batches, batch)
	}
	return batches
}

// Next returns when Ready will next release something, and false when it
// will not until a trigger is added or a request answered. A time at or
// before now means at once. Add, Done, Retry and Defer can change it.
func (p *Pacer[T]) Next() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	found := false
	for _, b := range p.broadcasts {
		if b.inFlight || len(b.pending) == 0 {
			continue
		}
		if !found || b.notBefore.Before(next) {
			next, found = b.notBefore, true
		}
	}
	return next, found
}

// Done records that batch's request was answered, or given up on, at now:
// its triggers leave the Pacer, and its broadcast's next request waits
// until now + Interval. The caller acks or dead-letters the Items itself.
// A second Done or Retry for the same batch does nothing.
func (p *Pacer[T]) Done(batch *Batch[T], now time.Time) {
	p.answer(batch, now, false)
}

// Retry is Done for a request that failed and may succeed later: its
// triggers go back to the front of their broadcast's queue, oldest first,
// to be released again (and coalesced anew, unless they are a half made by
// Split) after now + Interval. After a 429, call Defer as well, with the
// Retry-After.
func (p *Pacer[T]) Retry(batch *Batch[T], now time.Time) {
	p.answer(batch, now, true)
}

// Split is Done for a request Customer.io rejected that covers more than
// one trigger: one of them may have spoiled it for the rest. Its triggers
// go back to the front of their broadcast's queue as two halves, oldest
// first, each released as a request of its own and never merged again, so
// repeated halving finds the bad triggers in O(log n) requests. Each half
// waits its broadcast's turn like any other request: the first after now +
// Interval, the second Interval after the first is answered. Split reports
// false, changing nothing, for a request of one trigger, which the caller
// gives up on (and then calls Done).
func (p *Pacer[T]) Split(batch *Batch[T], now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.broadcasts[batch.BroadcastID]
	if batch.answered || b == nil || len(batch.triggers) < 2 {
		return false
	}
	batch.answered = true
	b.inFlight = false
	b.notBefore = later(b.notBefore, now.Add(p.opts.Interval))
	half := len(batch.triggers) / 2
	first, second := p.groups+1, p.groups+2
	p.groups += 2
	front := make([]pending[T], 0, len(batch.triggers)+len(b.pending))
	for i, t := range batch.triggers {
		t.group = first
		if i >= half {
			t.group = second
		}
		front = append(front, t)
	}
	b.pending = append(front, b.pending...)
	return true
}

// Withdraw answers a released batch whose request was not sent, as when
// the caller finds that some of its triggers were already sent by an
// earlier delivery: the triggers for which gone reports true leave the
// Pacer (the caller settles them), and the others go back to the front of
// their broadcast's queue, to be released again at once without them. As
// nothing reached Customer.io, the broadcast's turn is not used up; if an
// earlier request of the same batch did reach it, call Defer first.
func (p *Pacer[T]) Withdraw(batch *Batch[T], gone func(T) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.broadcasts[batch.BroadcastID]
	if batch.answered || b == nil {
		return
	}
	batch.answered = true
	b.inFlight = false
	keep := make([]pending[T], 0, len(batch.triggers)+len(b.pending))
	for _, t := range batch.triggers {
		if gone(t.item) {
			p.items--
			p.bytes -= t.req.cost
			continue
		}
		keep = append(keep, t)
	}
	b.pending = append(keep, b.pending...)
}

func (p *Pacer[T]) answer(batch *Batch[T], now time.Time, retry bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if batch.answered {
		return
	}
	batch.answered = true
	b := p.broadcasts[batch.BroadcastID] // kept while in flight
	if b == nil {
		return // not released by this Pacer
	}
	b.inFlight = false
	b.notBefore = later(b.notBefore, now.Add(p.opts.Interval))
	if retry {
		b.pending = append(slices.Clip(batch.triggers), b.pending...)
		return
	}
	p.items -= len(batch.triggers)
	for _, t := range batch.triggers {
		p.bytes -= t.req.cost
	}
}

// Defer holds back broadcastID's next request until at least until, as
// Customer.io's Retry-After asks. It never brings a request forward.
func (p *Pacer[T]) Defer(broadcastID int64, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.broadcasts[broadcastID]
	if b == nil {
		b = &broadcast[T]{}
		p.broadcasts[broadcastID] = b
	}
	b.notBefore = later(b.notBefore, until)
}

// Drain removes every pending trigger and returns their handles, oldest
// first within each broadcast, so a stopping worker can hand them back
// (nak). Requests in flight stay until answered.
func (p *Pacer[T]) Drain() []T {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]int64, 0, len(p.broadcasts))
	for id := range p.broadcasts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var items []T
	for _, id := range ids {
		b := p.broadcasts[id]
		for _, t := range b.pending {
			items = append(items, t.item)
			p.items--
			p.bytes -= t.req.cost
		}
		b.pending = nil
	}
	return items
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// take removes the next request's triggers from b's queue: the oldest,
// and every younger one that coalesces with it. When the oldest belongs to
// a group made by Split, the request is that group: the members that
// coalesce (all of them, as they did before), and nothing else.
func (p *Pacer[T]) take(id int64, b *broadcast[T]) *Batch[T] {
	head := b.pending[0]
	batch := &Batch[T]{BroadcastID: id}
	joined := []int{0}
	var m *merger
	if head.req.coalescable && head.req.Recipients() <= p.opts.MaxRecipients && len(head.req.body) <= p.opts.MaxBodyBytes {
		m = newMerger(head.req, p.opts.MaxRecipients, p.opts.MaxBodyBytes)
		for i := 1; i < len(b.pending); i++ {
			t := b.pending[i]
			if t.group != head.group {
				if head.group != 0 {
					break // a group's members are contiguous
				}
				continue
			}
			r := t.req
			if r.coalescable && r.Audience == head.req.Audience && r.restKey == head.req.restKey && m.add(r) {
				joined = append(joined, i)
			}
		}
	}
	if len(joined) == 1 {
		batch.Body = head.req.body
		batch.Recipients = head.req.Recipients()
	} else {
		batch.Body = m.body()
		batch.Recipients = len(m.entries)
	}
	keep := b.pending[:0]
	for i, t := range b.pending {
		if len(joined) > 0 && joined[0] == i {
			joined = joined[1:]
			batch.triggers = append(batch.triggers, t)
			batch.Items = append(batch.Items, t.item)
			continue
		}
		keep = append(keep, t)
	}
	clear(b.pending[len(keep):]) // drop references to released triggers
	b.pending = keep
	return batch
}

// merger builds one request from coalescing triggers: the head's
// non-audience members and the union of their lists, each person once, in
// first-seen order.
type merger struct {
	head     *Request
	entries  [][]byte
	seen     map[string][]byte // person → the entry that named them first
	size     int               // len(body()) as it stands
	maxN     int
	maxBytes int
}

func newMerger(head *Request, maxN, maxBytes int) *merger {
	m := &merger{head: head, seen: make(map[string][]byte), maxN: maxN, maxBytes: maxBytes}
	// {"<audience>":[…]<,member…>}
	m.size = len(appendKey(nil, head.Audience.String())) + len("{[]}")
	for _, r := range head.rest {
		m.size += 1 + len(appendKey(nil, r.key)) + len(r.raw)
	}
	m.add(head) // fits: de-duplication only shrinks what take checked
	return m
}

// add merges r's list if every person it names is new or named with the
// same entry, and the result stays within the caps; otherwise it changes
// nothing and reports false.
func (m *merger) add(r *Request) bool {
	var fresh []entry
	local := make(map[string][]byte)
	size := m.size
	for _, e := range r.entries {
		prev, ok := m.seen[e.who]
		if !ok {
			prev, ok = local[e.who]
		}
		if ok {
			// ids and emails name a person and nothing more; per-user data
			// that differs would be a different message, which is not
			// merged away.
			if r.Audience == AudiencePerUserData && !bytes.Equal(prev, e.raw) {
				return false
			}
			continue
		}
		local[e.who] = e.raw
		fresh = append(fresh, e)
		size += len(e.raw)
		if len(m.entries)+len(fresh) > 1 {
			size++ // the comma before it
		}
	}
	if len(m.entries)+len(fresh) > m.maxN || size > m.maxBytes {
		return false
	}
	for _, e := range fresh {
		m.entries = append(m.entries, e.raw)
		m.seen[e.who] = e.raw
	}
	m.size = size
	return true
}

func (m *merger) body() []byte {
	b := make([]byte, 0, m.size)
	b = append(b, '{')
	b = appendKey(b, m.head.Audience.String())
	b = append(b, '[')
	for i, e := range m.entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e...)
	}
	b = append(b, ']')
	for _, r := range m.head.rest {
		b = append(b, ',')
		b = appendKey(b, r.key)
		b = append(b, r.raw...)
	}
	return append(b, '}')
}
