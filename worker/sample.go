package worker

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// sampleConsumers keeps the consumer and held-message gauges current, and
// the lease keeper's interval a third of the shortest ack wait the
// consumers have now: another replica or an operator may change it at any
// time, and a lease extended by a stale, longer interval lets the message
// expire and be delivered again elsewhere.
func (w *Worker) sampleConsumers(ctx context.Context, consumers []jetstream.Consumer, leases *leases[*held]) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	waits := consumerAckWaits(consumers)
	for {
		w.m.held.Set(float64(leases.len()))
		for i, cons := range consumers {
			infoCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := cons.Info(infoCtx)
			cancel()
			if ctx.Err() == nil {
				w.health.observe(opInfo, err, time.Now()) // the probe that sees JetStream answer on an idle stream
			}
			if err != nil {
				continue
			}
			if i == 0 {
				w.m.pending.Set(float64(info.NumPending))
				w.m.ackPending.Set(float64(info.NumAckPending))
			}
			if d := ackWaitOf(info); d != waits[i] {
				w.log.Warn("consumer's ack wait changed; extending leases by it", "consumer", info.Name,
					"ack_wait", d.String(), "was", waits[i].String())
				waits[i] = d
			}
		}
		leases.setInterval(leaseInterval(waits))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consumerAckWaits returns the ack wait of each consumer as bound.
func consumerAckWaits(consumers []jetstream.Consumer) []time.Duration {
	waits := make([]time.Duration, len(consumers))
	for i, c := range consumers {
		waits[i] = ackWaitOf(c.CachedInfo())
	}
	return waits
}

// ackWaitOf is a consumer's ack wait: JetStream's default when unset.
func ackWaitOf(info *jetstream.ConsumerInfo) time.Duration {
	if d := info.Config.AckWait; d > 0 {
		return d
	}
	return 30 * time.Second
}

// leaseInterval is how often leases are extended: a third of the shortest
// ack wait, so each message is extended at least twice within any ack wait.
func leaseInterval(ackWaits []time.Duration) time.Duration {
	return max(slices.Min(ackWaits)/3, time.Millisecond)
}
