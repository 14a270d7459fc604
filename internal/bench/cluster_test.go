package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/worker"
)

// TestBenchOnACluster runs the bench against a three-node JetStream
// cluster with streams of three replicas, as --nats-url and
// --stream-replicas 3 do.
func TestBenchOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS cluster and the worker")
	}
	c := natstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := Run(ctx, Config{
		Events:          3_000,
		NATSURL:         c.URL(),
		LatencyDuration: -1,
		StallTimeout:    30 * time.Second,
		Worker:          worker.Options{StreamReplicas: 3},
		Progress:        &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if r.Batches.DistinctArrived != 3_000 || r.Batches.UnknownIDs != 0 {
		t.Errorf("backlog: %+v", r.Batches)
	}
	if !strings.Contains(r.NATS, "3 replicas") {
		t.Errorf("NATS %q does not say the streams had 3 replicas", r.NATS)
	}
	t.Logf("cluster R3: worker %.0f events/s, bare %.0f events/s, ratio %.3f", r.Worker.EventsPerSec, r.Bare.EventsPerSec, r.Ratio)
}

func TestBenchReplicasNeedACluster(t *testing.T) {
	_, err := Run(t.Context(), Config{Events: 10, Worker: worker.Options{StreamReplicas: 3}})
	if err == nil || !strings.Contains(err.Error(), "need a JetStream cluster") {
		t.Fatalf("Run = %v, want an error saying 3 replicas need a cluster", err)
	}
}
