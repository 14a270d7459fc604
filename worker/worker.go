package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/trigger"
)

// Sender delivers one CDP batch body. A nil error means Customer.io accepted
// it (2xx); other errors are classified with sink.Classify. SendBatch must
// not use body after it returns: the worker recycles its memory.
type Sender interface {
	SendBatch(ctx context.Context, body []byte) error
}

// Worker consumes calls from JetStream and delivers them in batches.
type Worker struct {
	js     jetstream.JetStream
	sender Sender
	opts   Options
	log    *slog.Logger
	m      *metrics
	// One pause per API: a bad App API key must not stop CDP delivery.
	pause, appPause, trackPause pauseState
	ready                       atomic.Bool // consumer bound and consuming
	marks                       *sentMarks  // broadcast triggers sent or being sent; nil without App
	turns                       *turns      // whose turn it is to trigger each broadcast; nil without App
	health                      *jsHealth   // whether JetStream answers (health.go)
	ord                         *ordered    // the ordered batch path; nil when Ordering is off
}

// New returns a Worker; it does not touch JetStream until Run.
func New(js jetstream.JetStream, sender Sender, opts Options) (*Worker, error) {
	opts.setDefaults()
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	if _, err := batcher.NewPacker[*held](opts.BatchMaxBytes, opts.BatchMaxCalls); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	w := &Worker{js: js, sender: sender, opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer), health: newJSHealth(opts.Registerer)}
	w.pause.init("cdp", "CIO_CDP_API_KEY, CIO_CDP_URL", w.m, w.log, opts.ProbeInterval)
	w.appPause.init("app", "CIO_APP_API_KEY, CIO_APP_URL", w.m, w.log, opts.ProbeInterval)
	w.trackPause.init("track", "CIO_SITE_ID, CIO_TRACK_API_KEY, CIO_TRACK_URL", w.m, w.log, opts.ProbeInterval)
	return w, nil
}

// Ready reports whether the worker is bound to its consumer and consuming,
// and not paused on a configuration error from Customer.io. With the reason
// when it is not.
func (w *Worker) Ready() (bool, string) {
	if !w.ready.Load() {
		return false, "consumer not bound"
	}
	if ok, why := w.health.ready(time.Now()); !ok {
		return false, why
	}
	for _, p := range []*pauseState{&w.pause, &w.appPause, &w.trackPause} {
		if paused, why := p.paused(); paused {
			return false, why
		}
	}
	return true, ""
}

// held is one message in the worker's hands, from receipt until settled.
type held struct {
	msg        jetstream.Msg
	call       []byte     // wire bytes
	typ        event.Type // Unknown for a message that never became a call
	id         event.ID   // the messageId it gets when its body has none
	seq        uint64     // stream sequence
	deliveries uint64
	published  time.Time
	received   time.Time
	identifier string           // suppressions
	trigger    *trigger.Request // broadcast triggers
	// The ordered batch path's (see ordered); the fields after key are
	// guarded by its lock.
	ordered bool   // a batch call travelling the ordered path
	key     uint64 // event.Preparer.KeyHash
	cseq    uint64 // consumer sequence of this delivery
	drained bool   // batcher.Call.Drained
	parked  bool   // in a lane's queue, the gate or a wait list, not in a batch being sent
}

// InProgress extends the message's ack deadline.
func (h *held) InProgress() error { return h.msg.InProgress() }

