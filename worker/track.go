package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/sink"
)

// trackRunner sends the Track API calls of one direct consumer (suppressions,
// unsubscribes, delivery metrics), each with the Track API's retries and
// pauses, and settles each message by the outcome (see decide). runDirect
// hands it parsed calls; several run at once (DirectConcurrency).
type trackRunner struct {
	*retrier
	*settler
	pause      *pauseState // the Track API's
	track      Suppressor
	delivery   DeliveryReporter
	maxDeliver int
	nakDelay   time.Duration
	m          *metrics
	log        *slog.Logger
}

// trackCall is one Track API message, parsed.
type trackCall struct {
	h      *held
	unsub  sink.Unsubscribe
	metric sink.Metric
}

// parseTrackCall validates a Track API message; for suppressions it sets
// h.identifier.
func parseTrackCall(h *held) (trackCall, error) {
	c := trackCall{h: h}
	var err error
	switch h.msg.Subject() {
	case SubjectSuppress, SubjectUnsuppress:
		h.identifier, err = sink.ParseSuppression(h.msg.Data())
	case SubjectUnsubscribe:
		c.unsub, err = sink.ParseUnsubscribe(h.msg.Data())
	case SubjectMetric:
		c.metric, err = sink.ParseMetric(h.msg.Data())
	default:
		err = &event.InvalidError{Reason: event.ReasonUnknownType, Detail: "no Track API call on subject " + h.msg.Subject()}
	}
	return c, err
}

// send sends one Track API call and settles its message.
func (w *trackRunner) send(ctx context.Context, c trackCall) {
	switch c.h.msg.Subject() {
	case SubjectSuppress, SubjectUnsuppress:
		w.suppress(ctx, c.h)
	case SubjectUnsubscribe:
		action := "unsubscribe"
		if !c.unsub.Unsubscribe {
			action = "resubscribe"
		}
		w.call(ctx, c.h, func(ctx context.Context) error {
			return w.delivery.Unsubscribe(ctx, c.unsub)
		}, func() {
			w.m.track.unsubscribes.WithLabelValues(action).Inc()
			// A delivery id names a message, not a person: it may be logged.
			w.log.Info("unsubscribe applied", "action", action, "delivery_id", c.unsub.DeliveryID)
		})
	case SubjectMetric:
		body, err := c.metric.Body(c.h.published)
		if err != nil {
			w.deadLetter(ctx, c.h, event.ReasonInvalidField, 0, err.Error())
			return
		}
		shape := "metrics"
		if c.metric.Legacy {
			shape = "push_events"
		}
		w.call(ctx, c.h, func(ctx context.Context) error {
			return w.delivery.ReportMetric(ctx, body)
		}, func() {
			w.m.track.metrics.WithLabelValues(c.metric.Metric, shape).Inc()
			// Never the recipient: an email address, phone number or device token.
			w.log.Debug("delivery metric reported", "metric", c.metric.Metric, "delivery_id", c.metric.DeliveryID)
		})
	}
}

// call sends one request with the Track API's retries and pauses (as
// for suppressions) and settles h by the outcome: ack, dead-letter as
// rejected (a 400 is a malformed delivery id), nak for later, or nak now
// at shutdown.
func (w *trackRunner) call(ctx context.Context, h *held, try func(context.Context) error, done func()) {
	err := w.attempt(ctx, sink.APITrack, w.pause, 0, nil, try)
	s := settlement{outcome: outcome{Class: sink.Classify(err), Kind: kindTrack, Calls: 1,
		Status: statusOf(err), MaxDeliver: w.maxDeliver, NakDelay: w.nakDelay}, err: err}
	switch s.Class {
	case sink.Delivered:
		w.m.direct.WithLabelValues(string(sink.APITrack), "delivered").Inc()
		done()
	case sink.Reject:
		w.m.direct.WithLabelValues(string(sink.APITrack), "rejected").Inc()
	case sink.Retry:
		w.m.direct.WithLabelValues(string(sink.APITrack), "nakked").Inc()
	}
	w.settleCalls(ctx, []*held{h}, s)
}

// suppress sends one suppression or unsuppression and settles it (see
// call). The identifier is logged hashed: it is often an email
// address.
func (w *trackRunner) suppress(ctx context.Context, h *held) {
	action := "suppress"
	call := w.track.Suppress
	if h.msg.Subject() == SubjectUnsuppress {
		action, call = "unsuppress", w.track.Unsuppress
	}
	w.call(ctx, h, func(ctx context.Context) error {
		return call(ctx, h.identifier)
	}, func() {
		w.m.suppressions.WithLabelValues(action).Inc()
		w.log.Info("suppression applied", "action", action, "identifier_sha256", sink.HashIdentifier(h.identifier))
	})
}
