package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestBlockedPipelineOutlastingAckWaitRedeliversNothing blocks the pipeline
// for several ack waits while messages keep arriving: one CDP request that
// takes 3.5 s with an ack wait of 1 s (a retry or a pause does the same),
// and a Track API that takes 400 ms per suppression with one sender, so
// the direct reader waits. Every message the worker has received, whether
// in a batch, in flight or waiting to be handed to the pipeline, must keep
// its lease: none redelivered, none sent twice.
func TestBlockedPipelineOutlastingAckWaitRedeliversNothing(t *testing.T) {
	const ackWait = time.Second
	for _, ordering := range []bool{false, true} {
		name := "batch"
		if ordering {
			// RELAY_ORDERING's default: the lanes and the gate hold calls too.
			name = "batch ordered"
		}
		t.Run(name, func(t *testing.T) { testBlockedBatchRedeliversNothing(t, ackWait, ordering) })
	}
	t.Run("suppressions", func(t *testing.T) {
		e := newEnv(t, ciotest.Options{SiteID: "site-1", TrackKey: "track-key", Fault: func(r *ciotest.Request) *ciotest.Fault {
			if r.API == ciotest.APITrack {
				return &ciotest.Fault{Delay: 400 * time.Millisecond, Slow: true}
			}
			return nil
		}})
		track, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), SiteID: "site-1", APIKey: func() string { return "track-key" },
			UserAgent: "test", Client: sink.NewHTTPClient(2, 10*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		opts := fastOptions()
		opts.AckWait, opts.Track, opts.DirectConcurrency = ackWait, track, 1
		_, reg := e.runWorker(t, opts, 10*time.Second)
		const n = 12
		var msgs []published
		for i := range n {
			body, _ := json.Marshal(map[string]string{"identifier": fmt.Sprintf("p%d@example.com", i)})
			msgs = append(msgs, published{subject: worker.SubjectSuppress, body: body})
		}
		e.publishAll(t, msgs)
		waitFor(t, 30*time.Second, "every suppression", func() bool { return len(e.cio.Suppressions()) >= n })
		waitFor(t, 10*time.Second, "the suppress consumer to settle", func() bool {
			c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-suppress")
			if err != nil {
				return false
			}
			info, err := c.Info(context.Background())
			return err == nil && info.NumPending == 0 && info.NumAckPending == 0
		})
		requests := 0
		for _, r := range e.cio.Requests() {
			if r.API == ciotest.APITrack {
				requests++
			}
		}
		redelivered := metricValue(t, reg, "cio_relay_redeliveries_total")
		t.Logf("%d suppressions at 400ms each through one sender, ack wait %v: %d requests, %v redelivered", n, ackWait, requests, redelivered)
		if redelivered != 0 || requests != n {
			t.Errorf("%d requests for %d suppressions, %v redelivered; want %d and none", requests, n, redelivered, n)
		}
	})
}

// testBlockedBatchRedeliversNothing is the batch half of
// TestBlockedPipelineOutlastingAckWaitRedeliversNothing.
func testBlockedBatchRedeliversNothing(t *testing.T, ackWait time.Duration, ordering bool) {
	var n atomic.Int32
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API == ciotest.APICDP && n.Add(1) == 1 {
			return &ciotest.Fault{Delay: 3500 * time.Millisecond, Slow: true}
		}
		return nil
	}})
	opts := fastOptions()
	opts.AckWait, opts.BatchMaxCalls, opts.SendConcurrency, opts.Ordering = ackWait, 10, 1, ordering
	_, reg := e.runWorker(t, opts, 10*time.Second)
	msgs, seen := e.deliverTracks(t, 3, "blk", 200, 300, 10*time.Second)
	dups := extraCopies(seen)
	redelivered := metricValue(t, reg, "cio_relay_redeliveries_total")
	t.Logf("200 calls behind a 3.5s request, ack wait %v, ordering %t: %v redelivered, %d delivered twice", ackWait, ordering, redelivered, dups)
	if redelivered != 0 || dups != 0 {
		t.Errorf("%v messages redelivered and %d calls delivered twice behind a blocked pipeline; want none", redelivered, dups)
	}
	checkExactlyOnce(t, msgs, seen)
	if ordering {
		checkDeliveredOrdered(t, reg)
	}
}
