package worker

import (
	"context"

	"github.com/cio-relay/cio-relay/sink"
)

// suppress sends one suppression or unsuppression and settles it (see
// trackCall). The identifier is logged hashed: it is often an email
// address.
func (w *Worker) suppress(ctx context.Context, h *held) {
	action := "suppress"
	call := w.opts.Track.Suppress
	if h.msg.Subject() == SubjectUnsuppress {
		action, call = "unsuppress", w.opts.Track.Unsuppress
	}
	w.trackCall(ctx, h, func(ctx context.Context) error {
		return call(ctx, h.identifier)
	}, func() {
		w.m.suppressions.WithLabelValues(action).Inc()
		w.log.Info("suppression applied", "action", action, "identifier_sha256", sink.HashIdentifier(h.identifier))
	})
}
