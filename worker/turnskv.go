package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// TurnsBucket is the name of the KV bucket of broadcast turns for stream:
// "{stream}_PACE".
func TurnsBucket(stream string) string { return stream + "_PACE" }

// TurnsConfig is the KV bucket the worker creates for stream's broadcast
// turns when it manages streams: one value per key, per-key TTLs (the
// server expires each turn), their expiry markers kept a minute. TTL bounds
// what could outlive every per-key TTL (an operator's manual write) to an
// hour. Memory storage would do, since a turn is worth nothing after a
// minute, but file storage keeps the turns of a replica that is mid-request
// through a server restart. Replicas is 1 here; the worker creates it with
// RELAY_STREAM_REPLICAS, like its streams.
func TurnsConfig(stream string) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         TurnsBucket(stream),
		Description:    "cio-relay: whose turn it is to send a trigger request for each broadcast",
		History:        1,
		TTL:            time.Hour,
		LimitMarkerTTL: time.Minute,
		MaxValueSize:   256,
		Storage:        jetstream.FileStorage,
		Replicas:       1,
	}
}

// turnMetrics count how trigger requests were paced.
type turnMetrics struct {
	bucket   string
	global   prometheus.Gauge
	fallback prometheus.Counter
}

func newTurnMetrics() *turnMetrics {
	return &turnMetrics{
		global: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_broadcast_pacing_global",
			Help: "1 while this replica paces broadcast triggers across replicas (the {stream}_PACE bucket answers), 0 while it paces them on its own.",
		}),
		fallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_broadcast_pacing_fallback_total",
			Help: "Trigger requests sent paced by this replica alone, because the {stream}_PACE bucket could not be reached.",
		}),
	}
}

func (m *turnMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.global, m.fallback}
}

// kvTurns is turnStore on a JetStream KV bucket.
type kvTurns struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	subject string // "$KV.{bucket}.": a key's subject, for Replace
}

func newKVTurns(js jetstream.JetStream, kv jetstream.KeyValue) *kvTurns {
	return &kvTurns{kv: kv, js: js, subject: "$KV." + kv.Bucket() + "."}
}

func (s *kvTurns) Create(ctx context.Context, key, value string, ttl time.Duration) (uint64, error) {
	return s.kv.Create(ctx, key, []byte(value), jetstream.KeyTTL(ttl))
}

func (s *kvTurns) Get(ctx context.Context, key string) (turnEntry, error) {
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		return turnEntry{}, err
	}
	return turnEntry{value: string(e.Value()), created: e.Created(), rev: e.Revision()}, nil
}

// Replace is Update with a TTL, which KeyValue.Update cannot set: a publish
// to the key's subject expecting rev as the subject's last sequence, as
// Update does, with the Nats-TTL header, as Create does.
func (s *kvTurns) Replace(ctx context.Context, key, value string, rev uint64, ttl time.Duration) (uint64, error) {
	ack, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: s.subject + key, Data: []byte(value)},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
		}
		return 0, err
	}
	return ack.Sequence, nil
}

// Free purges the key if rev is still its revision; the purge marker itself
// expires after a minute, so freed turns leave nothing behind.
func (s *kvTurns) Free(ctx context.Context, key string, rev uint64) error {
	return s.kv.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(time.Minute))
}

// bindTurns opens the turns bucket for the worker's stream, creating or
// updating it when the worker manages streams. Without the bucket (missing
// with RELAY_MANAGE_STREAMS=false, or refused by a server older than 2.11)
// it warns and paces per replica, looking for the bucket again every
// minute. It returns nil when the worker sends no triggers.
func (w *Worker) bindTurns(ctx context.Context) *turns {
	if w.opts.App == nil {
		return nil
	}
	cfg := TurnsConfig(w.opts.Stream)
	w.m.turns.bucket = cfg.Bucket
	find := func(ctx context.Context) (turnStore, error) {
		kv, err := w.js.KeyValue(ctx, cfg.Bucket)
		if err != nil {
			return nil, err
		}
		return newKVTurns(w.js, kv), nil
	}
	var store turnStore
	if w.opts.ManageStreams {
		cfg.Replicas = w.bucketReplicas(ctx, cfg) // kept like the stream it paces
		kv, err := w.js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			w.log.Warn("could not create the broadcast pacing bucket (needs nats-server 2.11 or later): each replica paces its own trigger requests",
				"bucket", cfg.Bucket, "err", err)
		} else {
			store = newKVTurns(w.js, kv)
		}
	} else {
		s, err := find(ctx)
		if err != nil {
			w.log.Warn(fmt.Sprintf("broadcast pacing bucket %s not usable and RELAY_MANAGE_STREAMS=false: each replica paces its own trigger requests, "+
				"so two replicas may send for one broadcast within 10s (answered 429, retried); create it with "+
				"`nats kv add %s --history 1 --ttl 1h --marker-ttl 1m` (nats-server 2.11 or later), or let cio-relay manage it; "+
				"it is looked for again every minute", cfg.Bucket, cfg.Bucket), "err", err)
		} else {
			w.bucketReplicas(ctx, cfg) // warns of another count, as for the streams
		}
		store = s
	}
	w.m.turns.global.Set(0)
	return newTurns(store, find, w.opts.BroadcastInterval, sendLimit(w.opts.TriggerTimeout), w.log, w.m.turns)
}