// Run binds the consumer and delivers until ctx is done. Then it stops
// pulling, flushes the open batch and lets in-flight sends finish for up to
// ShutdownTimeout; whatever is not delivered by then is nakked so another
// replica takes it at once. Run returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	cons, idPrefix, err := w.bind(ctx)
	if err != nil {
		return err
	}
	if w.marks, err = w.bindSentMarks(ctx); err != nil {
		return err
	}
	w.turns = w.bindTurns(ctx)
	b, err := batcher.New[*held](w.opts.BatchMaxBytes, w.opts.BatchMaxCalls, w.opts.FlushInterval)
	if err != nil {
		return err
	}
	leases := newLeases[*held](time.Second) // interval set below, once every consumer is bound
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
		w.ord = newOrdered(w, cons, leases)
		intakes[0].pinLost = w.ord.pinLost
	}
	consumers := []jetstream.Consumer{cons} // the batch consumer first
	var pacers []*trigger.Pacer[*held]
	for _, dc := range w.boundDirectConsumers(ctx) {
		pacer, err := trigger.NewPacer[*held](trigger.PacerOptions{Interval: w.opts.BroadcastInterval})
		if err != nil {
			return fmt.Errorf("broadcast pacing: %w", err)
		}
		pacers = append(pacers, pacer)
		cons, err := w.bindDirect(ctx, dc)
		if err != nil {
			return err
		}
		// Direct calls are few and slow (one trigger per broadcast per
		// 10s): receive little ahead. A trigger may wait for its turn for
		// hours, so each record is allocated on its own and freed once
		// settled, rather than carved from a block that lives as long as
		// its longest-waiting member.
		intakes = append(intakes, newIntake(cons, 100, func(m jetstream.Msg) (*held, bool) {
			return w.hold(m, idPrefix, leases, func() *held { return new(held) })
		}, w.log))
		consumers = append(consumers, cons)
	}
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
	for _, in := range intakes {
		in.health = w.health
	}
	w.ready.Store(true)
	defer w.ready.Store(false)
	w.log.Info("consuming", "stream", w.opts.Stream, "consumer", w.opts.Consumer, "dlq_stream", w.opts.DLQStream,
		"batch_max_bytes", w.opts.BatchMaxBytes, "batch_max_calls", w.opts.BatchMaxCalls,
		"flush_interval", w.opts.FlushInterval.String(), "send_concurrency", w.opts.SendConcurrency, "ordering", w.opts.Ordering)

	// sendCtx outlives ctx by ShutdownTimeout so in-flight batches can finish.
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSend()
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()

	leases.setInterval(leaseInterval(consumerAckWaits(consumers)))
	calls := make(chan batcher.Call[*held])
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
		select {
		case <-stop.Done():
			w.ready.Store(false)
			// The intakes stop pulling (below) and hand what they have
			// received to the pipeline, so it is delivered or nakked.
			timer := time.NewTimer(w.opts.ShutdownTimeout)
			defer timer.Stop()
			select {
			case <-timer.C:
				w.log.Warn("shutdown timeout reached; nakking what is left", "timeout", w.opts.ShutdownTimeout.String())
				cancelSend()
			case <-stopped:
			}
		case <-stopped:
		}
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
			_ = b.Run(context.Background(), calls, batches, func(c batcher.Call[*held], err error) {
				w.deadLetter(sendCtx, c.Item, string(event.ReasonTooLarge), 0, err.Error())
				leases.remove(c.Item)
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
	// Acks and naks are buffered publishes: make sure the server has them
	// before the process goes away.
	if nc := w.js.Conn(); nc != nil && nc.IsConnected() {
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			w.log.Warn("flushing acks at shutdown", "err", err)
		}
	}
	if ctx.Err() != nil {
		w.log.Info("stopped", "reason", context.Cause(ctx).Error())
		return nil
	}
	return context.Cause(stop)
}

