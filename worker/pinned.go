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

// checkPinned puts the pinned priority policy on the batch consumer when
// ordering is on. Like an ordered consumer's MaxAckPending (enforceOrdered)
// it is not a setting to adopt from whoever created the consumer: without
// it several replicas deliver one person's calls at once. With ordering off
// it leaves a policy other replicas put there in place (removing it would
// break their order) and the intake pulls with its group.
func (w *Worker) checkPinned(ctx context.Context, cons jetstream.Consumer) (jetstream.Consumer, error) {
	cfg := cons.CachedInfo().Config
	name := cons.CachedInfo().Name
	switch {
	case !w.opts.Ordering:
		if cfg.PriorityPolicy != jetstream.PriorityPolicyNone {
			w.log.Warn("RELAY_ORDERING=false, but the consumer has a priority policy another replica set for ordering; "+
				"leaving it, and pulling with its group: only the pinned replica delivers",
				"consumer", name, "groups", cfg.PriorityGroups)
		}
		return cons, nil
	case isPinned(cfg):
		return cons, nil
	case !w.opts.ManageStreams:
		return nil, fmt.Errorf("consumer %s has no pinned priority group %q and RELAY_MANAGE_STREAMS=false: RELAY_ORDERING=true needs "+
			"priority_policy pinned_client, priority_groups [%q] (priority_timeout %v); set them, or RELAY_ORDERING=false", name, PriorityGroup, PriorityGroup, PinnedTTL)
	}
	setPinned(&cfg)
	cons, err := w.js.UpdateConsumer(ctx, w.opts.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting the pinned priority group of consumer %s: %w", name, err)
	}
	w.log.Info("consumer set to one pinned replica at a time, for ordering", "consumer", name, "group", PriorityGroup,
		"pinned_ttl", PinnedTTL.String())
	return cons, nil
}

// rebindBatch looks the batch consumer up again after a pull was refused
// as a bad request, and puts the pinned policy back when ordering is on.
func (w *Worker) rebindBatch(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := w.js.Consumer(ctx, w.opts.Stream, w.opts.Consumer)
	if err != nil {
		return nil, fmt.Errorf("looking up consumer %s: %w", w.opts.Consumer, err)
	}
	return w.checkPinned(ctx, cons)
}
