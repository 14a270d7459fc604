package integration_test

import (
	"testing"
	"time"
)

// TestReviewAnUnorderedReplicaDeliversBesideTheLeaseHolder: a rolling
// deploy with differing settings, one replica with RELAY_ORDERING=false
// (a canary, a debug pod, the first step of turning ordering off). Such a
// replica leaves the pinned policy in place and pulls with its group
// (pinned.go:35), but takes no delivery lease: it competes for the pin,
// and the holder, which at the start of an epoch unpins whoever is pinned
// (epoch.go:327, ordered.go:181), hands it to it again and again. The
// unordered replica then delivers, with its lanes in parallel and its acks
// unbounded by any lease, while the ordered replica holds the lease: the
// order of every replica is lost, not just its own, and the late-ack
// masking the lease was meant to end is back.
//
// Fix: with ordering off and a pinned batch consumer, either refuse to
// start (as with RELAY_MANAGE_STREAMS=false and no policy), or deliver
// only while holding the delivery lease too (unordered but fenced), or pull
// without the group from a consumer of its own; say so in README.
func TestReviewAnUnorderedReplicaDeliversBesideTheLeaseHolder(t *testing.T) {
	msgs := orderedCalls(3, 4000, 100)
	e := newEnv(t, flakyCustomerIO(3, 0.3, 0.1))
	e.createStream(t)
	// The unordered replica is up first (it was deployed before, or
	// restarted during the roll); then the ordered one starts and takes
	// the lease, unpinning it.
	_, regC := e.runWorker(t, orderedOptions(false), 0)
	time.Sleep(time.Second)
	recA := &logRecorder{}
	a := orderedOptions(true)
	a.Logger = recA.logger()
	e.runWorker(t, a, 0)
	waitFor(t, 10*time.Second, "A to take the delivery lease", func() bool {
		return len(recA.records(t, "took the ordered delivery lease")) > 0
	})
	e.publishAll(t, msgs)
	waitSettled(t, e.js, 90*time.Second)
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	delivered := metricValue(t, regC, "cio_relay_batches_total", "outcome", "delivered")
	t.Logf("unordered replica delivered %v batches; %+v", delivered, rep)
	if delivered > 0 || rep.violations != 0 || rep.missing != 0 {
		t.Fatalf("while an ordered replica held the delivery lease, the RELAY_ORDERING=false replica delivered %v batches: %d calls out of order, %d missing (%s)",
			delivered, rep.violations, rep.missing, rep.example)
	}
}
