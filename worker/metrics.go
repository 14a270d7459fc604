package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/event"
)

// metrics are the worker's Prometheus metrics. Labels take values from small
// fixed sets only (call types, outcomes, reasons, status classes).
type metrics struct {
	consumed      *prometheus.CounterVec   // type
	delivered     *prometheus.CounterVec   // type
	batches       *prometheus.CounterVec   // outcome
	batchBytes    prometheus.Histogram     //
	batchCalls    prometheus.Histogram     //
	requestTime   *prometheus.HistogramVec // api, status_class
	retries       *prometheus.CounterVec   // reason
	deadLetters   *prometheus.CounterVec   // reason
	inFlight      prometheus.Gauge         //
	acksFailed    prometheus.Counter       //
	authPaused    *prometheus.GaugeVec     // api
	held          prometheus.Gauge         //
	pending       prometheus.Gauge         //
	ackPending    prometheus.Gauge         //
	redeliveries  prometheus.Counter       //
	shutdownNaked prometheus.Counter       //
	direct        *prometheus.CounterVec   // api, outcome
	coalesced     prometheus.Counter       //
	suppressions  *prometheus.CounterVec   // action
	pacingWait    prometheus.Histogram     //
	track         *trackMetrics            // unsubscribes, delivery metrics
	// Calls sent without the publish time as their timestamp: they fit
	// Customer.io's per-call limit only without it.
	timestampOmitted prometheus.Counter
	turns            *turnMetrics // broadcast pacing across replicas
	// The ordered path's delivery lease (holder.go): held now, and the
	// epochs that ended, by why.
	deliveryLease prometheus.Gauge
	epochsEnded   *prometheus.CounterVec // reason

	consumedByType, deliveredByType *byType
}

// byType holds one labelled child per call type, so the hot path does not
// hash label values for every message.
type byType [event.Alias + 1]prometheus.Counter

func newByType(v *prometheus.CounterVec) *byType {
	var b byType
	for t := range b {
		b[t] = v.WithLabelValues(event.Type(t).String())
	}
	return &b
}

func (b *byType) inc(t event.Type) {
	if int(t) < len(b) {
		b[t].Inc()
	}
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_messages_consumed_total", Help: "Messages received from JetStream, by call type (unknown for undecodable).",
		}, []string{"type"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_calls_delivered_total", Help: "Calls Customer.io accepted (2xx), by call type.",
		}, []string{"type"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_batches_total", Help: "Batch requests by outcome: delivered, retried, rejected, split, paused, nakked.",
		}, []string{"outcome"}),
		batchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cio_relay_batch_bytes", Help: "Body size of batch requests sent.",
			Buckets: []float64{1e3, 1e4, 5e4, 1e5, 2e5, 3e5, 4e5, 450e3, 475e3, 490e3, 500e3},
		}),
		batchCalls: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cio_relay_batch_calls", Help: "Calls per batch request sent.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		requestTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cio_relay_request_duration_seconds", Help: "Customer.io request duration by API and status class (2xx, 4xx, 5xx, error).",
			Buckets: prometheus.DefBuckets,
		}, []string{"api", "status_class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_retries_total", Help: "Requests retried, by reason: status_429, status_5xx, status_408, transport.",
		}, []string{"reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_dead_letters_total", Help: "Messages written to the dead-letter stream, by reason.",
		}, []string{"reason"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_batches_in_flight", Help: "Batches being sent (including retries and auth pauses).",
		}),
		acksFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_acks_failed_total", Help: "Acks, naks or terms that could not be sent to JetStream.",
		}),
		authPaused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cio_relay_auth_paused", Help: "1 while delivery is paused on a configuration error (401/403/404) from the API.",
		}, []string{"api"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_messages_held", Help: "Messages received and not yet settled (in a batch or in flight).",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_consumer_pending", Help: "Messages in the stream not yet delivered to the consumer (sampled).",
		}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_consumer_ack_pending", Help: "Messages delivered to the consumer and not yet acked, all replicas (sampled).",
		}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_redeliveries_total", Help: "Messages received that JetStream had delivered before.",
		}),
		shutdownNaked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_shutdown_nakked_total", Help: "Messages nakked at shutdown because their batch could not finish in time.",
		}),
		direct: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_direct_calls_total", Help: "Direct calls (App API triggers, Track API suppressions) by API and outcome: delivered, rejected, nakked.",
		}, []string{"api", "outcome"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_broadcast_triggers_coalesced_total", Help: "Trigger messages delivered inside another trigger's request (requests saved).",
		}),
		suppressions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_suppressions_total", Help: "Suppressions and unsuppressions Customer.io accepted, by action.",
		}, []string{"action"}),
		pacingWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cio_relay_broadcast_pacing_wait_seconds", Help: "Time a broadcast trigger waited for its turn (10s per broadcast, across replicas) before its request was sent.",
			Buckets: []float64{0.01, 0.1, 1, 2.5, 5, 10, 20, 30, 60, 120, 300},
		}),
		timestampOmitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_timestamp_omitted_total", Help: "Calls without a timestamp sent without their publish time inserted, because only without it do they fit the 32,000-byte limit (Customer.io stamps them on arrival).",
		}),
		deliveryLease: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_ordered_delivery_lease", Help: "1 while this replica holds the ordered delivery lease: it alone sends and acks the batch consumer's calls (RELAY_ORDERING).",
		}),
		epochsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cio_relay_ordered_lease_released_total", Help: "Times this replica let the ordered delivery lease go, by reason: pin_lost, reconnected, lease_lost, not_acked, stopped.",
		}, []string{"reason"}),
	}
	m.consumedByType, m.deliveredByType = newByType(m.consumed), newByType(m.delivered)
	m.track = newTrackMetrics()
	m.turns = newTurnMetrics()
	if reg != nil {
		reg.MustRegister(m.track.collectors()...)
		reg.MustRegister(m.turns.collectors()...)
		reg.MustRegister(m.consumed, m.delivered, m.batches, m.batchBytes, m.batchCalls, m.requestTime,
			m.retries, m.deadLetters, m.inFlight, m.acksFailed, m.authPaused, m.held, m.pending, m.ackPending,
			m.redeliveries, m.shutdownNaked, m.direct, m.coalesced, m.suppressions, m.pacingWait, m.timestampOmitted,
			m.deliveryLease, m.epochsEnded)
	}
	return m
}
