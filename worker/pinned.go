package worker

import (
	"context"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// setPinned gives cfg the ordered path's priority policy: one pinned
// client, the replica that delivers (see doc.go).
func setPinned(cfg *jetstream.ConsumerConfig) {
	cfg.PriorityPolicy = jetstream.PriorityPolicyPinned
	cfg.PriorityGroups = []string{PriorityGroup}
	cfg.PinnedTTL = PinnedTTL
}

// isPinned reports whether cfg has the ordered path's priority policy.
func isPinned(cfg jetstream.ConsumerConfig) bool {
	return cfg.PriorityPolicy == jetstream.PriorityPolicyPinned && slices.Contains(cfg.PriorityGroups, PriorityGroup)
}

// checkPinned says what the batch consumer's priority policy means for
// this replica. The ordered path does not need one: the delivery lease
// (holder.go) decides who delivers, and a pinned_client policy costs
// JetStream a header on every message (the bench's pinned bare consumer
// runs at 0.74–0.86× the plain one). A consumer an earlier version pinned
// keeps its policy (removing it would refuse that version's pulls during a
// rolling upgrade): the intake pulls with its group, and the ordered path
// also watches the pin. With ordering off, a policy other replicas put
// there is left in place, and the intake pulls with its group.
func (w *Worker) checkPinned(_ context.Context, cons jetstream.Consumer) (jetstream.Consumer, error) {
	cfg := cons.CachedInfo().Config
	name := cons.CachedInfo().Name
	switch {
	case cfg.PriorityPolicy == jetstream.PriorityPolicyNone:
	case !w.opts.Ordering:
		w.log.Warn("RELAY_ORDERING=false, but the consumer has a priority policy (an ordered replica of an earlier version set it); "+
			"leaving it, and pulling with its group: only the pinned replica delivers",
			"consumer", name, "groups", cfg.PriorityGroups)
	case isPinned(cfg):
		w.log.Info("the consumer has the pinned priority group an earlier version put on; delivering with it. Once no replica older than "+
			"this one runs, removing it (priority_policy none) spares JetStream a header per message", "consumer", name, "group", PriorityGroup)
	}
	return cons, nil
}

// rebindBatch looks the batch consumer up again after a pull was refused
// as a bad request (its priority groups changed), so the intake pulls as
// the consumer is now.
func (w *Worker) rebindBatch(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := w.js.Consumer(ctx, w.opts.Stream, w.opts.Consumer)
	if err != nil {
		return nil, fmt.Errorf("looking up consumer %s: %w", w.opts.Consumer, err)
	}
	return w.checkPinned(ctx, cons)
}
