package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/sink"
)

// send delivers calls, whose batch body is body, and settles every one of
// them by the outcome (see attempt for retries and pauses):
//
//   - 2xx: ack all.
//   - retries spent: nak with a delay, or dead-letter with retries_exhausted
//     the calls already delivered MaxDeliver times (giveUp).
//   - retries spent on a 5xx, for a batch that has failed a delivery before:
//     one call may be what Customer.io chokes on. Split it in halves, each
//     tried once (see serverErrorSplit), so the healthy calls go through
//     and only a call that keeps failing on its own exhausts its deliveries.
//     A 429, 408 or a transport failure is never split: those say nothing
//     about the calls.
//   - any other 4xx: some call is bad. Split the batch in halves and send each,
//     so good calls are delivered and only a call rejected on its own is
//     dead-lettered (rejected).
//   - ctx done (shutdown timeout): nak at once for another replica.
func (w *Worker) send(ctx context.Context, calls []*held, body []byte) {
	w.deliver(ctx, calls, body, nil, true)
}

// splitAfterDeliveries is the delivery from which a batch that fails with
// 5xx is split rather than nakked whole: the first failure is most likely
// Customer.io's, and is ridden out by retries and redelivery; a batch that
// fails again after a nak delay, while Customer.io may well be fine, is
// worth a few requests to find out whether one call is the cause. It is
// low because MaxDeliver may be low: with 3, a later start would leave the
// healthy calls a single chance.
const splitAfterDeliveries = 2

// serverErrorSplit is one bisection of a batch that kept failing with 5xx.
// Its parts are tried once each: the batch has just spent this delivery's
// retry budget, and a part that fails again is nakked like any other, so
// nothing is lost by not retrying it. It is told apart from an outage,
// where every part fails, by what gets through: while nothing has, only the
// first failing half of each split is split further (a probe, two requests
// per level), so an outage costs about 2·log2(calls) requests per batch,
// not one per call.
type serverErrorSplit struct {
	delivered bool // some part of the batch went through: Customer.io is up
}

// deliver is send for calls that may be part of a batch being split:
// split is nil outside a 5xx split (see serverErrorSplit); maySplit says
// whether a 5xx failure of calls may be split further.
func (w *Worker) deliver(ctx context.Context, calls []*held, body []byte, split *serverErrorSplit, maySplit bool) {
	if w.ord != nil && len(calls) > 0 && calls[0].ordered {
		// A key may have been blocked since the batch was packed: its calls
		// wait for the blocker (see keyOrder).
		if kept := w.ord.filter(calls); len(kept) < len(calls) {
			if len(kept) == 0 {
				return
			}
			calls, body = kept, batchBody(kept)
		}
	}
	var stop func(error) bool
	if split != nil {
		stop = func(error) bool { return true } // one try: see serverErrorSplit
	}
	err := w.attempt(ctx, "cdp", &w.pause, 0, stop, func(ctx context.Context) error {
		return w.sender.SendBatch(ctx, body)
	})
	switch sink.Classify(err) {
	case sink.Delivered:
		if split != nil {
			split.delivered = true
		}
		w.m.batches.WithLabelValues("delivered").Inc()
		w.m.batchBytes.Observe(float64(len(body)))
		w.m.batchCalls.Observe(float64(len(calls)))
		for _, h := range calls {
			w.m.deliveredByType.inc(h.typ)
			w.settle(h, "ack", h.msg.Ack())
		}
	case sink.Reject:
		if len(calls) == 1 {
			w.m.batches.WithLabelValues("rejected").Inc()
			w.deadLetter(ctx, calls[0], string(deadletter.ReasonRejected), sink.StatusOf(err), err.Error())
			return
		}
		w.m.batches.WithLabelValues("split").Inc()
		w.log.Info("batch rejected; splitting it to find the bad calls", "calls", len(calls), "status", sink.StatusOf(err))
		w.bisect(ctx, calls, split)
	case sink.Retry:
		if len(calls) > 1 && sink.StatusOf(err) >= 500 {
			if split == nil && redelivered(calls) {
				split = &serverErrorSplit{}
				w.log.Warn("batch failed with a server error on another delivery; splitting it, in case one call is the cause",
					"calls", len(calls), "status", sink.StatusOf(err))
			}
			if split != nil && maySplit {
				w.m.batches.WithLabelValues("split").Inc()
				w.bisect(ctx, calls, split)
				return
			}
		}
		w.m.batches.WithLabelValues("nakked").Inc()
		w.giveUp(ctx, calls, err)
	default: // sink.Cancelled
		w.m.batches.WithLabelValues("nakked").Inc()
		w.nakNow(calls)
	}
}

