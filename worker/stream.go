package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
)

// StreamSubjects is what the stream captures: every subject under "cio.".
const StreamSubjects = "cio.>"

// FilterSubjects is what the batch consumer takes: the batchable call
// subjects. Other subjects under cio.> stay in the stream for the consumers
// that handle them; nothing is consumed that this worker cannot deliver.
func FilterSubjects() []string {
	s := make([]string, 0, len(event.Types))
	for _, t := range event.Types {
		s = append(s, t.Subject())
	}
	return s
}

// MaxStreamReplicas is the most replicas JetStream keeps of a stream.
const MaxStreamReplicas = 5

// StreamConfig is the stream the worker creates when it manages streams,
// with one replica; the worker sets Options.StreamReplicas.
// Limits retention keeps messages for other consumers and for replay after
// an outage; seven days is longer than any plausible Customer.io outage.
func StreamConfig(name string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: "Customer.io calls for cio-relay",
		Subjects:    []string{StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      7 * 24 * time.Hour,
		Duplicates:  2 * time.Minute,
		Discard:     jetstream.DiscardOld,
	}
}

// consumerConfig is the durable pull consumer every replica shares.
// MaxDeliver is unlimited: whether a failing message is given up on is the
// worker's decision, taken with a reason, never a silent drop by the server.
func (w *Worker) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        w.opts.Consumer,
		Description:    "cio-relay delivery to Customer.io",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        w.opts.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  w.opts.MaxAckPending,
		FilterSubjects: FilterSubjects(),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
}

// bind returns the consumer to pull from and the prefix of derived
// messageIds. When ManageStreams is set it creates or updates the stream and
// consumer; otherwise it only looks them up and says what is missing.
func (w *Worker) bind(ctx context.Context) (jetstream.Consumer, string, error) {
	stream, err := w.js.Stream(ctx, w.opts.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && w.opts.ManageStreams:
		stream, err = w.js.CreateStream(ctx, w.replicated(StreamConfig(w.opts.Stream)))
		if err != nil {
			return nil, "", fmt.Errorf("creating stream %s%s: %w", w.opts.Stream, w.replicasHint(), err)
		}
		w.log.Info("created stream", "stream", w.opts.Stream, "subjects", StreamSubjects)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, "", fmt.Errorf("stream %s not found and RELAY_MANAGE_STREAMS=false: create it with subjects %q (file storage), or let cio-relay manage it", w.opts.Stream, StreamSubjects)
	case err != nil:
		return nil, "", fmt.Errorf("looking up stream %s: %w", w.opts.Stream, err)
	}

	info := stream.CachedInfo()
	w.checkReplicas(info)
	if !slices.Contains(info.Config.Subjects, StreamSubjects) {
		if !w.opts.ManageStreams {
			return nil, "", fmt.Errorf("stream %s has subjects %q, not %q, and RELAY_MANAGE_STREAMS=false", w.opts.Stream, info.Config.Subjects, StreamSubjects)
		}
		cfg := info.Config
		cfg.Subjects = append(cfg.Subjects, StreamSubjects)
		if stream, err = w.js.UpdateStream(ctx, cfg); err != nil {
			return nil, "", fmt.Errorf("adding subjects %q to stream %s: %w", StreamSubjects, w.opts.Stream, err)
		}
		info = stream.CachedInfo()
		w.log.Info("updated stream subjects", "stream", w.opts.Stream, "subjects", info.Config.Subjects)
	}

	want := w.consumerConfig()
	cons, err := w.bindConsumer(ctx, want)
	if err != nil {
		return nil, "", err
	}
	if cons, err = w.checkPinned(ctx, cons); err != nil {
		return nil, "", err
	}

	if err := w.bindDLQ(ctx); err != nil {
		return nil, "", err
	}

	return cons, idPrefix(w.opts.Stream, info.Created), nil
}

// idPrefix is the prefix of the messageIds derived for a stream's calls. The
// stream's creation time, in nanoseconds, makes derived ids unique across a
// stream deleted and created again, whose sequences restart at 1, even
// within the same second: Customer.io would otherwise drop new calls as
// duplicates of old ones. JetStream keeps the time, to the nanosecond,
// across restarts, so one incarnation always derives the same ids.
func idPrefix(stream string, created time.Time) string {
	return stream + "-" + strconv.FormatInt(created.UnixNano(), 36) + "-"
}

