package worker

import (
	"context"
	"strconv"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
)

// deadLetter writes h to the dead-letter stream, waits for the PubAck, and
// only then terminates the original. If the dead-letter publish fails the
// original is nakked, so it comes back and is dead-lettered then: never lost.
func (w *settler) deadLetter(ctx context.Context, h *held, reason deadletter.Reason, status int, detail string) {
	w.writeDeadLetter(ctx, h, reason, status, detail, time.Time{})
}

// deadLetterRequested dead-letters a broadcast trigger as ambiguous,
// recording when its request was sent.
func (w *settler) deadLetterRequested(ctx context.Context, h *held, requestedAt time.Time, detail string) {
	w.writeDeadLetter(ctx, h, deadletter.ReasonAmbiguous, 0, detail, requestedAt)
}

func (w *settler) writeDeadLetter(ctx context.Context, h *held, reason deadletter.Reason, status int, detail string, requestedAt time.Time) {
	// The id the call was (or would have been) sent with: its own, or the
	// derived one, which a replay must keep.
	messageID := h.id.String()
	if id, ok := event.MessageIDOf(h.msg.Data()); ok {
		messageID = id
	}
	r := deadletter.Record{
		Reason:      reason,
		Status:      status,
		Detail:      detail,
		Deliveries:  h.deliveries,
		Stream:      w.stream,
		StreamSeq:   h.seq,
		FirstSeen:   h.published,
		MessageID:   messageID,
		Origin:      h.id.Prefix + strconv.FormatUint(h.seq, 10),
		Version:     w.version,
		Replays:     deadletter.ReplaysOf(h.msg.Headers()), // so a call that fails every time stops being replayed
		RequestedAt: requestedAt,
	}
	// The publish gets its own bound: at shutdown ctx may be done, and a
	// dead letter that can still be written should be.
	pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	omitted, err := deadletter.Write(pubCtx, w.js, h.msg.Subject(), h.msg.Headers(), h.msg.Data(), r)
	if omitted && err == nil {
		// The body is near NATS's payload limit and the dead-letter headers
		// pushed it over: the record went without it. The original stays
		// in its stream at the recorded sequence.
		w.log.Warn("dead letter too large for NATS; written without the body", "stream_seq", h.seq, "bytes", len(h.msg.Data()))
	}
	w.health.observe(opPublishDLQ, err, time.Now())
	if err != nil {
		w.log.Error("dead-letter publish failed; nakking the message to try again", "reason", reason.String(), "stream_seq", h.seq, "err", err)
		w.blockKey(h)
		w.settle(h, "nak", h.msg.NakWithDelay(w.retryDLQ))
		return
	}
	if w.mayTerm != nil && !w.mayTerm(h) {
		// Written, but a term now could reach the server after the
		// ordered delivery lease ran out (holder.go): hand it back. The
		// next holder writes it again with the same Nats-Msg-Id, which
		// the dead-letter stream drops as a duplicate, and terminates it.
		w.settle(h, "nak", h.msg.Nak())
		return
	}
	w.m.deadLetters.WithLabelValues(reason.String()).Inc()
	w.log.Warn("dead-lettered", "reason", reason.String(), "status", status, "subject", h.msg.Subject(),
		"stream_seq", h.seq, "deliveries", h.deliveries, "detail", truncate(detail, 300))
	w.settle(h, "term", h.msg.TermWithReason(reason.String()))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