// bisect sends each half of calls on its own. In a 5xx split the second
// half is split further only if something has gone through by the time it
// fails (see serverErrorSplit).
func (w *Worker) bisect(ctx context.Context, calls []*held, split *serverErrorSplit) {
	half := len(calls) / 2
	first, second := calls[:half], calls[half:]
	w.deliver(ctx, first, batchBody(first), split, true)
	w.deliver(ctx, second, batchBody(second), split, split == nil || split.delivered)
}

// redelivered reports whether any of calls has failed a delivery before.
// Any, not all: a call that keeps failing is batched with fresh ones on
// each redelivery, and would otherwise take them down with it every time.
func redelivered(calls []*held) bool {
	for _, h := range calls {
		if h.deliveries >= splitAfterDeliveries {
			return true
		}
	}
	return false
}

// attempt calls try until it succeeds, is rejected, is cancelled or has
// used its retry budget, and returns its last error:
//
//   - 429, 408, 5xx, no answer: try again with exponential backoff and
//     jitter, waiting at least Retry-After and at least minWait (an API's own
//     pacing); the last error is returned once RetryMaxElapsed is spent, or
//     at once when stop says that error must not be retried.
//   - 401, 403, 404, 405, 3xx: a configuration problem, not bad data: hold on,
//     pause (see pauseState) and probe every ProbeInterval until it passes.
//
// Every request's duration and status class is recorded under api.
func (w *Worker) attempt(ctx context.Context, api string, pause *pauseState, minWait time.Duration, stop func(error) bool, try func(context.Context) error) error {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.opts.RetryInitial),
		backoff.WithMaxInterval(w.opts.RetryMaxInterval),
		backoff.WithMaxElapsedTime(max(w.opts.RetryMaxElapsed, 0)),
		backoff.WithRandomizationFactor(0.5),
	)
	paused := false
	defer func() {
		if paused {
			pause.leave()
		}
	}()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", errGaveUpBetweenTries, context.Cause(ctx))
		}
		start := time.Now()
		err := try(ctx)
		w.observe(api, start, err)
		class := sink.Classify(err)
		if paused && class != sink.Pause {
			paused = false
			pause.leave()
		}
		var wait time.Duration
		switch class {
		case sink.Pause:
			if !paused {
				paused = true
				pause.enter(err)
			}
			if api == "cdp" {
				w.m.batches.WithLabelValues("paused").Inc()
			}
			wait = max(w.opts.ProbeInterval, minWait)
		case sink.Retry:
			if stop != nil && stop(err) {
				return err
			}
			wait = bo.NextBackOff()
			var se *sink.StatusError
			if errors.As(err, &se) && se.RetryAfter > 0 && wait != backoff.Stop {
				if se.RetryAfter > bo.MaxElapsedTime-bo.GetElapsedTime() {
					wait = backoff.Stop // honouring it would overrun the budget
				} else {
					wait = max(wait, se.RetryAfter)
				}
			}
			if w.opts.NoRetry || wait == backoff.Stop {
				return err
			}
			wait = max(wait, minWait)
			w.m.retries.WithLabelValues(retryReason(err)).Inc()
			if api == "cdp" {
				w.m.batches.WithLabelValues("retried").Inc()
			}
			w.log.Warn("request failed; retrying", "api", api, "err", err, "wait", wait.String())
		default:
			return err
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("%w: %w", errGaveUpBetweenTries, context.Cause(ctx))
		}
	}
}

// errGaveUpBetweenTries marks a shutdown that came while attempt waited
// between two requests: unlike one that cut a request off, nothing can have
// reached Customer.io since the last answer.
var errGaveUpBetweenTries = errors.New("shutdown between retries")

