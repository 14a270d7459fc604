package worker

import (
	"context"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/nats-io/nats.go/jetstream"
)

// read takes messages from the intake until it has stopped and sends each
// valid call on calls, or hands it to the ordered path when there is one;
// invalid ones are dead-lettered at once.
//
// Calls go to the batcher in slices (batcher.RunSlices) of up to
// handOffCalls: a slice goes when it is full or when the intake has
// nothing more waiting, so a call never waits in the reader for one that
// has not arrived, while a backlog costs one channel send per slice
// instead of per call. Two slices are used in turn: the batcher is done
// with one once it has received the other.
func (w *Worker) read(ctx context.Context, in *intake, leases *leases[*held], calls chan<- []batcher.Call[*held]) {
	var (
		bufs [2][]batcher.Call[*held]
		cur  int
	)
	handOff := func() {
		if len(bufs[cur]) == 0 {
			return
		}
		calls <- bufs[cur]
		cur = 1 - cur
		clear(bufs[cur]) // nothing kept alive by a slice the batcher is done with
		bufs[cur] = bufs[cur][:0]
	}
	defer handOff()
	var prep event.Preparer
	// Calls are prepared into a slab shared by many calls rather than one
	// allocation each, and a slab is reused once every call in it is
	// settled (see slab): by dispatch on the unordered path, by the ordered
	// path wherever it lets a call go (see ordered.letGo).
	pool := w.slabs
	sl := pool.get(0)
	defer func() { sl.release(1) }()
	for h, ok := in.next(); ok; h, ok = in.next() {
		data := h.msg.Data()
		// Compaction only shrinks a body; what Prepare inserts is short.
		if need := len(data) + 192 + len(h.id.Override); cap(sl.buf)-len(sl.buf) < need {
			sl.release(1)
			sl = pool.get(need)
		}
		start := len(sl.buf)
		// A call without a timestamp gets its publish time, so a backlog
		// does not shift when Customer.io records it.
		var stamp event.Stamp
		var err error
		sl.buf, stamp, err = prep.PrepareAt(sl.buf, h.typ, data, h.id, h.published)
		h.call = sl.buf[start:len(sl.buf):len(sl.buf)]
		sl.hold()
		h.slab = sl
		if err != nil {
			handOff() // what was read before it need not wait for the dead letter
			w.rejectInput(ctx, h, err, leases)
			releaseCalls([]*held{h})
			continue
		}
		if stamp == event.StampOmitted {
			w.m.timestampOmitted.Inc()
		}
		if w.ord != nil {
			h.ordered, h.key = true, prep.KeyHash()
			h.cseq, _ = parseAckCseq(h.msg.Reply())
			var pin string
			if hdr := h.msg.Headers(); hdr != nil {
				pin = hdr.Get(pinIDHeader)
			}
			w.ord.add(h, pin, drained(h.msg) && in.empty())
			continue
		}
		// A redelivery is no sign of a drained consumer: after a failure
		// the nakked calls come back one by one as their delays end, and
		// lingering on each would send them in many small requests just
		// as Customer.io recovers. The flush interval gathers them; they
		// have waited a nak delay already.
		empty := in.empty()
		bufs[cur] = append(bufs[cur], batcher.Call[*held]{Data: h.call, Item: h, Drained: h.deliveries == 1 && drained(h.msg) && empty})
		if empty || len(bufs[cur]) >= handOffCalls {
			handOff()
		}
	}
}

// handOffCalls is how many calls at most go to the batcher in one slice:
// enough that the channel send is a small part of a call's cost (450–620
// ns a call one by one, 130–160 in slices of 64, in BenchmarkRun and
// BenchmarkRunSlices), few enough that the batcher is never long without
// work while the reader prepares them. A slice that is not full is kept
// only while the intake's queue is not empty, so the reader's next read
// never blocks with calls held back.
const handOffCalls = 64

// drained reports whether the server had nothing more pending for the
// consumer when it delivered msg: NumPending from its ack reply, else from
// its metadata. Unknown counts as not drained (see batcher.Call.Drained).
func drained(msg jetstream.Msg) bool {
	if p, ok := parseAckPending(msg.Reply()); ok {
		return p == 0
	}
	meta, err := msg.Metadata()
	return err == nil && meta.NumPending == 0
}

// maxPullAhead bounds pullAhead when batches are allowed many calls.
const maxPullAhead = 4000

// pullAhead is how many messages the batch intake may hold ahead of the
// batcher: about two batches, and no more than the consumer lets one
// client have unacknowledged. A pull asks for half of it, so with the
// defaults 2,000 messages come per request. Pulls of 500 (a queue of 1,000)
// left the relay waiting on JetStream between pulls: in the bench (300,000
// events of 1.4 KB, nats-server in its own process, 2 cores) end to end was
// 0.81–0.85× the bare consumer's rate with them and 0.90–0.98× with these,
// ordered 73,000–75,000 events/s against 82,000–89,000. Every message in
// the queue is leased, so a larger queue costs memory (about 6 MB more
// here), not redeliveries.
func (w *Worker) pullAhead(cons jetstream.Consumer) int {
	n := min(2*w.opts.BatchMaxCalls, maxPullAhead)
	if m := cons.CachedInfo().Config.MaxAckPending; m > 0 {
		n = min(n, m)
	}
	return n
}

// hold takes a message into the worker's hands the moment it arrives: reads
// its metadata, counts it and starts extending its ack deadline. alloc
// gives the record to fill.
func (w *Worker) hold(msg jetstream.Msg, idPrefix string, leases *leases[*held], alloc func() *held) (*held, bool) {
	seq, deliveries, ts, ok := parseAckReply(msg.Reply())
	if !ok {
		meta, err := msg.Metadata()
		if err != nil {
			// Not a JetStream message: nothing to ack and nothing to derive an
			// id from.
			w.log.Error("message without JetStream metadata", "subject", msg.Subject(), "err", err)
			return nil, false
		}
		seq, deliveries, ts = meta.Sequence.Stream, meta.NumDelivered, meta.Timestamp.UnixNano()
	}
	now := time.Now()
	h := alloc()
	*h = held{msg: msg, typ: event.TypeOfSubject(msg.Subject()), seq: seq,
		deliveries: deliveries, published: time.Unix(0, ts), received: now,
		id: event.ID{Prefix: idPrefix, Seq: seq}}
	if hdr := msg.Headers(); hdr != nil {
		h.id.Override = hdr.Get(deadletter.HeaderMessageID)
		// A replayed call keeps the time it was first published.
		h.published = deadletter.PublishedAt(hdr, h.published)
	}
	if h.typ == event.Unknown {
		// The direct consumers' subjects: a fixed, small set.
		w.m.consumed.WithLabelValues(msg.Subject()).Inc()
	} else {
		w.m.consumedByType.inc(h.typ)
	}
	if h.deliveries > 1 {
		w.m.redeliveries.Inc()
	}
	// Just delivered: its ack wait starts now.
	leases.add(h, now)
	return h, true
}

// heldSlab is how many helds one allocation holds.
const heldSlab = 256
