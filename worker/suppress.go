package worker

import (
	"context"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// suppress sends one suppression or unsuppression and settles it. The
// identifier is logged hashed: it is often an email address.
func (w *Worker) suppress(ctx context.Context, h *held) {
	action := "suppress"
	call := w.opts.Track.Suppress
	if h.msg.Subject() == SubjectUnsuppress {
		action, call = "unsuppress", w.opts.Track.Unsuppress
	}
	err := w.attempt(ctx, "track", &w.trackPause, 0, nil, func(ctx context.Context) error {
		return call(ctx, h.identifier)
	})
	switch sink.Classify(err) {
	case sink.Delivered:
		w.m.direct.WithLabelValues("track", "delivered").Inc()
		w.m.suppressions.WithLabelValues(action).Inc()
		w.log.Info("suppression applied", "action", action, "identifier_sha256", sink.HashIdentifier(h.identifier))
		w.settle(h, "ack", h.msg.Ack())
	case sink.Reject:
		w.m.direct.WithLabelValues("track", "rejected").Inc()
		w.deadLetter(ctx, h, deadletter.ReasonRejected, sink.StatusOf(err), err.Error())
	case sink.Retry:
		w.m.direct.WithLabelValues("track", "nakked").Inc()
		w.giveUp(ctx, []*held{h}, err)
	default:
		w.nakNow([]*held{h})
	}
}