// nakNow hands messages back for immediate redelivery: at shutdown, so
// another replica takes them.
func (w *Worker) nakNow(calls []*held) {
	w.m.shutdownNaked.Add(float64(len(calls)))
	for _, h := range calls {
		w.blockKey(h)
		w.settle(h, "nak", h.msg.Nak())
	}
}

// giveUp ends this delivery's attempts after transient failures: a call
// delivered MaxDeliver times is dead-lettered; the others are nakked with a
// delay that grows with their delivery count (NakDelay × deliveries, at most
// ten times NakDelay), so an outage is ridden out without a hot loop.
func (w *Worker) giveUp(ctx context.Context, calls []*held, err error) {
	status := sink.StatusOf(err)
	exhausted := 0
	for _, h := range calls {
		if h.deliveries >= uint64(w.opts.MaxDeliver) {
			exhausted++
			w.deadLetter(ctx, h, string(deadletter.ReasonRetriesExhausted), status,
				fmt.Sprintf("delivery %d of %d failed: %v", h.deliveries, w.opts.MaxDeliver, err))
			continue
		}
		w.blockKey(h)
		w.settle(h, "nak", h.msg.NakWithDelay(w.nakDelay(h.deliveries)))
	}
	w.log.Warn("batch not delivered; nakked for redelivery", "calls", len(calls)-exhausted,
		"dead_lettered", exhausted, "err", err)
}

// blockKey tells the ordered path that h is being handed back, before it
// is: its key's later calls wait until it is redelivered.
func (w *Worker) blockKey(h *held) {
	if w.ord != nil && h.ordered {
		w.ord.nakked(h)
	}
}

func (w *Worker) nakDelay(deliveries uint64) time.Duration {
	return w.opts.NakDelay * time.Duration(min(max(deliveries, 1), 10))
}

// deadLetter writes h to the dead-letter stream, waits for the PubAck, and
// only then terminates the original. If the dead-letter publish fails the
// original is nakked, so it comes back and is dead-lettered then: never lost.
func (w *Worker) deadLetter(ctx context.Context, h *held, reason string, status int, detail string) {
	w.writeDeadLetter(ctx, h, reason, status, detail, time.Time{})
}

// deadLetterRequested dead-letters a broadcast trigger as ambiguous,
// recording when its request was sent.
func (w *Worker) deadLetterRequested(ctx context.Context, h *held, requestedAt time.Time, detail string) {
	w.writeDeadLetter(ctx, h, string(deadletter.ReasonAmbiguous), 0, detail, requestedAt)
}

func (w *Worker) writeDeadLetter(ctx context.Context, h *held, reason string, status int, detail string, requestedAt time.Time) {
	// The id the call was (or would have been) sent with: its own, or the
	// derived one, which a replay must keep.
	messageID := h.id.String()
	if id, ok := event.MessageIDOf(h.msg.Data()); ok {
		messageID = id
	}
	m := deadletter.Msg(h.msg.Subject(), h.msg.Headers(), h.msg.Data(), deadletter.Record{
		Reason:      deadletter.Reason(reason),
		Status:      status,
		Detail:      detail,
		Deliveries:  h.deliveries,
		Stream:      w.opts.Stream,
		StreamSeq:   h.seq,
		FirstSeen:   h.published,
		MessageID:   messageID,
		Origin:      h.id.Prefix + strconv.FormatUint(h.seq, 10),
		Version:     w.opts.Version,
		Replays:     deadletter.ReplaysOf(h.msg.Headers()), // so a call that fails every time stops being replayed
		RequestedAt: requestedAt,
	})
	// The publish gets its own bound: at shutdown ctx may be done, and a
	// dead letter that can still be written should be.
	pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := deadletter.Publish(pubCtx, w.js, m)
	if errors.Is(err, nats.ErrMaxPayload) {
		// The body is near NATS's payload limit and the dead-letter headers
		// push it over: publish the record without it rather than retry
		// forever. The original stays in its stream at the recorded
		// sequence.
		w.log.Warn("dead letter too large for NATS; writing it without the body", "stream_seq", h.seq, "bytes", len(m.Data))
		err = deadletter.Publish(pubCtx, w.js, deadletter.Stub(m))
	}
	w.health.observe(opPublishDLQ, err, time.Now())
	if err != nil {
		w.log.Error("dead-letter publish failed; nakking the message to try again", "reason", reason, "stream_seq", h.seq, "err", err)
		w.blockKey(h)
		w.settle(h, "nak", h.msg.NakWithDelay(w.opts.NakDelay))
		return
	}
	w.m.deadLetters.WithLabelValues(reason).Inc()
	w.log.Warn("dead-lettered", "reason", reason, "status", status, "subject", h.msg.Subject(),
		"stream_seq", h.seq, "deliveries", h.deliveries, "detail", truncate(detail, 300))
	w.settle(h, "term", h.msg.TermWithReason(reason))
}

