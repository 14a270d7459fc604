package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/sink"
)

// Subjects of the Track API calls attributed to a delivery.
const (
	SubjectUnsubscribe = "cio.unsubscribe"
	SubjectMetric      = "cio.metric"
)

// DeliveryReporter sends the Track API calls attributed to a delivery,
// which need no credentials.
type DeliveryReporter interface {
	Unsubscribe(ctx context.Context, u sink.Unsubscribe) error
	ReportMetric(ctx context.Context, body []byte) error
}

// Ordering of Track API calls.
//
// A suppress and an unsuppress of one identifier, or an unsubscribe and a
// re-subscribe of one delivery, leave the person in the state of whichever
// request Customer.io saw last. So Customer.io must see them in stream
// order, whatever happens on the way: several senders in one replica,
// several replicas, retries, naks, a replica killed with a request in hand.
// A per-key queue inside a replica cannot promise that on its own: a nak
// hands the message back to JetStream, which may give a younger message of
// the same key to another replica first.
//
// The server can: the ordered consumers ({RELAY_CONSUMER}-suppress and
// {RELAY_CONSUMER}-unsubscribe) are created with MaxAckPending 1, so
// JetStream hands out the next message only once the previous one is acked
// or terminated, to whichever replica asks. A message nakked (with or
// without a delay) stays pending, and redeliveries are served before new
// messages, so the one that failed goes first when it comes back; a replica
// that dies holding it blocks the consumer until its ack wait ends, then it
// is redelivered first. Only a dead letter (a request Customer.io rejected,
// or retries exhausted after RELAY_MAX_DELIVER deliveries) lets the next
// one pass without it: it failed, and the operator replays it knowingly.
//
// The price is one Track request in flight per ordered consumer across all
// replicas (a few per second with Customer.io's usual latency), and one
// failing request holds up the others until it is settled: suppressions
// and unsubscribes are low volume, and a Track API that fails one request
// is usually failing them all. Priority groups (a pinned client) would
// allow per-identifier parallelism within the one pinned replica, but every
// pull would have to name the group, and replicas of a version that does
// not would be refused by the server (400) during a rolling deploy.
// MaxAckPending needs nothing of the puller.
//
// Delivery metrics ({RELAY_CONSUMER}-metric) are not ordered: each carries
// the time it happened, and reporting "opened" before "delivered" changes
// nothing.
//
// Rolling deploys. A consumer's filter subjects and MaxAckPending are what
// the last CreateOrUpdateConsumer said, so replicas of different versions
// must never manage the same consumer with different subjects: a replica
// that removed a subject would make the consumer skip its messages, for
// good. The new subjects therefore have consumers of their own, which no
// older version knows, and {RELAY_CONSUMER}-suppress keeps its subjects. An
// older replica that starts during the deploy sets the suppression
// consumer's MaxAckPending back to 1000; watchOrdered notices within
// orderedCheckInterval and sets it to 1 again (older replicas only write it
// when they start, so the two never fight).
const orderedMaxAckPending = 1

// trackConsumers are the consumers of Track API calls this worker can
// send: suppressions with credentials, unsubscribes and metrics with a
// DeliveryReporter.
func (w *Worker) trackConsumers() []directConsumer {
	var cs []directConsumer
	if w.opts.Track != nil {
		cs = append(cs, directConsumer{name: w.opts.Consumer + "-suppress", subjects: []string{SubjectSuppress, SubjectUnsuppress}, ordered: true})
	}
	if w.opts.Delivery != nil {
		cs = append(cs,
			directConsumer{name: w.opts.Consumer + "-unsubscribe", subjects: []string{SubjectUnsubscribe}, ordered: true, optional: true},
			directConsumer{name: w.opts.Consumer + "-metric", subjects: []string{SubjectMetric}, optional: true})
	}
	return cs
}

