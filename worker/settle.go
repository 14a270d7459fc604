package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

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
			w.deadLetter(ctx, h, deadletter.ReasonRetriesExhausted, status,
				fmt.Sprintf("delivery %d of %d failed: %v", h.deliveries, w.opts.MaxDeliver, err))
			continue
		}
		w.blockKey(h)
		w.settle(h, "nak", h.msg.NakWithDelay(w.nakDelay(h.deliveries)))
	}
	w.log.Warn("batch not delivered; nakked for redelivery", "calls", len(calls)-exhausted,
		"dead_lettered", exhausted, "err", err)
}

func (w *Worker) nakDelay(deliveries uint64) time.Duration {
	return w.opts.NakDelay * time.Duration(min(max(deliveries, 1), 10))
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