// settle records the failure of an ack, nak or term. Nothing more can be
// done: the message is redelivered after its ack wait and Customer.io
// de-duplicates it by messageId.
func (w *Worker) settle(h *held, what string, err error) {
	if err != nil {
		w.health.failed(opAck, time.Now())
		w.m.acksFailed.Inc()
		w.log.Error(what+" failed; the message will be redelivered", "stream_seq", h.seq, "err", err)
	}
}

// observe records one request's duration and status class.
func (w *Worker) observe(api string, start time.Time, err error) {
	class := "2xx"
	if err != nil {
		class = "error"
		if s := sink.StatusOf(err); s != 0 {
			class = strconv.Itoa(s/100) + "xx"
		}
	}
	w.m.requestTime.WithLabelValues(api, class).Observe(time.Since(start).Seconds())
}

func retryReason(err error) string {
	switch s := sink.StatusOf(err); {
	case s == 429:
		return "status_429"
	case s == 408:
		return "status_408"
	case s >= 500:
		return "status_5xx"
	}
	return "transport"
}

// batchBody builds the body of a batch of calls: they already fit together,
// so any subset fits too.
func batchBody(calls []*held) []byte {
	n := len(`{"batch":[]}`) + len(calls)
	for _, h := range calls {
		n += len(h.call)
	}
	b := make([]byte, 0, n)
	b = append(b, `{"batch":[`...)
	for i, h := range calls {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, h.call...)
	}
	return append(b, `]}`...)
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// pauseState is shared by all senders of one API: delivery is paused while
// any of them holds work that got a configuration error. It is logged at
// error level once per probe interval, exposed as a metric and through
// Ready.
type pauseState struct {
	mu      sync.Mutex
	api     string // label and log field
	fix     string // what to check, for the log
	m       *metrics
	log     *slog.Logger
	every   time.Duration
	holders int
	since   time.Time
	lastLog time.Time
	lastErr string
}

func (p *pauseState) init(api, fix string, m *metrics, log *slog.Logger, every time.Duration) {
	p.api, p.fix, p.m, p.log, p.every = api, fix, m, log, every
	m.authPaused.WithLabelValues(api).Set(0)
}

func (p *pauseState) enter(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.holders == 0 {
		p.since = now
	}
	p.holders++
	p.lastErr = err.Error()
	p.m.authPaused.WithLabelValues(p.api).Set(1)
	if now.Sub(p.lastLog) >= p.every {
		p.lastLog = now
		p.log.Error("delivery PAUSED: Customer.io refused the credentials or URL; nothing is dead-lettered, "+
			"retrying every probe interval; a rotated key file is picked up without restart",
			"api", p.api, "check", p.fix, "err", err, "probe_interval", p.every.String(),
			"paused_for", now.Sub(p.since).Round(time.Second).String())
	}
}

func (p *pauseState) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holders--
	if p.holders == 0 {
		p.m.authPaused.WithLabelValues(p.api).Set(0)
		p.log.Info("delivery resumed", "api", p.api, "paused_for", time.Since(p.since).Round(time.Millisecond).String())
		p.lastLog = time.Time{}
	}
}

func (p *pauseState) paused() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holders > 0 {
		return true, p.api + " paused: " + p.lastErr
	}
	return false, ""
}
