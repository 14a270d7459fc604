package worker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// jsHealth tracks whether JetStream answers the worker: every JetStream
// operation that fails (a pull, an ack, a dead-letter publish, a consumer
// info, a KV read or write) starts the unavailable clock, and every answer
// (a message received, a dead letter stored, a consumer info) stops it. The
// consumer info the worker samples every few seconds is the probe that
// stops it on an idle stream.
//
// A lost quorum (two of three nodes down) shows as exactly this: pulls
// without heartbeats, infos and publishes timing out, acks that never land.
// The worker keeps trying (nothing is dead-lettered for it: a dead-letter
// publish that fails naks) and reports itself not ready, so /readyz answers
// 503, once the clock has run for unavailableAfter.
//
// Like trigger.Pacer it has no clock or goroutine of its own: time comes in
// as an argument, so its rules are table tests.
type jsHealth struct {
	since    atomic.Int64 // unix nanoseconds of the first failure since the last answer; 0: answering
	errors   *prometheus.CounterVec
	timeouts *prometheus.CounterVec // the failures that got no answer at all (isTimeout)
}

// The operations whose failures are counted, the op label's values.
const (
	opPull       = "pull"
	opAck        = "ack" // acks, naks and terms
	opPublishDLQ = "publish_dlq"
	opInfo       = "info"
	opKV         = "kv"
)

// unavailableAfter is how long JetStream may fail to answer before the
// worker reports itself not ready. A leader election takes a few seconds and
// the consumer info probe runs every 5s (sampleConsumers), so an election,
// or one node lost, never makes a replica unready; a lost quorum does within
// about 20s.
const unavailableAfter = 15 * time.Second

func newJSHealth(reg prometheus.Registerer) *jsHealth {
	h := &jsHealth{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_jetstream_errors_total",
			Help: "JetStream operations that failed (errors and timeouts), by op: pull, ack, publish_dlq, info, kv.",
		}, []string{"op"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_jetstream_timeouts_total",
			Help: "JetStream operations that got no answer (timed out, no responders, a pull without heartbeats), by op; also counted in cio_relay_jetstream_errors_total.",
		}, []string{"op"}),
	}
	for _, op := range []string{opPull, opAck, opPublishDLQ, opInfo, opKV} {
		// Present at 0, so rate() and alerts see the series from the start.
		h.errors.WithLabelValues(op)
		h.timeouts.WithLabelValues(op)
	}
	if reg != nil {
		reg.MustRegister(h.errors, h.timeouts, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cio_relay_jetstream_unavailable_seconds",
			Help: "Time since JetStream last answered, counted from the first failure after that answer; 0 while it answers.",
		}, func() float64 { return h.unavailable(time.Now()).Seconds() }))
	}
	return h
}

// failed records a failed JetStream operation at now; err, when known,
// tells a timeout from an error JetStream answered with.
func (h *jsHealth) failed(op string, err error, now time.Time) {
	if h == nil {
		return
	}
	h.errors.WithLabelValues(op).Inc()
	if isTimeout(err) {
		h.timeouts.WithLabelValues(op).Inc()
	}
	h.since.CompareAndSwap(0, now.UnixNano())
}

// isTimeout reports whether err is JetStream not answering at all, as
// opposed to answering with an error (503 "JetStream system temporarily
// unavailable", say): a request or PubAck that timed out, nobody listening
// where a stream leader should (no responders; "no response from stream"
// to a publish), a pull without heartbeats. In a lost quorum both kinds
// come.
func isTimeout(err error) bool {
	for _, target := range []error{
		context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders,
		jetstream.ErrAsyncPublishTimeout, jetstream.ErrNoStreamResponse, jetstream.ErrNoHeartbeat,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// answered records that JetStream answered. Cheap enough for every message.
// Both are no-ops on a nil jsHealth (an intake under test), which always
// answers.
func (h *jsHealth) answered() {
	if h != nil && h.since.Load() != 0 {
		h.since.Store(0)
	}
}

// observe records the outcome of an operation: a failure when err is set,
// an answer otherwise.
func (h *jsHealth) observe(op string, err error, now time.Time) {
	if err != nil {
		h.failed(op, err, now)
		return
	}
	h.answered()
}

// unavailable returns how long JetStream has not answered at now; 0 while
// it answers.
func (h *jsHealth) unavailable(now time.Time) time.Duration {
	if h == nil {
		return 0
	}
	since := h.since.Load()
	if since == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, since)), 0)
}

// ready reports false, with the reason, once JetStream has not answered for
// unavailableAfter.
func (h *jsHealth) ready(now time.Time) (bool, string) {
	if d := h.unavailable(now); d >= unavailableAfter {
		return false, fmt.Sprintf("JetStream has not answered for %v (no quorum, or NATS unreachable)", d.Round(time.Second))
	}
	return true, ""
}