// bindDLQ makes sure the dead-letter stream exists: created when cio-relay
// manages streams, required otherwise. Without it a call that cannot be
// delivered would have nowhere to go, so the worker does not start.
func (w *Worker) bindDLQ(ctx context.Context) error {
	dlq, err := w.js.Stream(ctx, w.opts.DLQStream)
	switch {
	case err == nil:
		w.checkReplicas(dlq.CachedInfo())
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound) && w.opts.ManageStreams:
		if _, err := w.js.CreateStream(ctx, w.replicated(deadletter.StreamConfig(w.opts.DLQStream, w.opts.DLQMaxAge, -1))); err != nil {
			return fmt.Errorf("creating dead-letter stream %s%s: %w", w.opts.DLQStream, w.replicasHint(), err)
		}
		w.log.Info("created dead-letter stream", "stream", w.opts.DLQStream, "subjects", deadletter.StreamSubjects,
			"max_age", w.opts.DLQMaxAge.String())
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("dead-letter stream %s not found and RELAY_MANAGE_STREAMS=false: create it with subjects %q (file storage, duplicate window ≥ 10m)", w.opts.DLQStream, deadletter.StreamSubjects)
	default:
		return fmt.Errorf("looking up dead-letter stream %s: %w", w.opts.DLQStream, err)
	}
}

// bindDirect binds one consumer of direct calls (see bindConsumer).
func (w *Worker) bindDirect(ctx context.Context, dc directConsumer) (jetstream.Consumer, error) {
	cfg := w.consumerConfig()
	cfg.Durable = dc.name
	cfg.Description = "cio-relay direct calls: " + strings.Join(dc.subjects, ", ")
	cfg.FilterSubjects = dc.subjects
	cfg.MaxAckPending = dc.maxAckPending()
	cons, err := w.bindConsumer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if dc.ordered && w.opts.ManageStreams {
		// Unlike the settings bindConsumer adopts, an ordered consumer's
		// MaxAckPending is not a matter of taste: with more than one
		// message out at a time its calls can overtake each other. Every
		// version that knows the consumer is ordered agrees on 1.
		if cons, err = w.enforceOrdered(ctx, cons); err != nil {
			return nil, err
		}
	}
	if err := dc.checkOrdered(cons); err != nil {
		return nil, err
	}
	return cons, nil
}

// bindConsumer binds the durable consumer want describes. It is shared by
// every replica, and replicas may be configured differently (a rolling
// deploy that changes RELAY_ACK_WAIT), so a replica never rewrites what
// another set: a consumer that is absent is created from want (when
// cio-relay manages streams); one that exists keeps its ack wait, max ack
// pending and max deliver, which this replica adopts (with a warning when
// they differ from its settings), and only its filter subjects are put
// right when they differ. Had a replica that started later shortened the
// ack wait, those that started earlier would extend their leases too
// seldom, and their messages would be redelivered to another replica and
// sent twice. Without ManageStreams it only looks the consumer up and says
// exactly what is missing.
func (w *Worker) bindConsumer(ctx context.Context, want jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	name, stream := want.Durable, w.opts.Stream
	cons, err := w.js.Consumer(ctx, stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) && w.opts.ManageStreams {
		cons, err = w.js.CreateConsumer(ctx, stream, want)
		if err == nil {
			w.log.Info("created consumer", "consumer", name, "ack_wait", want.AckWait.String(), "max_ack_pending", want.MaxAckPending)
			return cons, nil
		}
		if errors.Is(err, jetstream.ErrConsumerExists) {
			// Another replica created it meanwhile, with its own settings.
			cons, err = w.js.Consumer(ctx, stream, name)
		}
	}
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound) && !w.opts.ManageStreams:
		return nil, fmt.Errorf("consumer %s not found on stream %s and RELAY_MANAGE_STREAMS=false: create a durable pull consumer with explicit ack and filter subjects %q", name, stream, want.FilterSubjects)
	case err != nil:
		return nil, fmt.Errorf("binding consumer %s on stream %s: %w", name, stream, err)
	}
	if cfg := cons.CachedInfo().Config; w.opts.ManageStreams && !sameSubjects(cfg, want.FilterSubjects) {
		cfg.FilterSubject, cfg.FilterSubjects = "", want.FilterSubjects
		if cons, err = w.js.UpdateConsumer(ctx, stream, cfg); err != nil {
			return nil, fmt.Errorf("setting filter subjects %q of consumer %s on stream %s: %w", want.FilterSubjects, name, stream, err)
		}
		w.log.Info("updated consumer filter subjects", "consumer", name, "subjects", want.FilterSubjects)
	}
	if err := w.checkBound(cons, want); err != nil {
		return nil, err
	}
	return cons, nil
}

// sameSubjects reports whether cfg filters exactly subjects, in any order.
func sameSubjects(cfg jetstream.ConsumerConfig, subjects []string) bool {
	have := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		have = append([]string{cfg.FilterSubject}, have...)
	}
	return len(have) == len(subjects) && !slices.ContainsFunc(subjects, func(s string) bool { return !slices.Contains(have, s) })
}