// read takes messages from the intake until it has stopped and sends each
// valid call on calls, or hands it to the ordered path when there is one;
// invalid ones are dead-lettered at once.
func (w *Worker) read(ctx context.Context, in *intake, leases *leases[*held], calls chan<- batcher.Call[*held]) {
	var prep event.Preparer
	// Calls are prepared into a slab shared by many calls rather than one
	// allocation each; a slab is released when the last batch using it is.
	var slab []byte
	for h, ok := in.next(); ok; h, ok = in.next() {
		data := h.msg.Data()
		// Compaction only shrinks a body; what Prepare inserts is short.
		if need := len(data) + 192 + len(h.id.Override); cap(slab)-len(slab) < need {
			slab = make([]byte, 0, max(slabSize, need))
		}
		start := len(slab)
		// A call without a timestamp gets its publish time, so a backlog
		// does not shift when Customer.io records it.
		var stamp event.Stamp
		var err error
		slab, stamp, err = prep.PrepareAt(slab, h.typ, data, h.id, h.published)
		h.call = slab[start:len(slab):len(slab)]
		if err != nil {
			w.rejectInput(ctx, h, err, leases)
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
		calls <- batcher.Call[*held]{Data: h.call, Item: h, Drained: h.deliveries == 1 && drained(h.msg) && in.empty()}
	}
}

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

// pullAhead is how many messages the batch intake may hold ahead of the
// batcher: about one batch, enough to keep the batcher busy, and no more
// than the consumer lets one client have unacknowledged.
func (w *Worker) pullAhead(cons jetstream.Consumer) int {
	n := min(w.opts.BatchMaxCalls, 1000)
	if m := cons.CachedInfo().Config.MaxAckPending; m > 0 {
		n = min(n, m)
	}
	return n
}

// slabSize is the size of the buffers calls are prepared into: a few
// hundred typical calls each.
const slabSize = 256 << 10

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

// rejectInput dead-letters a message whose body can never be delivered, with
// the validation error's reason.
func (w *Worker) rejectInput(ctx context.Context, h *held, err error, leases *leases[*held]) {
	reason := string(event.ReasonInvalidJSON)
	var ie *event.InvalidError
	if errors.As(err, &ie) {
		reason = string(ie.Reason)
	}
	w.deadLetter(ctx, h, reason, 0, err.Error())
	leases.remove(h)
}

// sampleConsumers keeps the consumer and held-message gauges current, and
// the lease keeper's interval a third of the shortest ack wait the
// consumers have now: another replica or an operator may change it at any
// time, and a lease extended by a stale, longer interval lets the message
// expire and be delivered again elsewhere.
func (w *Worker) sampleConsumers(ctx context.Context, consumers []jetstream.Consumer, leases *leases[*held]) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	waits := consumerAckWaits(consumers)
	for {
		w.m.held.Set(float64(leases.len()))
		for i, cons := range consumers {
			infoCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := cons.Info(infoCtx)
			cancel()
			if ctx.Err() == nil {
				w.health.observe(opInfo, err, time.Now()) // the probe that sees JetStream answer on an idle stream
			}
			if err != nil {
				continue
			}
			if i == 0 {
				w.m.pending.Set(float64(info.NumPending))
				w.m.ackPending.Set(float64(info.NumAckPending))
			}
			if d := ackWaitOf(info); d != waits[i] {
				w.log.Warn("consumer's ack wait changed; extending leases by it", "consumer", info.Name,
					"ack_wait", d.String(), "was", waits[i].String())
				waits[i] = d
			}
		}
		leases.setInterval(leaseInterval(waits))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consumerAckWaits returns the ack wait of each consumer as bound.
func consumerAckWaits(consumers []jetstream.Consumer) []time.Duration {
	waits := make([]time.Duration, len(consumers))
	for i, c := range consumers {
		waits[i] = ackWaitOf(c.CachedInfo())
	}
	return waits
}

// ackWaitOf is a consumer's ack wait: JetStream's default when unset.
func ackWaitOf(info *jetstream.ConsumerInfo) time.Duration {
	if d := info.Config.AckWait; d > 0 {
		return d
	}
	return 30 * time.Second
}

// leaseInterval is how often leases are extended: a third of the shortest
// ack wait, so each message is extended at least twice within any ack wait.
func leaseInterval(ackWaits []time.Duration) time.Duration {
	return max(slices.Min(ackWaits)/3, time.Millisecond)
}

// dispatch runs up to SendConcurrency deliveries at once. While all are busy
// it does not receive, which stops the batcher and, through it, the reader.
func (w *Worker) dispatch(ctx context.Context, batches <-chan *batcher.Batch[*held], leases *leases[*held]) {
	sem := make(chan struct{}, w.opts.SendConcurrency)
	var wg sync.WaitGroup
	for batch := range batches {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.m.inFlight.Inc()
			defer w.m.inFlight.Dec()
			defer leases.remove(batch.Items...)
			w.send(ctx, batch.Items, batch.Body())
			// The sender is done with the body (see Sender), and the calls
			// point into the reader's slabs, not into it: recycle it.
			batch.Release()
		})
	}
	wg.Wait()
}

// heldSlab is how many helds one allocation holds.
const heldSlab = 256

// parseAckReply reads the stream sequence, delivery count and timestamp
// from a JetStream ack subject without allocating:
// $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> or,
// with domain and account hash, $JS.ACK.<domain>.<hash>.<stream>.… .<rand>.
func parseAckReply(reply string) (seq, delivered uint64, ts int64, ok bool) {
	const prefix = "$JS.ACK."
	if !strings.HasPrefix(reply, prefix) {
		return 0, 0, 0, false
	}
	var tok [12]string
	n := 0
	rest := reply
	for n < len(tok) {
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			tok[n] = rest
			n++
			break
		}
		tok[n] = rest[:i]
		n++
		rest = rest[i+1:]
		if n == len(tok) && rest != "" {
			return 0, 0, 0, false
		}
	}
	var off int
	switch {
	case n == 9:
		off = 4
	case n >= 11:
		off = 6
	default:
		return 0, 0, 0, false
	}
	d, err1 := strconv.ParseUint(tok[off], 10, 64)
	s, err2 := strconv.ParseUint(tok[off+1], 10, 64)
	t, err3 := strconv.ParseInt(tok[off+3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, false
	}
	return s, d, t, true
}