// boundDirectConsumers are the direct consumers Run binds: all of them,
// except, when the worker does not manage streams, an optional one nobody
// has created. Unsubscribes and metrics need no credentials, so nothing
// says an operator meant to have them; a deployment that creates its
// consumers itself must not stop starting because a new version knows
// more subjects. Their messages stay in the stream meanwhile.
func (w *Worker) boundDirectConsumers(ctx context.Context) []directConsumer {
	var cs []directConsumer
	for _, dc := range w.directConsumers() {
		if dc.optional && !w.opts.ManageStreams {
			_, err := w.js.Consumer(ctx, w.opts.Stream, dc.name)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				w.log.Warn("consumer not found and RELAY_MANAGE_STREAMS=false: its messages stay in the stream, unconsumed; "+
					"create a durable pull consumer with explicit ack and these filter subjects to send them",
					"consumer", dc.name, "subjects", dc.subjects, "max_ack_pending", dc.maxAckPending())
				continue
			}
		}
		cs = append(cs, dc)
	}
	return cs
}

// maxAckPending is the consumer's MaxAckPending: 1 for the ordered ones
// (see orderedMaxAckPending); otherwise small, so triggers waiting for
// their broadcast's turn are not all handed to one replica.
func (dc directConsumer) maxAckPending() int {
	if dc.ordered {
		return orderedMaxAckPending
	}
	return 1000
}

// checkOrdered refuses an ordered consumer someone else created with a
// MaxAckPending other than 1: its calls could reach Customer.io out of
// order.
func (dc directConsumer) checkOrdered(cons jetstream.Consumer) error {
	if got := cons.CachedInfo().Config.MaxAckPending; dc.ordered && got != orderedMaxAckPending {
		return fmt.Errorf("consumer %s has MaxAckPending %d: its calls (%v) must reach Customer.io in stream order, "+
			"which needs MaxAckPending %d", dc.name, got, dc.subjects, orderedMaxAckPending)
	}
	return nil
}

// trackMetrics count the Track API calls attributed to a delivery.
type trackMetrics struct {
	unsubscribes *prometheus.CounterVec // action
	metrics      *prometheus.CounterVec // metric, shape
}

func newTrackMetrics() *trackMetrics {
	m := &trackMetrics{
		unsubscribes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_unsubscribes_total", Help: "Unsubscribes attributed to a delivery that Customer.io accepted, by action: unsubscribe, resubscribe.",
		}, []string{"action"}),
		metrics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_delivery_metrics_total", Help: "Delivery metrics Customer.io accepted, by metric and by the shape they came in: metrics, push_events (legacy).",
		}, []string{"metric", "shape"}),
	}
	for _, a := range []string{"unsubscribe", "resubscribe"} {
		m.unsubscribes.WithLabelValues(a)
	}
	return m
}

func (m *trackMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.unsubscribes, m.metrics}
}

// orderedCheckInterval is how often watchOrdered looks at an ordered
// consumer's MaxAckPending.
const orderedCheckInterval = 30 * time.Second

// watchOrdered puts an ordered consumer's MaxAckPending back to 1 whenever
// something (an older replica starting during a rolling deploy) has changed
// it, until ctx is done. It runs only when the worker manages streams.
func (w *Worker) watchOrdered(ctx context.Context, dc directConsumer) {
	t := time.NewTicker(orderedCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := w.restoreOrdered(ctx, dc); err != nil {
			w.log.Error("checking ordered consumer failed", "consumer", dc.name, "err", err)
		}
	}
}

// restoreOrdered sets dc's MaxAckPending back to 1 if it is not.
func (w *Worker) restoreOrdered(ctx context.Context, dc directConsumer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := w.js.Consumer(ctx, w.opts.Stream, dc.name)
	if err != nil {
		return fmt.Errorf("looking up consumer %s: %w", dc.name, err)
	}
	_, err = w.enforceOrdered(ctx, cons)
	return err
}

// enforceOrdered sets an ordered consumer's MaxAckPending to 1 when it is
// not (see orderedMaxAckPending).
func (w *Worker) enforceOrdered(ctx context.Context, cons jetstream.Consumer) (jetstream.Consumer, error) {
	info := cons.CachedInfo()
	cfg := info.Config
	if cfg.MaxAckPending == orderedMaxAckPending {
		return cons, nil
	}
	got := cfg.MaxAckPending
	cfg.MaxAckPending = orderedMaxAckPending
	updated, err := w.js.UpdateConsumer(ctx, w.opts.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting MaxAckPending of ordered consumer %s to %d: %w", info.Name, orderedMaxAckPending, err)
	}
	w.log.Warn("ordered consumer's MaxAckPending was changed (by an older replica?); set it back",
		"consumer", info.Name, "max_ack_pending", got, "want", orderedMaxAckPending)
	return updated, nil
}