// checkBound checks a consumer this replica did not create: it must use
// explicit acks (anything else loses a failed message), and must not give
// up on a message on its own before the worker can dead-letter it with a
// reason (MaxDeliver unlimited or above RELAY_MAX_DELIVER). Its ack wait and
// max ack pending are the ones that count: a difference from want is logged,
// naming the setting, and the lease keeper follows the consumer's ack wait.
func (w *Worker) checkBound(cons jetstream.Consumer, want jetstream.ConsumerConfig) error {
	cfg := cons.CachedInfo().Config
	name := cons.CachedInfo().Name
	if cfg.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("consumer %s has ack policy %v; cio-relay needs explicit acks", name, cfg.AckPolicy)
	}
	if cfg.MaxDeliver != -1 && cfg.MaxDeliver <= w.opts.MaxDeliver {
		return fmt.Errorf("consumer %s has MaxDeliver %d: JetStream would stop redelivering a message silently; "+
			"set it to -1 (cio-relay dead-letters after RELAY_MAX_DELIVER=%d with a reason)", name, cfg.MaxDeliver, w.opts.MaxDeliver)
	}
	if cfg.AckWait > 0 && cfg.AckWait != want.AckWait {
		w.log.Warn("consumer's ack wait differs from RELAY_ACK_WAIT; using the consumer's, not changing it (another replica or an operator set it)",
			"consumer", name, "consumer_ack_wait", cfg.AckWait.String(), "relay_ack_wait", want.AckWait.String())
	}
	// An ordered consumer's MaxAckPending is not adopted but put right
	// (see bindDirect).
	if cfg.MaxAckPending != want.MaxAckPending && want.MaxAckPending != orderedMaxAckPending {
		setting := "RELAY_MAX_ACK_PENDING"
		if name != w.opts.Consumer {
			setting = "cio-relay's direct-call default"
		}
		w.log.Warn("consumer's max ack pending differs from "+setting+"; using the consumer's, not changing it",
			"consumer", name, "consumer_max_ack_pending", cfg.MaxAckPending, "relay_max_ack_pending", want.MaxAckPending)
	}
	return nil
}

// replicated returns cfg with the replica count the worker creates its
// streams with. Consumers get none of their own: they follow their stream.
func (w *Worker) replicated(cfg jetstream.StreamConfig) jetstream.StreamConfig {
	cfg.Replicas = w.opts.StreamReplicas
	return cfg
}

// bucketReplicas returns the replica count to create or update the KV
// bucket cfg with: RELAY_STREAM_REPLICAS for a new bucket, the one it has
// for a bucket that exists (checkReplicas warns when they differ), as an
// update with another count would move its data between nodes, and a
// replica of the old setting during a rollout would move it back. A
// bucket bound without RELAY_MANAGE_STREAMS is checked with it too, for
// the warning, as the streams are.
func (w *Worker) bucketReplicas(ctx context.Context, cfg jetstream.KeyValueConfig) int {
	if existing, err := w.js.Stream(ctx, "KV_"+cfg.Bucket); err == nil {
		w.checkReplicas(existing.CachedInfo())
		return max(existing.CachedInfo().Config.Replicas, 1)
	}
	return w.opts.StreamReplicas
}

// replicasHint explains a failed creation of a replicated stream: a single
// server, or a cluster smaller than the count, cannot hold it.
func (w *Worker) replicasHint() string {
	if w.opts.StreamReplicas == 1 {
		return ""
	}
	return fmt.Sprintf(" with RELAY_STREAM_REPLICAS=%d replicas (needs a JetStream cluster of at least %d nodes)",
		w.opts.StreamReplicas, w.opts.StreamReplicas)
}

// checkReplicas warns when a stream the worker binds to has another replica
// count than RELAY_STREAM_REPLICAS. It is not changed: scaling a stream
// moves its data between nodes, an operator's decision (and a stream
// managed elsewhere is not the worker's to change), but an operator who
// asked for 3 replicas must learn that the stream has 1.
func (w *Worker) checkReplicas(info *jetstream.StreamInfo) {
	have := max(info.Config.Replicas, 1) // 0 is JetStream's 1
	if have == w.opts.StreamReplicas {
		return
	}
	w.log.Warn("stream's replica count differs from RELAY_STREAM_REPLICAS; left as it is", "stream", info.Config.Name,
		"stream_replicas", have, "relay_stream_replicas", w.opts.StreamReplicas,
		"fix", fmt.Sprintf("nats stream edit %s --replicas %d, or set RELAY_STREAM_REPLICAS=%d", info.Config.Name, w.opts.StreamReplicas, have))
}
